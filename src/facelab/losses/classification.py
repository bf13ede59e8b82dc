"""Classifier losses: softmax cross-entropy and the normalised (cosine) softmax that every margin head builds on."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from facelab.errors import FacelabError
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


#: ``scale: auto`` never goes below this (AdaCos' formula gives 0 for 2 classes)
MIN_AUTO_SCALE = 4.0


def auto_scale(num_classes: int) -> float:
    """The logit scale ``s = sqrt(2) * ln(C - 1)`` for ``C`` classes, at least ``MIN_AUTO_SCALE``.

    AdaCos' fixed scale (Zhang et al., "AdaCos: Adaptively Scaling Cosine Logits for Effectively Learning Deep Face
    Representations", CVPR 2019, eq. 13): the scale at which the target probability changes fastest around an angle
    of pi/4 when the other classes sit at pi/2, so the gradient neither saturates (scale too large for the class
    count: the softmax is confident and stops learning) nor stays flat (too small). It grows slowly with the class
    count: 4.8 for 30 classes, 9.8 for 1,000, 16.0 for 85,000. Units: logits per unit cosine.
    """
    if num_classes < 2:
        raise FacelabError(f"a classifier needs at least 2 classes, got {num_classes}")
    return max(MIN_AUTO_SCALE, math.sqrt(2.0) * math.log(num_classes - 1))


def resolve_scale(scale: float | str, num_classes: int) -> float:
    """``scale`` as a number: ``"auto"`` becomes :func:`auto_scale` of the class count; a number must be positive."""
    if scale == "auto":
        return auto_scale(num_classes)
    number = isinstance(scale, int | float) and not isinstance(scale, bool)
    check_option(number and scale > 0, "scale", "must be a positive number or 'auto'", scale)
    return float(scale)


class CosineClassifier(FaceLoss):
    """NormFace (Wang et al., 2017): logits ``s * cos(theta_j)`` between unit embeddings and unit class weights.

    Shared core of the margin family: subclasses change only ``target_logit`` (the target class's cosine) and, for
    SphereFace, ``logit_scale``. Cosines are computed in float32 even under autocast and clamped away from +-1 so that
    margins built on ``acos``/``sqrt`` never produce NaN or infinite gradients.

    ``scale`` is the fixed ``s`` or ``"auto"`` (:func:`auto_scale` of the class count, the default). Margin heads may
    ramp their margin in linearly over the first ``margin_warmup`` epochs (:meth:`margin_ramp`): a network starting
    from random weights cannot yet meet a full margin, and a margin it cannot meet only adds noise to the gradient.
    """

    eps = 1e-7
    #: epochs over which the margin ramps from 0 to its value (0 = full margin from the first step)
    margin_warmup: float = 0.0

    def __init__(self, embedding_dim: int, num_classes: int, scale: float | str = "auto",
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        _check_smoothing(label_smoothing)
        self.num_classes = num_classes
        self.scale = resolve_scale(scale, num_classes)
        self.label_smoothing = float(label_smoothing)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight, std=0.01)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            x = at_least_fp32(embeddings)
            cos = F.normalize(x, dim=1) @ F.normalize(self.weight.to(x.dtype), dim=1).t()
        return cos.clamp(-1 + self.eps, 1 - self.eps)

    def set_margin_warmup(self, epochs: float) -> None:
        check_option(isinstance(epochs, int | float) and not isinstance(epochs, bool) and epochs >= 0,
                     "margin_warmup", "is a number of epochs and must be >= 0", epochs)
        self.margin_warmup = float(epochs)

    def margin_ramp(self) -> float:
        """Fraction of the margin in force, in [0, 1]: ``min(1, progress / margin_warmup)``; 1 without warm-up and
        outside training (``progress`` is infinite unless the trainer sets it)."""
        if self.margin_warmup <= 0:
            return 1.0
        return min(1.0, max(0.0, self.progress / self.margin_warmup))

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
