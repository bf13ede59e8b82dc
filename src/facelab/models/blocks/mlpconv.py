"""Network-in-network mlpconv (Lin et al., 2014): a K x K convolution followed by two 1x1 convolutions, i.e. a small
MLP applied at every pixel, which makes each layer a more expressive local feature extractor."""

from __future__ import annotations

from torch import nn

from facelab.models.blocks.conv import Activation, ConvNormAct
from facelab.models.blocks.norm import NormFactory, batch_norm
from facelab.models.blocks.pointwise import PointwiseConv


class MLPConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, norm: NormFactory = batch_norm,
                 act: Activation = nn.ReLU) -> None:
        super().__init__(
            ConvNormAct(cin, cout, kernel, stride, norm=norm, act=act),
            PointwiseConv(cout, cout, norm, act),
            PointwiseConv(cout, cout, norm, act),
        )
