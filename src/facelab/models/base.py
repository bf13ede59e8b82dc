"""The backbone registry and the contract every backbone keeps."""

from __future__ import annotations

import torch
from torch import nn

from facelab.config import ModelConfig
from facelab.errors import FacelabError
from facelab.registry import Registry

#: name -> ``fn(embedding_dim, width, dropout, input_size, **options) -> Backbone``
BACKBONES: Registry[nn.Module] = Registry("backbone")

MIN_INPUT = 32


class Backbone(nn.Module):
    """Image batch (B, 3, H, W) -> embedding (B, embedding_dim). Subclasses set ``features`` and ``head``."""

    embedding_dim: int
    input_size: int
    features: nn.Module
    head: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def feature_shape(self, input_size: int) -> tuple[int, int]:
        """(channels, spatial side) of ``features`` for a square input; found by a dry run, not by hand."""
        was = self.features.training
        self.features.eval()
        with torch.no_grad():
            out = self.features(torch.zeros(1, 3, input_size, input_size))
        self.features.train(was)
        return out.shape[1], out.shape[-1]


def build_backbone(cfg: ModelConfig, input_size: int) -> Backbone:
    if input_size < MIN_INPUT:
        raise FacelabError(f"data.input_size={input_size} is too small; backbones need at least {MIN_INPUT}")
    try:
        return BACKBONES.build(cfg.backbone, embedding_dim=cfg.embedding_dim, width=cfg.width,
                               dropout=cfg.dropout, input_size=input_size, **cfg.options)
    except TypeError as exc:
        raise FacelabError(f"bad model.options for backbone '{cfg.backbone}': {exc}") from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
