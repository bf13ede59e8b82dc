"""Normalisation chosen by name (``model.options.norm``): batch, layer, group, instance or none.

Batch norm is the default; the others exist because batch statistics are noisy with the tiny batches of face
fine-tuning, and because comparing them is a common exercise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from facelab.registry import Registry

NormFactory = Callable[[int], nn.Module]

NORMS: Registry[nn.Module] = Registry("norm")


class InstanceNorm(nn.InstanceNorm2d):
    """Affine instance norm that passes a 1x1 map through its affine part: statistics over one pixel are undefined
    (torch raises in training), and a global-depthwise head produces exactly such maps."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] * x.shape[-2] > 1:
            return super().forward(x)
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


@NORMS.register("batch")
def _batch(channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels)


@NORMS.register("group")
def _group(channels: int) -> nn.Module:
    # 32 groups as in Wu & He (2018), fewer when the layer is narrow
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


@NORMS.register("layer")
def _layer(channels: int) -> nn.Module:
    # LayerNorm over (C, H, W) for any spatial size: GroupNorm with one group
    return nn.GroupNorm(1, channels)


@NORMS.register("instance")
def _instance(channels: int) -> nn.Module:
    return InstanceNorm(channels, affine=True)


@NORMS.register("none")
def _none(channels: int) -> nn.Module:
    return nn.Identity()


def norm_factory(name: str) -> NormFactory:
    """``channels -> norm layer`` for a registered name; unknown names raise FacelabError with the choices."""
    return NORMS.get(name)


batch_norm: NormFactory = _batch
