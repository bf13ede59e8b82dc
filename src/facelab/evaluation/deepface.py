"""DeepFace-style verifier (Taigman et al., CVPR 2014, section 4): normalise features to [0, 1] per component,
L2-normalise, and score a pair with a weighted chi-square distance whose weights a linear SVM learns on the vector of
per-component chi-square terms ``(f1 - f2)^2 / (f1 + f2)``.

DeepFace divided by each component's maximum because its ReLU features are non-negative; facelab embeddings are
signed, so the per-component min-max of the training pairs is used instead (same [0, 1] range, same purpose). The
SVM is a small squared-hinge L2 linear SVM solved with L-BFGS (scikit-learn is not a runtime dependency).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facelab.evaluation.scorers import SCORERS
from facelab.inference.verifiers import ChiSquareVerifier

_EPS = 1e-8


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
    """The DeepFace verifier as a k-fold pair scorer: ``fit`` on labelled pairs, ``score`` others. The fitted
    parameters are a :class:`facelab.inference.verifiers.ChiSquareVerifier` (``fitted``), which a bundle can carry."""

    name = "deepface"
    accept = "SVM decision value of the weighted chi-square terms >= threshold"
    trainable = True

    def __init__(self, c: float = 1.0) -> None:
        self.c = c
        self.fitted: ChiSquareVerifier | None = None

    def fit(self, a: np.ndarray, b: np.ndarray, labels: np.ndarray) -> None:
        """Fit on pairs (a[i], b[i]) of (N, D) embeddings with boolean ``labels`` (same person)."""
        both = np.concatenate([a, b]).astype(np.float64)
        lo = both.min(0)
        span = np.maximum(both.max(0) - lo, _EPS)
        ones = np.ones(a.shape[1])
        unscaled = ChiSquareVerifier(lo, span, ones, np.zeros(a.shape[1]), 0.0, 0.0)
        raw = unscaled.terms(a, b)
        scale = np.maximum(raw.std(0), _EPS)  # per-term standardisation keeps the SVM well conditioned
        w, bias = fit_linear_svm(raw / scale, np.asarray(labels, bool), self.c)
        self.fitted = ChiSquareVerifier(lo, span, scale, w, bias, 0.0)

    def score(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if self.fitted is None:
            raise RuntimeError("DeepFaceChiSquare.score called before fit")
        return self.fitted.score(a, b)

    def native(self, oriented: float) -> float:
        return float(oriented)


SCORERS.register("deepface")(DeepFaceChiSquare)


def fit_verifier(model: Any, pairs_file: str | Path | Sequence[str | Path], data_root: str | Path | None = None,
                 fmt: str | None = None, *, target_far: float = 1e-3, folds: int = 10, c: float = 1.0,
                 flip: bool | None = None, quiet: bool = False) -> tuple[Any, dict[str, Any]]:
    """Fit the deployable DeepFace verifier of ``model`` on a labelled pair list (``facelab verifier``).

    The model's unit-length embeddings of the pairs are scored k-fold (the SVM fitted on the other folds, as
    ``facelab pairs`` does), the threshold is the one at ``target_far`` on those out-of-fold scores, and the verifier
    kept is fitted on all pairs. Returns (the model carrying the verifier, a summary with the k-fold accuracy of the
    verifier and of cosine on the same pairs).

    Raises:
        FacelabError: an unlabelled or unreadable pair list, an unusable image, a bad ``target_far``.
    """
    from facelab.errors import FacelabError
    from facelab.evaluation.pairs import embed_pair_list, score_pairs
    from facelab.inference.model import unit

    if not 0 < target_far < 1:
        raise FacelabError(f"target FAR must be in (0, 1), got {target_far}")
    pairs, fm, _, raw = embed_pair_list(model, pairs_file, data_root, fmt, folds=folds, require_labels=True,
                                        flip=flip, quiet=quiet)
    emb = unit(raw)  # the verifier scores what FaceModel.verify compares: unit-length embeddings
    results = score_pairs(emb, pairs, ("cosine", "deepface"), far_targets=(target_far,))
    point = results["deepface"]["report"]["tar_at_far"][0]
    kfold = {name: results[name]["kfold"] for name in ("deepface", "cosine")}
    final = DeepFaceChiSquare(c)
    final.fit(emb[pairs.first], emb[pairs.second], pairs.labels)
    assert final.fitted is not None
    n = len(pairs.labels)
    source = (f"chi-square + linear SVM fitted on {n} pairs of {pairs.name}; threshold at FAR {target_far:g} on "
              f"out-of-fold scores ({len(kfold['deepface']['per_fold'])}-fold accuracy "
              f"{kfold['deepface']['accuracy_mean']:.4f}, cosine {kfold['cosine']['accuracy_mean']:.4f})")
    summary = {"pairs": n, "genuine": int(pairs.labels.sum()), "target_far": target_far,
               "threshold": float(point["threshold"]), "far": point["far"], "tar": point["tar"],
               "reliable": point["reliable"], "accuracy": kfold["deepface"]["accuracy_mean"],
               "accuracy_std": kfold["deepface"]["accuracy_std"], "cosine_accuracy": kfold["cosine"]["accuracy_mean"],
               "source": source}
    return fm.with_verifier(final.fitted.with_threshold(point["threshold"], source)), summary
