"""Residual blocks: the classic basic and bottleneck blocks (He et al., 2016) and the face "IR" variant.

IR (improved residual, ArcFace / InsightFace iresnet): BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN. Unlike
the classic block it has no activation after the addition and downsamples in the second convolution, which trains
deep face models more stably. Every block takes ``(cin, planes, stride, norm)`` and outputs
``planes * expansion`` channels, so a ResNet picks its block from ``RESIDUAL_BLOCKS`` by name.
"""

from __future__ import annotations

import torch
from torch import nn

from facelab.models.blocks.conv import ConvNormAct, make_act
from facelab.models.blocks.norm import NormFactory, batch_norm
from facelab.registry import Registry


def projection(cin: int, cout: int, stride: int, norm: NormFactory) -> nn.Module:
    """Identity when the shape is unchanged, else a strided 1x1 conv + norm so the sum is well defined."""
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))


class BasicBlock(nn.Module):
    """conv3x3(stride) -> norm -> act -> conv3x3 -> norm, + shortcut, -> act (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, norm: NormFactory = batch_norm,
                 act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvNormAct(cin, planes, 3, stride, norm=norm, act=act),
            ConvNormAct(planes, planes, 3, norm=norm, act=None),
        )
        self.shortcut = projection(cin, planes, stride, norm)
        self.act = make_act(act, planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3(stride) -> 1x1 expand (x4), + shortcut, -> act (ResNet-50/101): the 3x3 works on a quarter
    of the channels, so a deeper network costs about what a basic one does."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, norm: NormFactory = batch_norm,
                 act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.body = nn.Sequential(
            ConvNormAct(cin, planes, 1, norm=norm, act=act),
            ConvNormAct(planes, planes, 3, stride, norm=norm, act=act),
            ConvNormAct(planes, cout, 1, norm=norm, act=None),
        )
        self.shortcut = projection(cin, cout, stride, norm)
        self.act = make_act(act, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class IRBlock(nn.Module):
    """Pre-activation face block (see module docstring)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, norm: NormFactory = batch_norm) -> None:
        super().__init__()
        self.body = nn.Sequential(
            norm(cin),
            nn.Conv2d(cin, planes, 3, 1, 1, bias=False),
            norm(planes),
            nn.PReLU(planes),
            nn.Conv2d(planes, planes, 3, stride, 1, bias=False),
            norm(planes),
        )
        self.shortcut = projection(cin, planes, stride, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


RESIDUAL_BLOCKS: Registry[nn.Module] = Registry("residual block")
RESIDUAL_BLOCKS.register("ir")(IRBlock)
RESIDUAL_BLOCKS.register("basic")(BasicBlock)
RESIDUAL_BLOCKS.register("bottleneck")(Bottleneck)
