"""The loss contract: ``loss(embeddings, labels) -> LossOutput`` for every loss, classifier-based or metric.

Losses that classify own their class-weight matrix, so training needs no separate classifier module and the same
call trains with CE, ArcFace or a metric loss. ``logits(embeddings)`` gives margin-free scores for accuracy.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

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
    #: pair/triplet losses: how many terms the batch's labels allow (anchors with a positive and a negative, or
    #: positive pairs); 0 means the batch had nothing to learn from. None: every image is a term (classifiers).
    terms: int | None = None


@dataclass(frozen=True)
class BatchNeeds:
    """What one training batch must hold for a loss to learn from it: ``identities`` distinct identities (P), each
    with ``images_per_identity`` distinct images (K).

    Classifiers learn from any batch (1 x 1). Pair and triplet losses compare images of the batch with each other: an
    anchor needs a positive (another image of its identity, K >= 2) and a negative (another identity, P >= 2)
    (Hermans et al., 2017, "In Defense of the Triplet Loss", P x K batches).
    """

    identities: int = 1
    images_per_identity: int = 1

    @property
    def grouped(self) -> bool:
        """True when batches must group several images per identity (a P x K sampler)."""
        return self.images_per_identity > 1

    def combine(self, other: BatchNeeds) -> BatchNeeds:
        """Needs of a loss made of both (a joint loss): the larger P and the larger K."""
        return BatchNeeds(max(self.identities, other.identities),
                          max(self.images_per_identity, other.images_per_identity))

    def short_identities(self, labels: Sequence[int]) -> dict[int, int]:
        """Label -> training-image count for the identities too small to give K distinct images to a batch."""
        counts = Counter(int(y) for y in labels)
        return {y: n for y, n in sorted(counts.items()) if n < self.images_per_identity}

    def __str__(self) -> str:
        return f"{self.identities} identities x {self.images_per_identity} images each"


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
    #: what a training batch must contain (the trainer picks the sampler and checks the training set against it)
    batch_needs: ClassVar[BatchNeeds] = BatchNeeds()
    #: training progress in epochs, set by the trainer before each step (``set_progress``); schedules inside a loss
    #: (margin warm-up) read it. Outside training it stays infinite: the loss is used fully ramped.
    progress: float = math.inf

    def needs(self) -> BatchNeeds:
        """This loss's batch needs (a joint loss combines its parts')."""
        return self.batch_needs

    def set_progress(self, epochs: float) -> None:
        """Tell this loss and every loss inside it how far training is, in epochs (``epoch + batch / batches``).

        Derived from the position in training, not stored, so a resumed or multi-process run sees the same value.
        """
        for module in self.modules():
            if isinstance(module, FaceLoss):
                module.progress = float(epochs)

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
