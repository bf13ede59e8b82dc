"""Shared building blocks: a norm factory and conv-norm-activation, used by every backbone."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from facelab.registry import Registry

NORMS: Registry[nn.Module] = Registry("norm")


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
    return nn.InstanceNorm2d(channels, affine=True)


@NORMS.register("none")
def _none(channels: int) -> nn.Module:
    return nn.Identity()


NormFactory = Callable[[int], nn.Module]


def norm_factory(name: str) -> NormFactory:
    return NORMS.get(name)


class ConvNormAct(nn.Sequential):
    """conv -> norm -> activation; ``act=None`` gives a linear (no activation) block."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                 norm: NormFactory = _batch, act: type[nn.Module] | None = nn.PReLU) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            norm(cout),
        ]
        if act is not None:
            layers.append(act(cout) if act is nn.PReLU else act())
        super().__init__(*layers)
