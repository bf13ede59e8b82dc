"""Pair scorers by name: the fixed score types of ``metrics.SCORE_TYPES`` and learned verifiers (``deepface``).

Every scorer returns oriented scores (higher = more alike) so the ROC code is shared; ``native`` turns a threshold
back into the unit a user reads and ``accept`` states the rule. Learned scorers are fitted on the training folds of
the k-fold protocol only, so their held-out accuracy is comparable with cosine's.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from facelab.evaluation.metrics import SCORE_TYPES, ScoreType, score_type
from facelab.registry import Registry


class PairScorer(Protocol):
    name: str
    accept: str
    #: False for fixed similarities: ``fit`` does nothing and one pass over all pairs suffices
    trainable: bool

    def fit(self, a: np.ndarray, b: np.ndarray, labels: np.ndarray) -> None: ...

    def score(self, a: np.ndarray, b: np.ndarray) -> np.ndarray: ...

    def native(self, oriented: float) -> float: ...


class FixedScorer:
    """A registered score type (cosine, squared L2) as a scorer."""

    trainable = False

    def __init__(self, st: ScoreType) -> None:
        self.st, self.name, self.accept = st, st.name, st.accept

    def fit(self, a: np.ndarray, b: np.ndarray, labels: np.ndarray) -> None:
        return None

    def score(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self.st.pairwise(a, b)

    def native(self, oriented: float) -> float:
        return self.st.native(oriented)


SCORERS: Registry[PairScorer] = Registry("scorer")
for _name in SCORE_TYPES.names():
    SCORERS.register(_name)(lambda _n=_name: FixedScorer(score_type(_n)))


def build_scorer(name: str) -> PairScorer:
    """A scorer by name (learned ones register on import of facelab.evaluation, see its __init__)."""
    return SCORERS.build(name)
