"""Margin heads on the normalised softmax: SphereFace, CosFace, ArcFace and the combined margin (m1, m2, m3).

All of them only change the target-class cosine before the scaled cross-entropy of ``CosineClassifier``:

* SphereFace (Liu et al., 2017):  ``psi(theta)`` with ``cos(m * theta)``, integer ``m`` (multiplicative);
* CosFace (Wang et al., 2018):    ``cos(theta) - m``, ``m`` in cosine units;
* ArcFace (Deng et al., 2019):    ``cos(theta + m)``, ``m`` in radians;
* combined (Deng et al., 2019):   ``cos(m1 * theta + m2) - m3``, ``m2`` in radians.

Angular margins are always given in radians here (pytorch-metric-learning's ArcFaceLoss takes degrees). ``scale``
defaults to ``"auto"`` (AdaCos' fixed scale from the class count, see ``classification.auto_scale``), and
``margin_warmup`` ramps the margin in over that many epochs (every margin parameter scales linearly from its no-margin
value: 0 for offsets, 1 for SphereFace's multiplier ``m1``).
"""

from __future__ import annotations

import math

import torch

from facelab.losses.base import LossOutput, at_least_fp32, check_option, register_loss
from facelab.losses.classification import CosineClassifier


def angular_psi(cos: torch.Tensor, m1: float, m2: float) -> torch.Tensor:
    """``cos(m1 * theta + m2)`` extended past ``pi`` as ``(-1)^k cos(m1 * theta + m2) - 2k``, k = floor(phase / pi).

    The plain cosine would rise again once the phase passes pi, rewarding a sample for moving further from its class;
    the piecewise form (SphereFace's psi, generalised to a real ``m1`` and an offset ``m2``) is continuous and
    decreasing in theta over all of [0, pi].
    """
    phase = m1 * torch.acos(cos) + m2
    k = torch.floor(phase.detach() / math.pi)
    sign = 1.0 - 2.0 * torch.remainder(k, 2.0)
    return sign * torch.cos(phase) - 2.0 * k


class CosFace(CosineClassifier):
    """Additive cosine margin: target logit ``s * (cos(theta) - m)``; ``m`` is in cosine units, not an angle."""

    def __init__(self, embedding_dim: int, num_classes: int, scale: float | str = "auto", margin: float = 0.35,
                 label_smoothing: float = 0.0, margin_warmup: float = 0.0) -> None:
        super().__init__(embedding_dim, num_classes, scale, label_smoothing)
        check_option(0.0 <= margin < 1.0, "margin", "is a cosine offset and must be in [0, 1)", margin)
        self.set_margin_warmup(margin_warmup)
        self.margin = float(margin)

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        return cos_target - self.margin * self.margin_ramp()


class ArcFace(CosineClassifier):
    """Additive angular margin: the target logit is ``s * cos(theta + m)``, ``m`` in radians.

    When ``theta + m > pi`` the cosine would start rising again (penalising less as the sample gets worse), so past
    that point the target logit continues linearly as ``cos(theta) - m * sin(m)``, which keeps it monotonic.
    """

    def __init__(self, embedding_dim: int, num_classes: int, scale: float | str = "auto", margin: float = 0.5,
                 label_smoothing: float = 0.0, margin_warmup: float = 0.0) -> None:
        super().__init__(embedding_dim, num_classes, scale, label_smoothing)
        check_option(0.0 <= margin < math.pi / 2, "margin", "is in radians and must be in [0, pi/2)", margin)
        self.set_margin_warmup(margin_warmup)
        self.margin = float(margin)

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        m = self.margin * self.margin_ramp()
        sin = torch.sqrt((1.0 - cos_target * cos_target).clamp_min(self.eps))
        phi = cos_target * math.cos(m) - sin * math.sin(m)
        threshold = math.cos(math.pi - m)  # cos(theta) below this means theta + m > pi
        return torch.where(cos_target > threshold, phi, cos_target - math.sin(math.pi - m) * m)


class CombinedMargin(CosineClassifier):
    """``s * (cos(m1 * theta + m2) - m3)``: SphereFace, ArcFace and CosFace margins at once (InsightFace's form).

    ``m1 >= 1`` multiplies the angle, ``m2`` (radians) is added to it, ``m3`` is subtracted from the cosine; past
    an angle of pi the piecewise ``angular_psi`` keeps the target logit decreasing.
    """

    def __init__(self, embedding_dim: int, num_classes: int, scale: float | str = "auto", m1: float = 1.0,
                 m2: float = 0.3, m3: float = 0.2, label_smoothing: float = 0.0, margin_warmup: float = 0.0) -> None:
        super().__init__(embedding_dim, num_classes, scale, label_smoothing)
        check_option(m1 >= 1.0, "m1", "multiplies the angle and must be >= 1", m1)
        check_option(0.0 <= m2 < math.pi / 2, "m2", "is in radians and must be in [0, pi/2)", m2)
        check_option(0.0 <= m3 < 1.0, "m3", "is a cosine offset and must be in [0, 1)", m3)
        self.set_margin_warmup(margin_warmup)
        self.m1, self.m2, self.m3 = float(m1), float(m2), float(m3)

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        r = self.margin_ramp()
        return angular_psi(cos_target, 1.0 + (self.m1 - 1.0) * r, self.m2 * r) - self.m3 * r


class SphereFace(CombinedMargin):
    """A-Softmax: target ``||x|| * psi(theta)`` with integer ``m``, unit class weights, and lambda annealing.

    ``psi`` is too hard to optimise from scratch, so training starts from plain softmax and anneals towards it:
    ``f = (lambda * cos(theta) + psi(theta)) / (1 + lambda)`` with
    ``lambda = max(lambda_min, lambda_base * (1 + lambda_gamma * step) ** -lambda_power)`` (defaults as in the
    authors' release). ``step`` counts training forward passes in a buffer, so it is saved with the checkpoint and a
    resumed run continues the schedule. ``scale=None`` keeps the original feature-norm scaling; a number normalises
    the features and uses that fixed scale instead.
    """

    def __init__(self, embedding_dim: int, num_classes: int, margin: int = 4, scale: float | None = None,
                 lambda_base: float = 1000.0, lambda_gamma: float = 0.12, lambda_power: float = 1.0,
                 lambda_min: float = 5.0, label_smoothing: float = 0.0) -> None:
        integer = isinstance(margin, int | float) and not isinstance(margin, bool) and float(margin).is_integer()
        check_option(integer and margin >= 1, "margin", "is SphereFace's angle multiplier: an integer >= 1", margin)
        super().__init__(embedding_dim, num_classes, 1.0 if scale is None else scale, m1=float(margin), m2=0.0,
                         m3=0.0, label_smoothing=label_smoothing)
        check_option(lambda_min >= 0, "lambda_min", "must be >= 0", lambda_min)
        check_option(lambda_base >= lambda_min, "lambda_base", f"must be >= lambda_min ({lambda_min})", lambda_base)
        check_option(lambda_gamma >= 0, "lambda_gamma", "must be >= 0", lambda_gamma)
        check_option(lambda_power >= 0, "lambda_power", "must be >= 0", lambda_power)
        self.margin = int(margin)
        self.feature_norm_scale = scale is None
        self.lambda_base, self.lambda_gamma = float(lambda_base), float(lambda_gamma)
        self.lambda_power, self.lambda_min = float(lambda_power), float(lambda_min)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def annealing_lambda(self) -> float:
        step = int(self.step)
        return max(self.lambda_min, self.lambda_base * (1.0 + self.lambda_gamma * step) ** -self.lambda_power)

    def logit_scale(self, embeddings: torch.Tensor) -> torch.Tensor | float:
        if not self.feature_norm_scale:
            return self.scale
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return at_least_fp32(embeddings).norm(dim=1, keepdim=True)

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        lam = self.annealing_lambda()
        return (lam * cos_target + super().target_logit(cos_target)) / (1.0 + lam)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        out = super().forward(embeddings, labels)
        if self.training:
            self.step += 1
        return out


register_loss("cosface", CosFace)
register_loss("arcface", ArcFace)
register_loss("combined", CombinedMargin)
register_loss("sphereface", SphereFace)
