"""Verification and identification metrics in plain numpy.

Implemented here (not borrowed from scikit-learn) so thresholds come back with every operating point; the tests check
every number against scikit-learn and hand-computed cases. Convention: a pair is accepted when ``score >= threshold``
and higher scores mean "more alike".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Roc:
    fpr: np.ndarray  # false accept rate at each threshold, non-decreasing, from 0
    tpr: np.ndarray  # true accept rate
    thresholds: np.ndarray  # thresholds[0] = +inf (accept nothing)
    positives: int
    negatives: int


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> Roc:
    """ROC with one point per distinct score (like ``sklearn.metrics.roc_curve(drop_intermediate=False)``)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).astype(bool).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels differ in length: {scores.shape} vs {labels.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinity")
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        raise ValueError(f"ROC needs both genuine and impostor pairs (got {pos} genuine, {neg} impostor)")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last_of_group = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tp = np.cumsum(y)[last_of_group]
    fp = (last_of_group + 1) - tp
    return Roc(
        fpr=np.r_[0.0, fp / neg],
        tpr=np.r_[0.0, tp / pos],
        thresholds=np.r_[np.inf, s[last_of_group]],
        positives=pos,
        negatives=neg,
    )


def auc(roc: Roc) -> float:
    return float(np.trapezoid(roc.tpr, roc.fpr))


def eer(roc: Roc) -> tuple[float, float]:
    """Equal error rate and its threshold, linearly interpolated where FAR crosses FRR = 1 - TAR."""
    d = (1.0 - roc.tpr) - roc.fpr  # FRR - FAR: +1 at the start, -1 at the end
    i = int(np.argmax(d <= 0))
    if d[i] == 0 or i == 0:
        return float(roc.fpr[i]), float(roc.thresholds[max(i, 1)])
    t = d[i - 1] / (d[i - 1] - d[i])
    rate = roc.fpr[i - 1] + t * (roc.fpr[i] - roc.fpr[i - 1])
    lo = roc.thresholds[i]
    hi = roc.thresholds[i - 1] if np.isfinite(roc.thresholds[i - 1]) else lo
    return float(rate), float(hi + t * (lo - hi))


@dataclass
class OperatingPoint:
    far_target: float
    tar: float
    far: float  # achieved false accept rate (<= target)
    threshold: float
    #: False when there are too few impostor pairs to measure this FAR (fewer than 1 / target)
    reliable: bool


def tar_at_far(roc: Roc, far_target: float) -> OperatingPoint:
    """Highest true accept rate whose false accept rate does not exceed ``far_target``."""
    ok = np.nonzero(roc.fpr <= far_target + 1e-12)[0]
    i = int(ok[-1])  # fpr is non-decreasing, so the last admissible point has the highest tpr
    thr = float(roc.thresholds[i]) if np.isfinite(roc.thresholds[i]) else float("inf")
    return OperatingPoint(far_target, float(roc.tpr[i]), float(roc.fpr[i]), thr,
                          reliable=roc.negatives * far_target >= 1.0)


def best_accuracy(roc: Roc) -> tuple[float, float]:
    """Best pair accuracy over all thresholds (on the same pairs: optimistic), and that threshold."""
    correct = roc.tpr * roc.positives + (1.0 - roc.fpr) * roc.negatives
    i = int(np.argmax(correct))
    return float(correct[i] / (roc.positives + roc.negatives)), float(roc.thresholds[i])


def verification_report(scores: np.ndarray, labels: np.ndarray, far_targets: tuple[float, ...]) -> dict:
    roc = roc_curve(scores, labels)
    rate, eer_thr = eer(roc)
    acc, acc_thr = best_accuracy(roc)
    return {
        "pairs": {"genuine": roc.positives, "impostor": roc.negatives},
        "roc_auc": auc(roc),
        "eer": rate,
        "eer_threshold": eer_thr,
        "best_accuracy": acc,
        "best_accuracy_threshold": acc_thr,
        "tar_at_far": [asdict(tar_at_far(roc, f)) for f in far_targets],
    }


def all_pairs(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine score and same-identity flag of every unordered pair (i < j) of L2-normalised embeddings."""
    e = np.asarray(embeddings, dtype=np.float64)
    sims = e @ e.T
    i, j = np.triu_indices(len(e), k=1)
    labels = np.asarray(labels)
    return sims[i, j], labels[i] == labels[j]


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Fraction of rows whose true label is among the k highest scores (ties broken by index)."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    order = np.argsort(-logits, axis=1, kind="stable")
    out = {}
    for k in ks:
        k_eff = min(k, logits.shape[1])
        out[f"top{k}"] = float(np.mean(np.any(order[:, :k_eff] == labels[:, None], axis=1)))
    return out


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
