"""The loss contract: ``loss(embeddings, labels) -> LossOutput`` for every loss, classifier-based or metric.

Losses that classify own their class-weight matrix, so training needs no separate classifier module and the same
call trains with CE, ArcFace or a metric loss. ``logits(embeddings)`` gives margin-free scores for accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from facelab.config import LossConfig
from facelab.errors import FacelabError
from facelab.registry import Registry

#: name -> ``fn(embedding_dim, num_classes, **options) -> FaceLoss``
LOSSES: Registry[nn.Module] = Registry("loss")


@dataclass
class LossOutput:
    loss: torch.Tensor
    #: margin-free class scores (B, num_classes) where the loss has classes, for training accuracy
    logits: torch.Tensor | None = None


class FaceLoss(nn.Module):
    num_classes: int = 0

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        raise NotImplementedError

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor | None:
        """Class scores without margin, used for closed-set prediction; None for metric losses."""
        return None


def build_loss(cfg: LossConfig, embedding_dim: int, num_classes: int) -> FaceLoss:
    try:
        return LOSSES.build(cfg.name, embedding_dim=embedding_dim, num_classes=num_classes,  # type: ignore[return-value]
                            **cfg.options)
    except TypeError as exc:
        raise FacelabError(f"bad loss.options for loss '{cfg.name}': {exc}") from None
