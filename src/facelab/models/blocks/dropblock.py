"""DropBlock (Ghiasi et al., 2018): drops contiguous square regions of a feature map during training only.

Dropout of single activations barely regularises a convolutional map (neighbours carry the same information);
dropping blocks does. torchvision's ``DropBlock2d`` is used as is, except that the block side is clamped to the
largest odd size that fits the map, so tiny late-stage maps (2x2 at 64x64 input) do not raise.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import DropBlock2d, drop_block2d


class DropBlock(DropBlock2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        side = min(self.block_size, x.shape[-1], x.shape[-2])
        side -= 1 - side % 2  # largest odd size <= side
        return drop_block2d(x, self.p, side, self.inplace, self.eps, self.training)


def make_drop_block(p: float, block_size: int = 3) -> nn.Module:
    """An identity when ``p == 0`` so a disabled DropBlock costs nothing; state dicts are unaffected either way."""
    return DropBlock(p, block_size) if p > 0 else nn.Identity()
