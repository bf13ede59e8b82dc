"""Classifier losses: softmax cross-entropy and the additive angular margin (ArcFace)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from facelab.errors import FacelabError
from facelab.losses.base import LOSSES, FaceLoss, LossOutput


class SoftmaxCE(FaceLoss):
    """Linear classifier + cross-entropy, with optional label smoothing (Szegedy et al., 2016)."""

    def __init__(self, embedding_dim: int, num_classes: int, label_smoothing: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise FacelabError(f"loss.options.label_smoothing must be in [0, 1), got {label_smoothing}")
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.fc = nn.Linear(embedding_dim, num_classes, bias=bias)

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.fc(embeddings.float())

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        logits = self.logits(embeddings)
        loss = F.cross_entropy(logits, labels.long(), label_smoothing=self.label_smoothing)
        return LossOutput(loss, logits.detach())


class CosineClassifier(FaceLoss):
    """Shared core of the normalised-softmax family: cosine logits between unit embeddings and unit class weights.

    Cosines are computed in float32 even under autocast and clamped away from +-1 so that margins built on
    ``acos``/``sqrt`` never produce NaN or infinite gradients.
    """

    eps = 1e-7

    def __init__(self, embedding_dim: int, num_classes: int, scale: float = 64.0,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        if scale <= 0:
            raise FacelabError(f"loss.options.scale must be positive, got {scale}")
        self.num_classes = num_classes
        self.scale = float(scale)
        self.label_smoothing = label_smoothing
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight, std=0.01)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            cos = F.normalize(embeddings.float(), dim=1) @ F.normalize(self.weight.float(), dim=1).t()
        return cos.clamp(-1 + self.eps, 1 - self.eps)

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.scale * self.cosine(embeddings)

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        """Margin applied to the target-class cosine; identity here (NormFace)."""
        return cos_target

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        labels = labels.long()
        cos = self.cosine(embeddings)
        target = cos.gather(1, labels[:, None])
        adjusted = cos.scatter(1, labels[:, None], self.target_logit(target))
        loss = F.cross_entropy(self.scale * adjusted, labels, label_smoothing=self.label_smoothing)
        return LossOutput(loss, (self.scale * cos).detach())


class ArcFace(CosineClassifier):
    """Additive angular margin: the target logit is ``s * cos(theta + m)`` (Deng et al., 2019), ``m`` in radians.

    When ``theta + m > pi`` the cosine would start rising again (penalising less as the sample gets worse), so past
    that point the target logit continues linearly as ``cos(theta) - m * sin(m)``, which keeps it monotonic.
    """

    def __init__(self, embedding_dim: int, num_classes: int, scale: float = 64.0, margin: float = 0.5,
                 label_smoothing: float = 0.0) -> None:
        super().__init__(embedding_dim, num_classes, scale, label_smoothing)
        if not 0.0 <= margin < math.pi / 2:
            raise FacelabError(f"loss.options.margin is in radians and must be in [0, pi/2), got {margin}")
        self.margin = float(margin)
        self.cos_m, self.sin_m = math.cos(margin), math.sin(margin)
        self.threshold = math.cos(math.pi - margin)  # cos(theta) below this means theta + m > pi
        self.fallback = math.sin(math.pi - margin) * margin

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        sin = torch.sqrt((1.0 - cos_target * cos_target).clamp_min(self.eps))
        phi = cos_target * self.cos_m - sin * self.sin_m
        return torch.where(cos_target > self.threshold, phi, cos_target - self.fallback)


@LOSSES.register("softmax")
def _softmax(embedding_dim: int, num_classes: int, **kw: float) -> SoftmaxCE:
    return SoftmaxCE(embedding_dim, num_classes, **kw)  # type: ignore[arg-type]


@LOSSES.register("normface")
def _normface(embedding_dim: int, num_classes: int, **kw: float) -> CosineClassifier:
    return CosineClassifier(embedding_dim, num_classes, **kw)


@LOSSES.register("arcface")
def _arcface(embedding_dim: int, num_classes: int, **kw: float) -> ArcFace:
    return ArcFace(embedding_dim, num_classes, **kw)
