"""Depthwise convolution: one K x K filter per channel (groups = channels), C*K^2 weights instead of C^2*K^2."""

from __future__ import annotations

from torch import nn

from facelab.models.blocks.conv import Activation, ConvNormAct
from facelab.models.blocks.norm import NormFactory, batch_norm


class DepthwiseConv(ConvNormAct):
    """Spatial filtering only; channels are mixed by a following pointwise convolution."""

    def __init__(self, channels: int, kernel: int = 3, stride: int = 1, norm: NormFactory = batch_norm,
                 act: Activation = nn.PReLU) -> None:
        super().__init__(channels, channels, kernel, stride, groups=channels, norm=norm, act=act)
