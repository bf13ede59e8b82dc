"""Clustering face embeddings (FaceNet, Schroff et al. 2015, section 5.3: grouping one person's photos without
labels) and scoring a clustering against identity labels.

Algorithms (scikit-learn, the ``cluster`` extra), all on L2-normalised embeddings:

- ``agglomerative``: average linkage on cosine distance (1 - cosine score), merging while the average distance
  between two clusters is below ``1 - threshold``: with the model's calibrated 1:1 threshold, two groups are merged
  when their photos would on average be accepted as the same person.
- ``dbscan``: density clusters with ``eps = 1 - threshold`` on cosine distance and ``min_samples``; points in no
  dense region are noise.
- ``hdbscan``: hierarchical DBSCAN (Campello et al. 2013) on Euclidean distance between unit vectors
  (sqrt(2 - 2 cos), monotone in the cosine score) with ``min_cluster_size`` = ``min_samples``; it needs no
  threshold. Noise as for DBSCAN.

Noise points (label -1) are scored as singletons. Metrics, for predicted clusters K and true classes C of N items
with contingency counts n_kc, cluster sizes a_k and class sizes b_c:

- pairwise precision / recall / F (over the N(N-1)/2 pairs; e.g. Otto, Wang & Jain 2018): precision =
  sum C(n_kc, 2) / sum C(a_k, 2), recall = sum C(n_kc, 2) / sum C(b_c, 2), F their harmonic mean. A clustering
  with no pair in one cluster has precision 1 (no false merge) and a labelling with no same-class pair recall 1.
- BCubed precision / recall / F (Bagga & Baldwin 1998; Amigo et al. 2009): the mean over items of the share of the
  item's cluster that has its class, and of its class that is in its cluster: precision = (1/N) sum n_kc^2 / a_k,
  recall = (1/N) sum n_kc^2 / b_c.
- NMI: ``sklearn.metrics.normalized_mutual_info_score`` (arithmetic mean normalisation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from facelab.errors import FacelabError
from facelab.inference.model import unit
from facelab.utils.extras import require

#: the algorithms :func:`cluster_embeddings` knows
METHODS = ("agglomerative", "dbscan", "hdbscan")
NOISE = -1


def cluster_embeddings(embeddings: np.ndarray, method: str = "agglomerative", threshold: float | None = None,
                       min_samples: int = 2) -> np.ndarray:
    """Cluster labels (N,) int for embeddings (N, D): 0..K-1 ordered by decreasing cluster size (ties by first
    item), -1 for noise (DBSCAN/HDBSCAN only).

    ``threshold`` is a cosine score in [-1, 1] (the 1:1 accept threshold): agglomerative's distance threshold and
    DBSCAN's eps are ``1 - threshold``; HDBSCAN ignores it. ``min_samples``: DBSCAN's core-point count and
    HDBSCAN's smallest cluster.

    Raises:
        FacelabError: an unknown method, a missing or out-of-range threshold, ``min_samples`` < 1, no embeddings,
        or scikit-learn not installed (naming the ``cluster`` extra).
    """
    if method not in METHODS:
        raise FacelabError(f"unknown clustering method '{method}' (choose from {', '.join(METHODS)})")
    if embeddings.ndim != 2 or len(embeddings) == 0:
        raise FacelabError(f"need a non-empty (N, D) array of embeddings, got shape {embeddings.shape}")
    if min_samples < 1:
        raise FacelabError(f"--min-samples must be >= 1, got {min_samples}")
    if method != "hdbscan":
        if threshold is None:
            raise FacelabError(f"clustering with {method} needs a threshold: the model has no calibrated 1:1 "
                               "threshold, give --threshold (a cosine score)")
        if not -1.0 <= threshold <= 1.0:
            raise FacelabError(f"--threshold is a cosine score in [-1, 1], got {threshold}")
    cluster = require("sklearn.cluster", "cluster")
    x = unit(embeddings).astype(np.float64)
    n = len(x)
    if n == 1:
        raw = np.zeros(1, dtype=int)
    elif method == "agglomerative":
        raw = cluster.AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average",
                                              distance_threshold=max(1.0 - threshold, 1e-12)).fit_predict(x)
    elif method == "dbscan":
        raw = cluster.DBSCAN(eps=max(1.0 - threshold, 1e-12), min_samples=min_samples,
                             metric="cosine").fit_predict(x)
    else:
        if n < max(min_samples, 2):
            raw = np.full(n, NOISE)
        else:
            raw = cluster.HDBSCAN(min_cluster_size=max(min_samples, 2), metric="euclidean",
                                  copy=True).fit_predict(x)
    return relabel_by_size(raw)


def relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Cluster ids renumbered 0..K-1 by decreasing size (ties: the cluster whose first item comes first); noise
    (-1) stays -1."""
    labels = np.asarray(labels)
    ids = [k for k in dict.fromkeys(labels.tolist()) if k != NOISE]
    sizes = {k: int((labels == k).sum()) for k in ids}
    order = sorted(ids, key=lambda k: -sizes[k])  # stable: first appearance breaks ties
    new = {k: i for i, k in enumerate(order)}
    return np.array([new.get(k, NOISE) for k in labels.tolist()], dtype=int)


def noise_as_singletons(labels: np.ndarray) -> np.ndarray:
    """Each noise point (-1) as a cluster of its own (ids after the largest), the usual way to score noise."""
    labels = np.asarray(labels).copy()
    noise = labels == NOISE
    start = labels.max(initial=-1) + 1
    labels[noise] = start + np.arange(int(noise.sum()))
    return labels


@dataclass(frozen=True)
class ClusterScores:
    pairwise_precision: float
    pairwise_recall: float
    pairwise_f: float
    bcubed_precision: float
    bcubed_recall: float
    bcubed_f: float
    nmi: float
    clusters: int
    classes: int
    items: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _f(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def _pairs(n: np.ndarray) -> float:
    return float((n.astype(np.float64) * (n - 1) / 2).sum())


def score_clustering(predicted: Sequence[int] | np.ndarray, truth: Sequence[Any] | np.ndarray) -> ClusterScores:
    """Pairwise and BCubed precision / recall / F and NMI of ``predicted`` cluster ids against ``truth`` labels
    (any hashable values), one per item; noise (-1) in ``predicted`` counts as singletons. Formulas in the module
    docstring.

    Raises:
        FacelabError: different lengths or no items; scikit-learn missing (for NMI).
    """
    pred = noise_as_singletons(np.asarray(predicted))
    if len(pred) != len(truth) or len(pred) == 0:
        raise FacelabError(f"need one true label per clustered item, got {len(truth)} labels for {len(pred)} items")
    _, true_ids = np.unique(np.asarray([str(t) for t in truth]), return_inverse=True)
    _, pred_ids = np.unique(pred, return_inverse=True)
    table = np.zeros((pred_ids.max() + 1, true_ids.max() + 1), dtype=np.int64)
    np.add.at(table, (pred_ids, true_ids), 1)
    a, b = table.sum(1), table.sum(0)
    together = _pairs(table)
    pp = together / _pairs(a) if _pairs(a) > 0 else 1.0
    pr = together / _pairs(b) if _pairs(b) > 0 else 1.0
    sq = table.astype(np.float64) ** 2
    n = float(len(pred))
    bp = float((sq / a[:, None]).sum() / n)
    br = float((sq / b[None, :]).sum() / n)
    metrics = require("sklearn.metrics", "cluster")
    nmi = float(metrics.normalized_mutual_info_score(true_ids, pred_ids))
    return ClusterScores(pp, pr, _f(pp, pr), bp, br, _f(bp, br), nmi, len(a), len(b), int(n))
