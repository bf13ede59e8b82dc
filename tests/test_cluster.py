"""``facelab cluster``: the clustering scores against brute-force float64 references, the algorithms' threshold
semantics on synthetic embeddings, and the folder pipeline (CSV, JSON, folders, contact sheet, file tally, CLI)."""

from __future__ import annotations

import csv
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import normalized_mutual_info_score
from test_serving_support import tiny_model
from torch import nn

from facelab.cli import main
from facelab.errors import FacelabError
from facelab.evaluation.cluster_folder import cluster_folder, identities_of
from facelab.evaluation.clustering import cluster_embeddings, relabel_by_size, score_clustering
from facelab.inference.model import FaceModel
from facelab.inference.spec import InputSpec

pytestmark = pytest.mark.usefixtures("torch_one_thread")


# -- scores -------------------------------------------------------------------------------------------------------
def brute_force(pred: list[int], truth: list[int]) -> dict[str, float]:
    """Every pair and every item visited one by one, in float64; noise (-1) as singletons."""
    pred = [p if p != -1 else 10_000 + i for i, p in enumerate(pred)]
    n = len(pred)
    tp = same_pred = same_true = 0
    for i, j in itertools.combinations(range(n), 2):
        sp, st = pred[i] == pred[j], truth[i] == truth[j]
        tp += sp and st
        same_pred += sp
        same_true += st
    p = np.float64(tp) / same_pred if same_pred else 1.0
    r = np.float64(tp) / same_true if same_true else 1.0
    bp = br = np.float64(0)
    for i in range(n):
        cluster = [j for j in range(n) if pred[j] == pred[i]]
        klass = [j for j in range(n) if truth[j] == truth[i]]
        both = sum(1 for j in cluster if truth[j] == truth[i])
        bp += np.float64(both) / len(cluster)
        br += np.float64(both) / len(klass)
    bp, br = bp / n, br / n

    def f(a: float, b: float) -> float:
        return 0.0 if a + b == 0 else 2 * a * b / (a + b)

    return {"pairwise_precision": p, "pairwise_recall": r, "pairwise_f": f(p, r),
            "bcubed_precision": bp, "bcubed_recall": br, "bcubed_f": f(bp, br)}


@pytest.mark.parametrize("seed", range(8))
def test_pairwise_and_bcubed_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 40))
    truth = rng.integers(0, int(rng.integers(1, 8)), n).tolist()
    pred = rng.integers(-1, int(rng.integers(1, 10)), n).tolist()  # -1: noise
    got = score_clustering(pred, truth).to_dict()
    for key, value in brute_force(pred, truth).items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
    singletons = [p if p != -1 else 10_000 + i for i, p in enumerate(pred)]
    assert got["nmi"] == pytest.approx(normalized_mutual_info_score(truth, singletons), abs=1e-12)


def test_score_edge_cases_and_a_hand_worked_example() -> None:
    perfect = score_clustering([5, 5, 2, 2, 2], ["a", "a", "b", "b", "b"])
    assert (perfect.pairwise_f, perfect.bcubed_f, perfect.nmi) == (1.0, 1.0, pytest.approx(1.0))
    alone = score_clustering([0, 1, 2, 3], ["a", "a", "b", "b"])  # no merge at all: nothing wrongly merged
    assert (alone.pairwise_precision, alone.pairwise_recall, alone.bcubed_precision) == (1.0, 0.0, 1.0)
    assert alone.bcubed_recall == 0.5
    # A: 3 right + 1 put with C's 3; B: 3 right -> 9 of 12 predicted pairs right, 9 of 12 true pairs found
    s = score_clustering([0, 0, 0, 2, 1, 1, 1, 2, 2, 2], list("AAAABBBCCC"))
    assert (s.pairwise_precision, s.pairwise_recall) == (0.75, 0.75)
    # BCubed: A's three and B's three are pure (1 each); in {A, C, C, C} the A has 1/4, each C 3/4
    assert s.bcubed_precision == pytest.approx((3 + 3 + 1 / 4 + 3 * 3 / 4) / 10)
    # recall: A's three in cluster 0 hold 3/4 of A each, the fourth 1/4; B and C are whole
    assert s.bcubed_recall == pytest.approx((3 * 3 / 4 + 1 / 4 + 3 + 3) / 10)
    with pytest.raises(FacelabError, match="one true label per clustered item"):
        score_clustering([0, 1], ["a"])


# -- algorithms ---------------------------------------------------------------------------------------------------
def two_points(cos: float) -> np.ndarray:
    return np.array([[1.0, 0.0], [cos, np.sqrt(1 - cos * cos)]])


@pytest.mark.parametrize("method", ["agglomerative", "dbscan"])
def test_threshold_is_the_verification_decision(method: str) -> None:
    """Two faces with cosine 0.5 end up together exactly when a 1:1 threshold below 0.5 would accept them."""
    assert cluster_embeddings(two_points(0.5), method, 0.4).tolist() == [0, 0]
    apart = cluster_embeddings(two_points(0.5), method, 0.6).tolist()
    assert apart == ([0, 1] if method == "agglomerative" else [-1, -1])  # dbscan: two lone points are noise


def groups(seed: int = 0, per: int = 12, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[:4] * 5
    x = np.concatenate([c + rng.normal(0, 0.6, (per, dim)) for c in centres])
    return x * rng.uniform(0.5, 3, (len(x), 1)), np.repeat(np.arange(4), per)  # scale must not matter (cosine)


@pytest.mark.parametrize(("method", "threshold"), [("agglomerative", 0.5), ("dbscan", 0.7), ("hdbscan", None)])
def test_methods_recover_separated_identities(method: str, threshold: float | None) -> None:
    x, truth = groups()
    outlier = -x[:1]  # opposite of every group
    labels = cluster_embeddings(np.concatenate([x, outlier]), method, threshold)
    assert score_clustering(labels[:-1], truth).pairwise_f == 1.0
    assert labels[-1] not in labels[:-1] or labels[-1] == -1


def test_labels_are_ordered_by_size_and_bad_arguments_are_one_line_errors() -> None:
    assert relabel_by_size(np.array([7, 3, 3, -1, 9, 9, 9])).tolist() == [2, 1, 1, -1, 0, 0, 0]
    with pytest.raises(FacelabError, match="unknown clustering method 'kmeans'"):
        cluster_embeddings(np.ones((3, 2)), "kmeans", 0.5)
    with pytest.raises(FacelabError, match="needs a threshold"):
        cluster_embeddings(np.ones((3, 2)), "agglomerative", None)
    with pytest.raises(FacelabError, match=r"cosine score in \[-1, 1\]"):
        cluster_embeddings(np.ones((3, 2)), "dbscan", 1.5)
    assert cluster_embeddings(np.ones((1, 2)), "agglomerative", 0.5).tolist() == [0]


def test_missing_scikit_learn_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.cluster", None)  # import fails as if not installed
    with pytest.raises(FacelabError, match=r"pip install 'facelab\[cluster\]'"):
        cluster_embeddings(np.ones((3, 2)), "agglomerative", 0.5)


# -- the folder pipeline ------------------------------------------------------------------------------------------
COLOURS = {"A": (200, 30, 30), "B": (30, 200, 30), "C": (30, 30, 200)}


def colour_model() -> FaceModel:
    """Embedding = the image's mean normalised colour: faces of one colour cluster together, whatever the seed."""
    return FaceModel.from_module(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), {"backbone": "mean-colour"},
                                 InputSpec(input_size=32, flip_tta=False), source="mean colour", device="cpu")


def colour_folder(root: Path) -> Path:
    """A: 3 red + 1 blue photo, B: 3 green, C: 3 blue, plus a note and a broken JPEG."""
    rng = np.random.default_rng(0)
    plan = {"A": "AAAC", "B": "BBB", "C": "CCC"}
    for ident, colours in plan.items():
        (root / ident).mkdir(parents=True)
        for i, c in enumerate(colours):
            pixels = np.clip(np.array(COLOURS[c]) + rng.normal(0, 8, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / ident / f"{i}.png")
    (root / "A" / "notes.txt").write_text("not a face")
    (root / "B" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


def test_cluster_folder_writes_and_scores(tmp_path: Path) -> None:
    root = colour_folder(tmp_path / "faces")
    report = cluster_folder(root, colour_model(), tmp_path / "out", threshold=0.9, progress=False)
    assert report.sizes == [4, 3, 3] and report.identities is not None
    s = report.scores
    assert s is not None and (s.pairwise_precision, s.pairwise_recall) == (0.75, 0.75)
    rows = list(csv.DictReader((tmp_path / "out" / "clusters.csv").open()))
    assert len(rows) == 10
    by_path = {r["path"]: int(r["cluster"]) for r in rows}
    assert by_path["A/3.png"] == by_path["C/0.png"] != by_path["A/0.png"]
    folders = sorted(p.name for p in (tmp_path / "out" / "clusters").iterdir())
    assert folders == ["cluster_0000", "cluster_0001", "cluster_0002"]
    big = tmp_path / "out" / "clusters" / "cluster_0000"
    assert sorted(p.name for p in big.iterdir()) == ["A__3.png", "C__0.png", "C__1.png", "C__2.png"]
    assert (big / "A__3.png").is_symlink() and (big / "A__3.png").resolve() == (root / "A" / "3.png").resolve()
    meta = json.loads((tmp_path / "out" / "clusters.json").read_text())
    assert meta["files"] == {"images": 10, "ignored": 1, "failed": 1, "hidden": 0}
    assert meta["unusable"][0]["path"] == "B/broken.jpg"
    assert meta["scores"]["pairwise_f"] == 0.75 and meta["threshold"] == 0.9
    with Image.open(tmp_path / "out" / "contact_sheet.png") as sheet:
        assert sheet.size[1] > 3 * 80  # three lines of 80-pixel tiles
    # a second run with copies replaces the folders whole
    cluster_folder(root, colour_model(), tmp_path / "out", threshold=0.99999, link="copy", progress=False)
    files = list((tmp_path / "out" / "clusters").rglob("*.png"))
    assert len(files) == 10 and not any(f.is_symlink() for f in files)


def test_cluster_folder_refusals(tmp_path: Path) -> None:
    root = colour_folder(tmp_path / "faces")
    model = colour_model()
    with pytest.raises(FacelabError, match=r"no verification threshold.*give --threshold"):
        cluster_folder(root, model, tmp_path / "out", progress=False)
    with pytest.raises(FacelabError, match="inside the folder being clustered"):
        cluster_folder(root, model, root / "out", threshold=0.5, progress=False)
    with pytest.raises(FacelabError, match="takes no threshold"):
        cluster_folder(root, model, tmp_path / "out", method="hdbscan", threshold=0.5, progress=False)
    assert identities_of(["a/1.png", "b/1.png"]) == ["a", "b"]
    assert identities_of(["a/1.png", "top.png"]) is None and identities_of(["a/1.png", "a/2.png"]) is None


def test_cli_cluster_with_a_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = colour_folder(tmp_path / "faces")
    bundle = tiny_model(threshold=0.3).save_bundle(tmp_path / "m.safetensors")
    assert main(["cluster", str(root), "--model", str(bundle), "--out", str(tmp_path / "out"), "--json",
                 "--quiet", "--method", "dbscan", "--link", "none"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["faces"] == 10 and out["threshold"] == 0.3 and out["method"] == "dbscan"
    assert sum(out["cluster_sizes"]) + out["noise"] == 10
    assert not (tmp_path / "out" / "clusters").exists()
    assert main(["cluster", str(root), "--model", str(bundle), "--out", str(tmp_path / "o2"), "--method",
                 "hdbscan", "--threshold", "0.5"]) == 2
    assert "takes no threshold" in capsys.readouterr().err
