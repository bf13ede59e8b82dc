"""Losses on explicit labelled pairs (a siamese network: one backbone embeds both images of a pair).

- ``l1`` / ``sq``: the pair's distance vector, ``|e1 - e2|`` (element-wise L1, as in DeepFace's siamese network,
  Taigman et al. 2014, section 4.2) or ``(e1 - e2)^2``, goes through a learned weighted sum ``w . d + b`` and a
  sigmoid: the probability that the two faces are the same person, trained with binary cross-entropy (the
  "logistic unit on an L1 distance" of the STAT 479 siamese lecture). Embeddings are L2-normalised first, so the
  head sees the same geometry the cosine score uses at test time. ``w`` starts at -1 and ``b`` at a positive value,
  i.e. "alike when the distance is small", so training starts from a sensible decision.
- ``contrastive``: Hadsell, Chopra & LeCun (2006) on the pair's cosine distance d = 1 - cos, hinge form as
  :class:`facelab.losses.metric.ContrastiveLoss`: same-person pairs cost ``relu(d - pos_margin)``, different-person
  pairs ``relu(margin - d)``; no learned parameters.

Every loss takes ``(e1 (B, D), e2 (B, D), same (B,) bool)`` and returns a :class:`PairLossOutput` with the mean
loss and ``logits`` (B,) -- higher = more alike -- whose sign (>0) is the loss's own same/different decision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from facelab.errors import FacelabError
from facelab.losses.base import at_least_fp32
from facelab.registry import Registry

#: name -> ``fn(embedding_dim, **options) -> PairLoss``
PAIR_LOSSES: Registry[nn.Module] = Registry("pair loss")


@dataclass
class PairLossOutput:
    loss: torch.Tensor
    #: (B,) higher = more alike; > 0 means the loss's own decision is "same person"
    logits: torch.Tensor


def pair_distance(e1: torch.Tensor, e2: torch.Tensor, kind: str) -> torch.Tensor:
    """Element-wise distance vector (B, D) of L2-normalised embeddings: ``l1`` |a - b|, ``sq`` (a - b)^2."""
    a, b = F.normalize(at_least_fp32(e1), dim=1), F.normalize(at_least_fp32(e2), dim=1)
    diff = a - b
    return diff.abs() if kind == "l1" else diff.square()


class LogisticPairLoss(nn.Module):
    """sigmoid(w . d(e1, e2) + b) with binary cross-entropy (see the module docstring)."""

    def __init__(self, embedding_dim: int, distance: str = "l1") -> None:
        super().__init__()
        if distance not in ("l1", "sq"):
            raise FacelabError(f"pair distance must be l1 or sq, got '{distance}'")
        self.distance = distance
        self.fc = nn.Linear(embedding_dim, 1)
        # start at "alike when close": -1 per component, and a bias that puts the boundary at half the summed
        # distance of two random unit vectors (each component of |a - b| is about sqrt(2/D) * sqrt(2/pi) on
        # average, of (a - b)^2 about 2/D)
        with torch.no_grad():
            self.fc.weight.fill_(-1.0)
            mean = (2 / embedding_dim) ** 0.5 * (2 / torch.pi) ** 0.5 if distance == "l1" else 2 / embedding_dim
            self.fc.bias.fill_(mean * embedding_dim / 2)

    def logits(self, e1: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
        return self.fc(pair_distance(e1, e2, self.distance)).squeeze(1)

    def forward(self, e1: torch.Tensor, e2: torch.Tensor, same: torch.Tensor) -> PairLossOutput:
        z = self.logits(e1, e2)
        return PairLossOutput(F.binary_cross_entropy_with_logits(z, same.to(z.dtype)), z)


class ContrastivePairLoss(nn.Module):
    """Contrastive loss on cosine distance for listed pairs (see the module docstring); logits = margin/2 - d."""

    def __init__(self, embedding_dim: int, margin: float = 0.5, pos_margin: float = 0.0) -> None:
        super().__init__()
        if not 0 <= pos_margin < margin:
            raise FacelabError(f"contrastive pair loss needs 0 <= pos_margin < margin, got {pos_margin}, {margin}")
        self.margin, self.pos_margin = float(margin), float(pos_margin)

    def forward(self, e1: torch.Tensor, e2: torch.Tensor, same: torch.Tensor) -> PairLossOutput:
        d = 1 - F.cosine_similarity(at_least_fp32(e1), at_least_fp32(e2), dim=1)
        loss = torch.where(same.bool(), F.relu(d - self.pos_margin), F.relu(self.margin - d)).mean()
        return PairLossOutput(loss, (self.margin + self.pos_margin) / 2 - d)


PAIR_LOSSES.register("l1")(lambda embedding_dim, **kw: LogisticPairLoss(embedding_dim, "l1", **kw))
PAIR_LOSSES.register("sq")(lambda embedding_dim, **kw: LogisticPairLoss(embedding_dim, "sq", **kw))
PAIR_LOSSES.register("contrastive")(ContrastivePairLoss)
