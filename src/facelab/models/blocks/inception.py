"""Inception module (Szegedy et al., 2015): parallel 1x1, 3x3, 5x5 convolutions and a 3x3 max-pool, concatenated.

The naive module runs the 3x3 and 5x5 directly on all input channels and passes the pool through unchanged, so
its output (and the next module's cost) keeps growing. The GoogLeNet module puts 1x1 reductions before the 3x3 and
5x5 and a 1x1 projection after the pool, which is what makes a 22-layer network affordable.
"""

from __future__ import annotations

import torch
from torch import nn

from facelab.models.blocks.conv import Activation, ConvNormAct
from facelab.models.blocks.norm import NormFactory, batch_norm


class InceptionModule(nn.Module):
    """Branch widths as in GoogLeNet's table 1: ``n1``, ``(r3, n3)``, ``(r5, n5)``, ``pool_proj``.

    ``naive=True`` ignores ``r3``, ``r5`` and ``pool_proj`` (the naive module has no 1x1 reductions).
    """

    def __init__(self, cin: int, n1: int, r3: int, n3: int, r5: int, n5: int, pool_proj: int,
                 norm: NormFactory = batch_norm, act: Activation = nn.ReLU, naive: bool = False) -> None:
        super().__init__()

        def cna(i: int, o: int, k: int) -> ConvNormAct:
            return ConvNormAct(i, o, k, norm=norm, act=act)

        pool = nn.MaxPool2d(3, 1, 1)
        if naive:
            self.branches = nn.ModuleList([cna(cin, n1, 1), cna(cin, n3, 3), cna(cin, n5, 5), pool])
            self.out_channels = n1 + n3 + n5 + cin
        else:
            self.branches = nn.ModuleList([
                cna(cin, n1, 1),
                nn.Sequential(cna(cin, r3, 1), cna(r3, n3, 3)),
                nn.Sequential(cna(cin, r5, 1), cna(r5, n5, 5)),
                nn.Sequential(pool, cna(cin, pool_proj, 1)),
            ])
            self.out_channels = n1 + n3 + n5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)
