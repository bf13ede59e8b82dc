"""Inverted residual (MobileNet v2, MobileFaceNet): 1x1 expand -> depthwise -> 1x1 linear projection.

Thin tensors flow between blocks and the cheap depthwise filter works on the wide expanded one; the projection has
no activation because a ReLU on a thin tensor loses information. Residual only when the shape is unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from facelab.models.blocks.conv import Activation
from facelab.models.blocks.depthwise import DepthwiseConv
from facelab.models.blocks.norm import NormFactory, batch_norm
from facelab.models.blocks.pointwise import PointwiseConv


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int, norm: NormFactory = batch_norm,
                 act: Activation = nn.PReLU) -> None:
        super().__init__()
        hidden = cin * expansion
        self.use_residual = stride == 1 and cin == cout
        # expansion 1 (MobileNet v2's first block) has nothing to expand: no 1x1 there
        expand = [PointwiseConv(cin, hidden, norm, act)] if expansion != 1 else []
        self.body = nn.Sequential(
            *expand,
            DepthwiseConv(hidden, 3, stride, norm, act),
            PointwiseConv(hidden, cout, norm, act=None),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.use_residual else out
