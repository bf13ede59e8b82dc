"""Learned 1:1 verifiers a model can carry in its bundle, as an alternative to the cosine threshold.

``deepface``: the DeepFace verifier (Taigman et al., "DeepFace: Closing the Gap to Human-Level Performance in Face
Verification", CVPR 2014, section 4.2). Each embedding is mapped to [0, 1] per component (DeepFace divided by the
component's maximum because its ReLU features are non-negative; facelab embeddings are signed, so the min-max of
the training pairs is used), L2-normalised, and a pair is scored by a weighted chi-square distance,
``sum_i w_i * (f1_i - f2_i)^2 / (f1_i + f2_i) / scale_i + b``, whose weights a linear SVM learned on labelled pairs
(``facelab.evaluation.deepface`` fits it; ``facelab verifier`` stores it in a bundle). Higher = more alike: accept
when the score >= ``threshold``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from facelab.errors import FacelabError

_EPS = 1e-8
#: the verifier kinds a bundle may carry
VERIFIER_KINDS = ("deepface",)
MAX_SOURCE = 2000


def chi2_terms(fa: np.ndarray, fb: np.ndarray) -> np.ndarray:
    """Per-component chi-square terms ``(fa - fb)^2 / (fa + fb)`` of non-negative features (N, D) -> (N, D);
    symmetric in the two images."""
    return (fa - fb) ** 2 / (fa + fb + _EPS)


@dataclass(frozen=True)
class ChiSquareVerifier:
    """The fitted DeepFace chi-square + linear SVM verifier for D-dimensional embeddings.

    ``lo``, ``span``: per-component min and range of the training embeddings (D,); ``scale``: per-term standard
    deviation used to condition the SVM (D,); ``w`` (D,), ``b``: the SVM; ``threshold``: accept at score >= it;
    ``source``: how it was fitted and calibrated, for people."""

    lo: np.ndarray
    span: np.ndarray
    scale: np.ndarray
    w: np.ndarray
    b: float
    threshold: float
    source: str = ""
    kind: str = "deepface"

    def features(self, e: np.ndarray) -> np.ndarray:
        """(N, D) embeddings -> (N, D) non-negative, unit-length features."""
        f = np.clip((np.asarray(e, np.float64) - self.lo) / self.span, 0.0, 1.0)
        return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), _EPS)

    def terms(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(N, D) standardised chi-square terms of the pairs (a[i], b[i])."""
        return chi2_terms(self.features(a), self.features(b)) / self.scale

    def score(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(N,) SVM decision values of the pairs (a[i], b[i]); a, b: (N, D) embeddings."""
        return self.terms(a, b) @ self.w + self.b

    def with_threshold(self, threshold: float, source: str) -> ChiSquareVerifier:
        return ChiSquareVerifier(self.lo, self.span, self.scale, self.w, self.b, float(threshold), source[:MAX_SOURCE],
                                 self.kind)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "lo": self.lo.tolist(), "span": self.span.tolist(), "scale": self.scale.tolist(),
                "w": self.w.tolist(), "b": float(self.b), "threshold": float(self.threshold), "source": self.source}

    @classmethod
    def from_dict(cls, raw: Any, where: str, dim: int) -> ChiSquareVerifier:
        """Validate stored parameters: kind, D-long finite vectors (span and scale > 0), finite b and threshold.

        Raises:
            FacelabError: naming ``where`` and the bad field.
        """
        if not isinstance(raw, dict):
            raise FacelabError(f"{where}: verifier must be a mapping")
        unknown = set(raw) - {"kind", "lo", "span", "scale", "w", "b", "threshold", "source"}
        if unknown:
            raise FacelabError(f"{where}: unknown verifier key(s) {', '.join(sorted(unknown))}")
        if raw.get("kind") not in VERIFIER_KINDS:
            raise FacelabError(f"{where}: verifier kind must be one of {', '.join(VERIFIER_KINDS)}, "
                               f"got {raw.get('kind')!r}")
        vectors = {}
        for key in ("lo", "span", "scale", "w"):
            value = raw.get(key)
            try:
                arr = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError):
                arr = np.zeros(0)
            if arr.shape != (dim,) or not np.isfinite(arr).all():
                raise FacelabError(f"{where}: verifier {key} must be {dim} finite numbers")
            if key in ("span", "scale") and (arr <= 0).any():
                raise FacelabError(f"{where}: verifier {key} must be > 0")
            vectors[key] = arr
        scalars = {}
        for key in ("b", "threshold"):
            value = raw.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise FacelabError(f"{where}: verifier {key} must be a finite number, got {value!r}")
            scalars[key] = float(value)
        source = raw.get("source", "")
        if not isinstance(source, str) or len(source) > MAX_SOURCE:
            raise FacelabError(f"{where}: verifier source must be a string of at most {MAX_SOURCE} characters")
        return cls(vectors["lo"], vectors["span"], vectors["scale"], vectors["w"], scalars["b"],
                   scalars["threshold"], source)
