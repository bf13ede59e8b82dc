"""Embedding heads: turn a backbone's last feature map into a BatchNorm'd embedding vector.

The final BatchNorm1d (the "BN-embedding" of face recognition practice) keeps every embedding dimension on the same
scale, which makes cosine scoring of unseen identities markedly better than a raw linear output.
"""

from __future__ import annotations

import torch
from torch import nn

from facelab.models.layers import NormFactory
from facelab.registry import Registry


class FlattenEmbedding(nn.Module):
    """norm -> dropout -> flatten -> linear -> BN1d: keeps spatial layout (the ArcFace "E" output)."""

    def __init__(self, channels: int, spatial: int, dim: int, norm: NormFactory, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = norm(channels)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels * spatial * spatial, dim)
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(self.dropout(self.norm(x)).flatten(1)))


class PoolEmbedding(nn.Module):
    """global average pool -> dropout -> linear -> BN1d: independent of the input size."""

    def __init__(self, channels: int, dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, dim)
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(self.dropout(self.pool(x).flatten(1))))


class GDCEmbedding(nn.Module):
    """Global depthwise conv (MobileFaceNet): a learned per-channel spatial weighting instead of average pooling."""

    def __init__(self, channels: int, spatial: int, dim: int, norm: NormFactory, dropout: float = 0.0) -> None:
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, spatial, groups=channels, bias=False)
        self.norm = norm(channels)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Conv2d(channels, dim, 1, bias=False)
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(self.dropout(self.norm(self.dw(x)))).flatten(1))


HEADS: Registry[nn.Module] = Registry("embedding head")
HEADS.register("flatten")(lambda channels, spatial, dim, norm, dropout: FlattenEmbedding(
    channels, spatial, dim, norm, dropout))
HEADS.register("gap")(lambda channels, spatial, dim, norm, dropout: PoolEmbedding(channels, dim, dropout))
HEADS.register("gdc")(lambda channels, spatial, dim, norm, dropout: GDCEmbedding(
    channels, spatial, dim, norm, dropout))


def build_head(kind: str, channels: int, spatial: int, dim: int, norm: NormFactory, dropout: float) -> nn.Module:
    return HEADS.build(kind, channels=channels, spatial=spatial, dim=dim, norm=norm, dropout=dropout)
