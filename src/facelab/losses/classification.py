"""Classifier losses: softmax cross-entropy and the normalised (cosine) softmax that every margin head builds on."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facelab.losses.base import FaceLoss, LossOutput, at_least_fp32, check_option, register_loss


def _check_smoothing(label_smoothing: float) -> None:
    check_option(0.0 <= label_smoothing < 1.0, "label_smoothing", "must be in [0, 1)", label_smoothing)


class SoftmaxCE(FaceLoss):
    """Linear classifier + cross-entropy, with optional label smoothing (Szegedy et al., 2016).

    The classifier runs in float32 even under autocast: half-precision logits over thousands of classes lose the
    small differences the softmax is trained on.
    """

    def __init__(self, embedding_dim: int, num_classes: int, label_smoothing: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        _check_smoothing(label_smoothing)
        self.num_classes = num_classes
        self.label_smoothing = float(label_smoothing)
        self.fc = nn.Linear(embedding_dim, num_classes, bias=bias)

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            x = at_least_fp32(embeddings)
            bias = None if self.fc.bias is None else self.fc.bias.to(x.dtype)
            return F.linear(x, self.fc.weight.to(x.dtype), bias)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        logits = self.logits(embeddings)
        loss = F.cross_entropy(logits, labels.long(), label_smoothing=self.label_smoothing)
        return LossOutput(loss, logits.detach())


class CosineClassifier(FaceLoss):
    """NormFace (Wang et al., 2017): logits ``s * cos(theta_j)`` between unit embeddings and unit class weights.

    Shared core of the margin family: subclasses change only ``target_logit`` (the target class's cosine) and, for
    SphereFace, ``logit_scale``. Cosines are computed in float32 even under autocast and clamped away from +-1 so that
    margins built on ``acos``/``sqrt`` never produce NaN or infinite gradients.
    """

    eps = 1e-7

    def __init__(self, embedding_dim: int, num_classes: int, scale: float = 64.0,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        check_option(scale > 0, "scale", "must be positive", scale)
        _check_smoothing(label_smoothing)
        self.num_classes = num_classes
        self.scale = float(scale)
        self.label_smoothing = float(label_smoothing)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight, std=0.01)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            x = at_least_fp32(embeddings)
            cos = F.normalize(x, dim=1) @ F.normalize(self.weight.to(x.dtype), dim=1).t()
        return cos.clamp(-1 + self.eps, 1 - self.eps)

    def logit_scale(self, embeddings: torch.Tensor) -> torch.Tensor | float:
        """Multiplier turning cosines into logits: the fixed ``s`` of NormFace/CosFace/ArcFace."""
        return self.scale

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.logit_scale(embeddings) * self.cosine(embeddings)

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        """Margin applied to the target-class cosine; identity here (NormFace)."""
        return cos_target

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        labels = labels.long()
        cos = self.cosine(embeddings)
        target = cos.gather(1, labels[:, None])
        adjusted = cos.scatter(1, labels[:, None], self.target_logit(target))
        scale = self.logit_scale(embeddings)
        loss = F.cross_entropy(scale * adjusted, labels, label_smoothing=self.label_smoothing)
        return LossOutput(loss, (scale * cos).detach())


register_loss("softmax", SoftmaxCE)
register_loss("normface", CosineClassifier)
