"""The loss contract: ``loss(embeddings, labels) -> LossOutput`` for every loss, classifier-based or metric.

Losses that classify own their class-weight matrix, so training needs no separate classifier module and the same
call trains with CE, ArcFace or a metric loss. ``logits(embeddings)`` gives margin-free scores for accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from facelab.config import LossConfig, OptimConfig
from facelab.errors import FacelabError
from facelab.registry import Registry

#: name -> ``fn(embedding_dim, num_classes, **options) -> FaceLoss``
LOSSES: Registry[nn.Module] = Registry("loss")


@dataclass
class LossOutput:
    loss: torch.Tensor
    #: margin-free class scores (B, num_classes) where the loss has classes, for training accuracy
    logits: torch.Tensor | None = None


def check_option(ok: bool, option: str, requirement: str, value: Any) -> None:
    """Raise the one-line error every invalid loss option gets: which option, what it must be, what it was."""
    if not ok:
        raise FacelabError(f"loss.options.{option} {requirement}, got {value!r}")


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Upcast half/bfloat16 (autocast) to float32 but keep float64, so gradcheck runs at full precision."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def zero_loss(embeddings: torch.Tensor) -> torch.Tensor:
    """An exact 0 that stays on the autograd graph, so ``backward()`` works on a batch with nothing to learn from."""
    return at_least_fp32(embeddings).sum() * 0.0


class FaceLoss(nn.Module):
    num_classes: int = 0

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        raise NotImplementedError

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor | None:
        """Class scores without margin, used for closed-set prediction; None for metric losses."""
        return None

    def optimizer_groups(self, cfg: OptimConfig) -> list[dict]:
        """Parameter groups for the optimizer (see ``facelab.engine.optim.param_groups``).

        The class-weight matrix gets its own named group so it can be told apart from the backbone (per-group lr or
        weight decay, logging); losses with other parameters (centre loss) override this.
        """
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "name": "class_weights"}] if params else []


def register_loss(name: str, cls: type[FaceLoss]) -> None:
    """Register a loss class under ``name``: options from the config become its keyword arguments."""

    def make(embedding_dim: int, num_classes: int, **options: Any) -> FaceLoss:
        return cls(embedding_dim, num_classes, **options)  # type: ignore[call-arg]

    LOSSES.register(name)(make)


def build_loss(cfg: LossConfig, embedding_dim: int, num_classes: int) -> FaceLoss:
    try:
        return LOSSES.build(cfg.name, embedding_dim=embedding_dim, num_classes=num_classes,  # type: ignore[return-value]
                            **cfg.options)
    except TypeError as exc:
        raise FacelabError(f"bad loss.options for loss '{cfg.name}': {exc}") from None
