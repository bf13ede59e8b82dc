"""Depthwise-separable convolution (MobileNet v1): depthwise K x K then pointwise 1x1.

Weights M*K^2 + M*N instead of N*M*K^2 for M inputs and N outputs: about 1/N + 1/K^2 of a standard convolution.
"""

from __future__ import annotations

from torch import nn

from facelab.models.blocks.conv import Activation
from facelab.models.blocks.depthwise import DepthwiseConv
from facelab.models.blocks.norm import NormFactory, batch_norm
from facelab.models.blocks.pointwise import PointwiseConv


class DepthwiseSeparable(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, norm: NormFactory = batch_norm,
                 act: Activation = nn.ReLU) -> None:
        super().__init__(DepthwiseConv(cin, kernel, stride, norm, act), PointwiseConv(cin, cout, norm, act))
