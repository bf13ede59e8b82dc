"""Verification metrics, score types, the k-fold protocol, calibration and the DeepFace-style scorer, checked
against scikit-learn and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from facelab.evaluation.calibration import calibrate_threshold
from facelab.evaluation.deepface import DeepFaceChiSquare
from facelab.evaluation.metrics import auc, eer, roc_curve, score_type, tar_at_far, verification_report
from facelab.evaluation.pairs import kfold_accuracy


def _synthetic(n: int = 400, seed: int = 0, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.4
    scores = rng.normal(0, 1, n) + 1.5 * labels
    return (np.round(scores, 1) if ties else scores), labels


@pytest.mark.parametrize("ties", [False, True])
def test_roc_and_auc_match_sklearn(ties: bool) -> None:
    s, y = _synthetic(ties=ties)
    roc = roc_curve(s, y)
    fpr, tpr, thr = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(roc.fpr, fpr)
    np.testing.assert_allclose(roc.tpr, tpr)
    np.testing.assert_allclose(roc.thresholds[1:], thr[1:])
    assert auc(roc) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)


def test_tar_at_far_is_best_admissible_sklearn_point() -> None:
    s, y = _synthetic(2000, seed=1)
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    for target in (0.1, 0.01, 0.001):
        op = tar_at_far(roc_curve(s, y), target)
        ok = fpr <= target
        assert op.tar == pytest.approx(tpr[ok].max())
        assert op.far <= target
        accepted = s >= op.threshold  # the threshold really gives the reported rates
        assert accepted[y].mean() == pytest.approx(op.tar)
        assert accepted[~y].mean() == pytest.approx(op.far)
    assert tar_at_far(roc_curve(s, y), 1e-6).reliable is False


def test_eer_lies_between_far_and_frr_crossing() -> None:
    s, y = _synthetic(3000, seed=2)
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    rate, _ = eer(roc_curve(s, y))
    fnr = 1 - tpr
    i = np.argmax(fnr <= fpr)
    assert min(fpr[i - 1], fnr[i]) - 1e-9 <= rate <= max(fpr[i], fnr[i - 1]) + 1e-9
    # hand case: perfectly separated scores have EER 0
    assert eer(roc_curve(np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 1, 0, 0])))[0] == 0.0


def test_squared_l2_is_two_minus_two_cosine_with_native_thresholds() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(50, 8)), rng.normal(size=(50, 8))
    cos = score_type("cosine").pairwise(a, b)
    sql2 = score_type("squared_l2").pairwise(a, b)
    np.testing.assert_allclose(-sql2, 2 - 2 * cos, atol=1e-12)
    np.testing.assert_allclose(score_type("squared_l2").matrix(a, b).diagonal(), sql2, atol=1e-12)
    y = rng.random(50) < 0.5
    rep_c = verification_report(cos, y, (0.1,), score="cosine")
    rep_d = verification_report(sql2, y, (0.1,), score="squared_l2")
    assert rep_d["roc_auc"] == pytest.approx(rep_c["roc_auc"])  # a monotone map: same ROC
    assert rep_d["eer_threshold"] == pytest.approx(2 - 2 * rep_c["eer_threshold"])  # stated as a distance
    assert rep_d["score"] == "squared_l2" and "<=" in rep_d["accept"]


def test_kfold_threshold_comes_from_the_other_folds() -> None:
    # fold 0: genuine score 0.9, impostor 0.1; fold 1: genuine 0.6, impostor 0.5 (a harder fold)
    scores = np.array([0.9, 0.1, 0.6, 0.5])
    labels = np.array([True, False, True, False])
    folds = np.array([0, 0, 1, 1])
    kf = kfold_accuracy(scores, labels, folds)
    # fold 0 tested with fold 1's threshold (0.6): 0.9 accepted, 0.1 rejected -> 1.0
    # fold 1 tested with fold 0's threshold (0.9): 0.6 rejected (wrong), 0.5 rejected -> 0.5
    assert [p["threshold"] for p in kf["per_fold"]] == [0.6, 0.9]
    assert [p["accuracy"] for p in kf["per_fold"]] == [1.0, 0.5]
    assert kf["accuracy_mean"] == 0.75 and kf["accuracy_std"] == 0.25


def test_kfold_learned_scorer_never_sees_its_test_fold() -> None:
    labels = np.array([True, False] * 10)
    folds = np.repeat(np.arange(10), 2)
    seen: list[set[int]] = []

    def fit(train: np.ndarray) -> np.ndarray:
        seen.append(set(train.tolist()))
        return labels.astype(float)

    kfold_accuracy(fit, labels, folds)
    for f, train in enumerate(seen):
        assert not train & set(np.nonzero(folds == f)[0].tolist())


def test_calibrate_far_and_accuracy() -> None:
    s, y = _synthetic(5000, seed=4)
    c = calibrate_threshold(s, y, "far", 0.01)
    assert c["achieved"]["far"] <= 0.01 and c["reliable"] and c["score"] == "cosine"
    assert (s[~y] >= c["threshold"]).mean() == pytest.approx(c["achieved"]["far"])
    acc = calibrate_threshold(s, y, "accuracy", None)
    best = max(((s >= t) == y).mean() for t in np.unique(s))
    assert acc["achieved"]["accuracy"] == pytest.approx(best)
    d = calibrate_threshold(-(2 - 2 * np.tanh(s)), y, "far", 0.01, score="squared_l2")
    assert d["threshold"] > 0  # a squared distance, stated positive


def test_deepface_scorer_learns_which_components_matter() -> None:
    rng = np.random.default_rng(5)
    n, d = 600, 16
    ident = rng.normal(size=(n, 2))  # identity lives in 2 dims; 14 dims of loud noise drown cosine
    same = rng.random(n) < 0.5
    other = np.where(same[:, None], ident, rng.normal(size=(n, 2)))
    a = np.c_[ident + 0.1 * rng.normal(size=(n, 2)), 3 * rng.normal(size=(n, d - 2))]
    b = np.c_[other + 0.1 * rng.normal(size=(n, 2)), 3 * rng.normal(size=(n, d - 2))]
    tr, te = slice(0, 400), slice(400, None)
    sc = DeepFaceChiSquare()
    sc.fit(a[tr], b[tr], same[tr])
    chi = skm.roc_auc_score(same[te], sc.score(a[te], b[te]))
    cos = skm.roc_auc_score(same[te], score_type("cosine").pairwise(a[te], b[te]))
    assert chi > 0.9 > cos
    np.testing.assert_allclose(sc.score(a[te], b[te]), sc.score(b[te], a[te]))  # symmetric in the pair
