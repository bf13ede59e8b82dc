"""Open-set identification by the ISO/IEC 19795-1 definitions, on hand-computed searches."""

from __future__ import annotations

import numpy as np
import pytest

from facelab.evaluation.calibration import calibrate_open_set
from facelab.evaluation.identification import (
    Searches,
    cmc,
    det_curve,
    dir_at_fpir,
    fnir,
    fpir,
    identification_report,
    open_set_accuracy,
    search,
    threshold_at_fpir,
)


def _hand() -> Searches:
    # gallery identities A, B, C; rows = probes
    scores = np.array([
        [0.9, 0.2, 0.1],  # mated A: rank 1, score 0.9
        [0.3, 0.7, 0.8],  # mated B: rank 2 (C scores higher)
        [0.1, 0.2, 0.6],  # mated C: rank 1, score 0.6
        [0.5, 0.4, 0.3],  # non-mated, top 0.5
        [0.2, 0.85, 0.1],  # non-mated, top 0.85
    ])
    return Searches(["A", "B", "C"], scores, np.array([0, 1, 2, -1, -1]))


def test_cmc_by_hand() -> None:
    np.testing.assert_allclose(cmc(_hand(), 3), [2 / 3, 1.0, 1.0])


def test_fpir_uses_the_top_score_of_non_mated_searches() -> None:
    s = _hand()
    assert fpir(s, 0.6) == 0.5  # only the 0.85 search alarms
    assert fpir(s, 0.4) == 1.0  # 0.5 is the top of the other one (its 0.4 does not count twice)
    assert fpir(s, 0.9) == 0.0


def test_fnir_dir_and_open_set_accuracy_by_hand() -> None:
    s = _hand()
    # T = 0.65: A hit (0.9), B missed (rank 2), C missed (0.6 < T)
    assert fnir(s, 0.65) == pytest.approx(2 / 3)
    # rank 2 lets B count (0.7 >= 0.65)
    assert fnir(s, 0.65, rank=2) == pytest.approx(1 / 3)
    # accuracy at 0.65: A right, B wrong (top is C), C wrong (below T), non-mated 0.5 right, 0.85 wrong
    assert open_set_accuracy(s, 0.65) == pytest.approx(2 / 5)
    assert open_set_accuracy(s, 0.86) == pytest.approx(3 / 5)  # A right, both non-mated right


def test_dir_at_fpir_picks_the_lowest_admissible_threshold() -> None:
    s = _hand()
    p = dir_at_fpir(s, 0.5)  # one of two non-mated searches may alarm -> just above 0.5
    assert 0.5 < p.threshold < 0.5 + 1e-9
    assert p.fpir == 0.5 and p.dir == pytest.approx(2 / 3)  # A and C (0.6) detected
    p0 = dir_at_fpir(s, 0.1)  # none may alarm -> just above 0.85
    assert p0.fpir == 0.0 and p0.dir == pytest.approx(1 / 3) and not p0.reliable
    assert threshold_at_fpir(s, 1.0) == -np.inf


def test_det_curve_matches_pointwise_rates() -> None:
    s = _hand()
    det = det_curve(s)
    for t, fp, fn in zip(det["threshold"], det["fpir"], det["fnir"], strict=True):
        assert fp == fpir(s, t) and fn == pytest.approx(fnir(s, t))


def test_search_takes_the_best_image_per_identity_and_marks_non_mated() -> None:
    g = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    s = search(np.array([[0.6, 0.8], [1.0, 0.1]]), ["B", "Z"], g, ["A", "B", "B"])
    assert s.identities == ["A", "B"]
    assert s.mate.tolist() == [1, -1]
    assert s.scores[0, 1] == pytest.approx(max(0.8, (0.6 * 0.7 + 0.8 * 0.7) / np.sqrt(0.98)))


def test_report_and_open_set_calibration() -> None:
    s = _hand()
    r = identification_report(s, fpir_targets=(0.5,), max_rank=3, threshold=0.65)
    assert r["rank1"] == pytest.approx(2 / 3) and r["mated_searches"] == 3 and r["non_mated_searches"] == 2
    assert r["at_threshold"]["open_set_accuracy"] == pytest.approx(0.4)
    c = calibrate_open_set(s, "open_set_accuracy", None)
    assert c["achieved"]["open_set_accuracy"] == pytest.approx(3 / 5)
    c2 = calibrate_open_set(s, "fpir", 0.5)
    assert c2["achieved"]["fpir"] == 0.5


def test_calibrated_threshold_keeps_a_margin_above_the_rejected_stranger() -> None:
    s = _hand()  # non-mated top scores 0.85 and 0.5
    t = threshold_at_fpir(s, 0.5, margin=1e-4)  # one alarm allowed: reject 0.5 with room to spare
    assert t == pytest.approx(0.5 + 1e-4)
    assert fpir(s, t) == 0.5
    # the rejected stranger re-embedded with float noise stays rejected; without the margin it would alarm
    assert t > 0.5 + 1e-6 and not threshold_at_fpir(s, 0.5) > 0.5 + 1e-6
    # never more than half-way to the next higher score, so the FPIR target still holds
    close = Searches(["A"], np.array([[0.9], [0.50004], [0.5]]), np.array([0, -1, -1]))
    tc = threshold_at_fpir(close, 0.5, margin=1e-4)
    assert tc == pytest.approx(0.50002) and fpir(close, tc) == 0.5
    # no alarm allowed: the margin goes above the highest one
    assert threshold_at_fpir(s, 0.1, margin=1e-4) == pytest.approx(0.85 + 1e-4)
    # calibration uses the margin
    assert calibrate_open_set(s, "fpir", 0.5)["threshold"] == pytest.approx(0.5 + 1e-4)
