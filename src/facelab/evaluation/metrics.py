"""Verification and identification metrics in plain numpy.

Implemented here (not borrowed from scikit-learn) so thresholds come back with every operating point; the tests check
every number against scikit-learn and hand-computed cases. Convention: a pair is accepted when ``score >= threshold``
and higher scores mean "more alike".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from facelab.registry import Registry

#: FAR operating points every verification report lists (unreliable ones are flagged, not hidden)
DEFAULT_FAR_TARGETS: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


@dataclass(frozen=True)
class ScoreType:
    """How two embeddings are compared. ``pairwise(a, b)`` scores row i of ``a`` with row i of ``b`` and
    ``matrix(a, b)`` every row of ``a`` with every row of ``b``; both are oriented "higher = more alike" so every
    metric here works unchanged. ``sign`` maps that score back to the unit a user reads (-1 for distances), so
    reports state thresholds in the score's own unit together with ``accept``."""

    name: str
    pairwise: Callable[[np.ndarray, np.ndarray], np.ndarray]
    matrix: Callable[[np.ndarray, np.ndarray], np.ndarray]
    sign: float
    accept: str

    def native(self, oriented: float) -> float:
        """A threshold in the score's own unit (a distance for ``squared_l2``)."""
        return float(self.sign * oriented)

    def oriented(self, native: float) -> float:
        return float(self.sign * native)


SCORE_TYPES: Registry[ScoreType] = Registry("score type")


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _unit(a) @ _unit(b).T


def _neg_sql2_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ua, ub = _unit(a), _unit(b)
    d = (ua**2).sum(1)[:, None] + (ub**2).sum(1)[None, :] - 2.0 * ua @ ub.T
    return -np.maximum(d, 0.0)


_COSINE = ScoreType("cosine", lambda a, b: (_unit(a) * _unit(b)).sum(-1), _cosine_matrix, 1.0,
                    "cosine similarity >= threshold")
# squared L2 distance of unit vectors (= 2 - 2 cos, the FaceNet convention), negated internally
_SQL2 = ScoreType("squared_l2", lambda a, b: -((_unit(a) - _unit(b)) ** 2).sum(-1), _neg_sql2_matrix, -1.0,
                  "squared L2 distance of unit embeddings <= threshold")
SCORE_TYPES.register("cosine")(lambda: _COSINE)
SCORE_TYPES.register("squared_l2")(lambda: _SQL2)


def score_type(name: str) -> ScoreType:
    return SCORE_TYPES.build(name)


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


def native_thresholds(report: dict, native: Callable[[float], float]) -> dict:
    """``report`` (from :func:`verification_report`) with every threshold mapped to a score's own unit."""
    out = {**report, "eer_threshold": native(report["eer_threshold"]),
           "best_accuracy_threshold": native(report["best_accuracy_threshold"])}
    out["tar_at_far"] = [{**op, "threshold": native(op["threshold"])} for op in report["tar_at_far"]]
    return out


def verification_report(scores: np.ndarray, labels: np.ndarray, far_targets: tuple[float, ...],
                        score: str | None = None) -> dict:
    """ROC AUC, EER, best accuracy and TAR@FAR of oriented ``scores``. With ``score`` (a score-type name) the
    report states it and gives every threshold in that score's own unit (a distance for ``squared_l2``)."""
    roc = roc_curve(scores, labels)
    rate, eer_thr = eer(roc)
    acc, acc_thr = best_accuracy(roc)
    report = {
        "pairs": {"genuine": roc.positives, "impostor": roc.negatives},
        "roc_auc": auc(roc),
        "eer": rate,
        "eer_threshold": eer_thr,
        "best_accuracy": acc,
        "best_accuracy_threshold": acc_thr,
        "tar_at_far": [asdict(tar_at_far(roc, f)) for f in far_targets],
    }
    if score is None:
        return report
    st = score_type(score)
    return {"score": score, "accept": st.accept, **native_thresholds(report, st.native)}


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
