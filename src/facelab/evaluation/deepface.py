"""DeepFace-style verifier (Taigman et al., CVPR 2014, section 4): normalise features to [0, 1] per component,
L2-normalise, and score a pair with a weighted chi-square distance whose weights a linear SVM learns on the vector of
per-component chi-square terms ``(f1 - f2)^2 / (f1 + f2)``.

DeepFace divided by each component's maximum because its ReLU features are non-negative; facelab embeddings are
signed, so the per-component min-max of the training pairs is used instead (same [0, 1] range, same purpose). The
SVM is a small squared-hinge L2 linear SVM solved with L-BFGS (scikit-learn is not a runtime dependency).
"""

from __future__ import annotations

import numpy as np
import torch

from facelab.evaluation.scorers import SCORERS

_EPS = 1e-8


def chi2_terms(fa: np.ndarray, fb: np.ndarray) -> np.ndarray:
    """Per-component chi-square terms of non-negative features; symmetric in the two images."""
    return (fa - fb) ** 2 / (fa + fb + _EPS)


def fit_linear_svm(x: np.ndarray, y: np.ndarray, c: float = 1.0, iters: int = 200) -> tuple[np.ndarray, float]:
    """Minimise ``0.5 |w|^2 + C * sum(max(0, 1 - t (w.x + b))^2)`` with t = +-1; returns (w, b)."""
    xt = torch.as_tensor(x, dtype=torch.float64)
    t = torch.as_tensor(np.where(y, 1.0, -1.0), dtype=torch.float64)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        margin = torch.clamp(1 - t * (xt @ w + b), min=0)
        loss = 0.5 * (w @ w) + c * (margin**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), float(b.detach())


class DeepFaceChiSquare:
    name = "deepface"
    accept = "SVM decision value of the weighted chi-square terms >= threshold"
    trainable = True

    def __init__(self, c: float = 1.0) -> None:
        self.c = c
        self.lo: np.ndarray | None = None

    def _features(self, e: np.ndarray) -> np.ndarray:
        f = np.clip((np.asarray(e, np.float64) - self.lo) / self.span, 0.0, 1.0)
        return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), _EPS)

    def _terms(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return chi2_terms(self._features(a), self._features(b)) / self.scale

    def fit(self, a: np.ndarray, b: np.ndarray, labels: np.ndarray) -> None:
        both = np.concatenate([a, b]).astype(np.float64)
        self.lo = both.min(0)
        self.span = np.maximum(both.max(0) - self.lo, _EPS)
        self.scale = 1.0
        raw = self._terms(a, b)
        self.scale = np.maximum(raw.std(0), _EPS)  # per-term standardisation keeps the SVM well conditioned
        self.w, self.b = fit_linear_svm(raw / self.scale, np.asarray(labels, bool), self.c)

    def score(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if self.lo is None:
            raise RuntimeError("DeepFaceChiSquare.score called before fit")
        return self._terms(a, b) @ self.w + self.b

    def native(self, oriented: float) -> float:
        return float(oriented)


SCORERS.register("deepface")(DeepFaceChiSquare)
