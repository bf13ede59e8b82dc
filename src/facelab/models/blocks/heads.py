"""Embedding heads: turn a backbone's last feature map into a BatchNorm'd embedding vector.

The final BatchNorm1d (the "BN-embedding" of face recognition practice) keeps every embedding dimension on the same
scale, which makes cosine scoring of unseen identities markedly better than a raw linear output. Heads:

- ``flatten``: keeps the spatial layout (ArcFace's "E" output); parameters grow with the map size.
- ``gap``: global average pooling; independent of input size, discards where a feature fired.
- ``gdc``: global depthwise convolution (MobileFaceNet); a learned per-channel spatial weighting, C*H*W weights.
- ``mlp``: flatten -> hidden fully connected layers (AlexNet / VGG "fc6, fc7") -> embedding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from facelab.models.blocks.norm import NormFactory
from facelab.registry import Registry


class FlattenEmbedding(nn.Module):
    """norm -> dropout -> flatten -> linear -> BN1d."""

    def __init__(self, channels: int, spatial: int, dim: int, norm: NormFactory, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = norm(channels)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels * spatial * spatial, dim)
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(self.dropout(self.norm(x)).flatten(1)))


class PoolEmbedding(nn.Module):
    """global average pool -> dropout -> linear -> BN1d."""

    def __init__(self, channels: int, dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, dim)
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(self.dropout(self.pool(x).flatten(1))))


class GlobalDepthwiseConv(nn.Conv2d):
    """A depthwise convolution whose kernel covers the whole map: (C, H, W) -> (C, 1, 1) with C*H*W weights."""

    def __init__(self, channels: int, spatial: int) -> None:
        super().__init__(channels, channels, spatial, groups=channels, bias=False)


class GDCEmbedding(nn.Module):
    """GDC -> norm -> dropout -> 1x1 conv -> BN1d (MobileFaceNet's head)."""

    def __init__(self, channels: int, spatial: int, dim: int, norm: NormFactory, dropout: float = 0.0) -> None:
        super().__init__()
        self.dw = GlobalDepthwiseConv(channels, spatial)
        self.norm = norm(channels)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Conv2d(channels, dim, 1, bias=False)
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(self.dropout(self.norm(self.dw(x)))).flatten(1))


class MLPEmbedding(nn.Module):
    """flatten -> [dropout -> linear -> ReLU] per hidden layer -> linear -> BN1d."""

    def __init__(self, channels: int, spatial: int, dim: int, dropout: float = 0.0,
                 hidden: Sequence[int] = (4096, 4096)) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        cin = channels * spatial * spatial
        for width in hidden:
            layers += [nn.Dropout(dropout), nn.Linear(cin, width), nn.ReLU(inplace=True)]
            cin = width
        self.mlp = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, dim)
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(self.mlp(x)))


HEADS: Registry[nn.Module] = Registry("embedding head")


@HEADS.register("flatten")
def _flatten(channels: int, spatial: int, dim: int, norm: NormFactory, dropout: float, **_: object) -> nn.Module:
    return FlattenEmbedding(channels, spatial, dim, norm, dropout)


@HEADS.register("gap")
def _gap(channels: int, spatial: int, dim: int, norm: NormFactory, dropout: float, **_: object) -> nn.Module:
    return PoolEmbedding(channels, dim, dropout)


@HEADS.register("gdc")
def _gdc(channels: int, spatial: int, dim: int, norm: NormFactory, dropout: float, **_: object) -> nn.Module:
    return GDCEmbedding(channels, spatial, dim, norm, dropout)


@HEADS.register("mlp")
def _mlp(channels: int, spatial: int, dim: int, norm: NormFactory, dropout: float,
         hidden: Sequence[int] = (4096, 4096), **_: object) -> nn.Module:
    return MLPEmbedding(channels, spatial, dim, dropout, hidden)


def build_head(kind: str, channels: int, spatial: int, dim: int, norm: NormFactory, dropout: float,
               **extra: object) -> nn.Module:
    """``extra`` carries backbone-specific head settings (e.g. the MLP's hidden sizes); heads ignore the rest."""
    return HEADS.build(kind, channels=channels, spatial=spatial, dim=dim, norm=norm, dropout=dropout, **extra)
