"""Pointwise (1x1) convolution: mixes channels at every pixel, Cin*Cout weights, no spatial context."""

from __future__ import annotations

from torch import nn

from facelab.models.blocks.conv import Activation, ConvNormAct
from facelab.models.blocks.norm import NormFactory, batch_norm


class PointwiseConv(ConvNormAct):
    """``act=None`` gives the linear projection of inverted residuals (a ReLU there would destroy information)."""

    def __init__(self, cin: int, cout: int, norm: NormFactory = batch_norm, act: Activation = nn.PReLU) -> None:
        super().__init__(cin, cout, 1, norm=norm, act=act)
