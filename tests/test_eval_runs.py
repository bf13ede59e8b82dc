"""Protocols end to end on a tiny untrained checkpoint and ORL images: the embedding cache, HW2P2 layouts,
identification folders, calibration and the CLI commands."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from runs_support import untrained_run
from sklearn.metrics import roc_auc_score

from facelab.cli import main
from facelab.evaluation import hw2p2
from facelab.evaluation.pairs import evaluate_pairs, write_pairs_csv
from facelab.inference.model import load_model


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, orl_root: Path) -> Path:
    """An untrained 32-pixel ResNet checkpoint on ORL (30 training identities, 10 unseen): fast, deterministic."""
    return untrained_run(tmp_path_factory.mktemp("run"), orl_root, [
        "data.input_size=32", "model.width=8", "model.embedding_dim=16", "data.split.open_identities=10",
        "eval.flip_tta=false"])


def _copy(orl_root: Path, dst: Path, ident: str, nums: list[int], name: str | None = None) -> list[Path]:
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for n in nums:
        target = dst / (f"{ident}_{n}.pgm" if name is None else name.format(ident=ident, n=n))
        shutil.copy(orl_root / ident / f"{n}.pgm", target)
        out.append(target)
    return out


def test_embedding_cache_hits_and_invalidates(tiny_run: Path, orl_root: Path, tmp_path: Path) -> None:
    images = _copy(orl_root, tmp_path, "s1", [1, 2, 3]) + _copy(orl_root, tmp_path, "s2", [1, 2, 3])
    first = load_model(tiny_run).embedder(cache=True)
    emb = first.embed_all(images + images[:2])
    assert first.calls == 6 and emb.shape == (8, 16)  # duplicates embedded once
    again = load_model(tiny_run).embedder(cache=True)  # a fresh process would read the same file
    np.testing.assert_allclose(again.embed_all(images), emb[:6], rtol=1e-6)
    assert again.calls == 0
    shutil.copy(orl_root / "s3" / "1.pgm", images[0])  # same path, new content and mtime
    third = load_model(tiny_run).embedder(cache=True)
    third.embed_all(images)
    assert third.calls == 1
    assert not np.allclose(third.embed_all(images[:1]), emb[:1])


@pytest.mark.slow
def test_cached_rescoring_never_calls_the_model(tiny_run: Path, orl_root: Path, tmp_path: Path) -> None:
    rows = [(f"s3{i}/{j}.pgm", f"s3{i}/{j + 1}.pgm", True) for i in range(5) for j in (1, 3)]
    rows += [(f"s3{i}/1.pgm", f"s3{i + 1}/2.pgm", False) for i in range(5) for _ in (0, 1)]
    write_pairs_csv(tmp_path / "p.csv", rows)
    doc = evaluate_pairs(tiny_run, tmp_path / "p.csv", orl_root, scorers=("cosine",), folds=5,
                         out_dir=tmp_path / "r1", quiet=True)
    lr = load_model(tiny_run)

    def refuse(*args: object) -> None:
        raise AssertionError("the model ran although every embedding was cached")

    lr.backbone.forward = refuse  # type: ignore[method-assign]
    again = evaluate_pairs(lr, tmp_path / "p.csv", orl_root, scorers=("cosine", "squared_l2"), folds=5,
                           out_dir=tmp_path / "r2", quiet=True)
    assert again["images_embedded_now"] == 0 and doc["images_embedded_now"] > 0
    assert again["scorers"]["cosine"]["verification"]["roc_auc"] == doc["scorers"]["cosine"]["verification"]["roc_auc"]
    for f in ("pairs.json", "pairs.md", "pairs_roc.png", "pairs_det.png", "pairs_hist.png"):
        assert (tmp_path / "r2" / f).is_file()


@pytest.fixture()
def hw2p2_layout(orl_root: Path, tmp_path: Path) -> Path:
    """known/ n000001..n000004 (ORL s1..s4, 3 images each); unknown_dev/ 2 more images of each plus 4 of s5/s6."""
    root = tmp_path / "hw2p2"
    truth = []
    for k, ident in enumerate(["s1", "s2", "s3", "s4"], start=1):
        _copy(orl_root, root / "known" / f"n{k:06d}", ident, [1, 2, 3])
        for p in _copy(orl_root, root / "unknown_dev", ident, [9, 10]):
            truth.append((p.name, f"n{k:06d}"))
    for ident in ("s5", "s6"):
        for p in _copy(orl_root, root / "unknown_dev", ident, [1, 2]):
            truth.append((p.name, hw2p2.UNKNOWN))
    with open(root / "verification_dev.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["unknown_dev", "known"])
        w.writerows(truth)
    return root


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_hw2p2_verify_thresholds_and_submission(tiny_run: Path, hw2p2_layout: Path, tmp_path: Path) -> None:
    reject_all = hw2p2.verify_known_unknown(tiny_run, hw2p2_layout, threshold=1.01, out_dir=tmp_path / "a",
                                            quiet=True)
    assert reject_all["dev_accuracy"] == pytest.approx(4 / 12)  # only the 4 unknowns are right
    sub = _read(tmp_path / "a" / "submission.csv")
    assert len(sub) == 12 and {r["label"] for r in sub} == {hw2p2.UNKNOWN}
    accept_all = hw2p2.verify_known_unknown(tiny_run, hw2p2_layout, threshold=-1.01, out_dir=tmp_path / "b",
                                            quiet=True)
    dev = _read(tmp_path / "b" / "dev_predictions.csv")
    assert hw2p2.UNKNOWN not in {r["label"] for r in dev}
    assert accept_all["dev_accuracy"] == pytest.approx(np.mean([r["label"] == r["truth"] for r in dev]))
    best = hw2p2.verify_known_unknown(tiny_run, hw2p2_layout, out_dir=tmp_path / "c", quiet=True)
    assert best["threshold_source"].startswith("best on dev")
    assert best["dev_accuracy"] >= max(reject_all["dev_accuracy"], accept_all["dev_accuracy"])
    assert json.loads((tmp_path / "c" / "identify.json").read_text())["identification"]["mated_searches"] == 8


def test_hw2p2_verify_names_a_missing_identity(tiny_run: Path, hw2p2_layout: Path) -> None:
    shutil.rmtree(hw2p2_layout / "known" / "n000004")
    with pytest.raises(Exception, match="n000004"):
        hw2p2.verify_known_unknown(tiny_run, hw2p2_layout, quiet=True)


def test_hw2p2_classify_writes_id_label(tiny_run: Path, orl_root: Path, tmp_path: Path) -> None:
    fm = load_model(tiny_run)
    lr = fm.run
    images = _copy(orl_root, tmp_path / "test", lr.manifest.classes[0], [1, 2]) + \
        _copy(orl_root, tmp_path / "test", lr.manifest.classes[1], [1])
    hw2p2.classify_folder(fm, tmp_path / "test", tmp_path / "names.csv", quiet=True)
    rows = _read(tmp_path / "names.csv")
    assert [r["id"] for r in rows] == sorted(p.name for p in images)
    assert all(r["label"] in lr.manifest.classes for r in rows)
    hw2p2.classify_folder(fm, tmp_path / "test", tmp_path / "idx.csv", index_labels=True, quiet=True)
    idx = _read(tmp_path / "idx.csv")
    folders = sorted(p.name for p in orl_root.iterdir() if p.is_dir())  # ImageFolder's classes: all 40 folders
    assert [folders[int(r["label"])] for r in idx] == [r["label"] for r in rows]


@pytest.mark.slow
def test_hw2p2_pair_list_auc_matches_sklearn(tiny_run: Path, orl_root: Path, tmp_path: Path) -> None:
    lines = [f"s3{i}/{j}.pgm s3{i}/{j + 5}.pgm 1" for i in range(4) for j in (1, 2)]
    lines += [f"s3{i}/{j}.pgm s3{i + 1}/{j}.pgm 0" for i in range(4) for j in (1, 2)]
    (tmp_path / "val.txt").write_text("\n".join(lines) + "\n")
    r = hw2p2.score_pair_file(tiny_run, tmp_path / "val.txt", orl_root, tmp_path / "out", quiet=True)
    sub = _read(tmp_path / "out" / "pairs_submission.csv")
    assert [s["Id"] for s in sub] == [" ".join(ln.split()[:2]) for ln in lines]
    labels = [int(ln.split()[2]) for ln in lines]
    assert r["auc"] == pytest.approx(roc_auc_score(labels, [float(s["Category"]) for s in sub]), abs=1e-5)


def _identity_folders(orl_root: Path, root: Path, plan: dict[str, list[int]]) -> None:
    for ident, nums in plan.items():
        _copy(orl_root, root / ident, ident, nums, name="{n}.pgm")


@pytest.mark.slow
def test_cli_calibrate_then_identify_eval_and_pairs(tiny_run: Path, orl_root: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    _identity_folders(orl_root, tmp_path / "gallery", {f"s{i}": [1] for i in range(31, 36)})
    _identity_folders(orl_root, tmp_path / "probes", {f"s{i}": [2, 3] for i in range(31, 39)})
    assert main(["calibrate", str(tiny_run), "--quiet", "--open-objective", "open_set_accuracy"]) == 0
    thresholds = json.loads((tiny_run / "thresholds.json").read_text())
    assert set(thresholds["tasks"]) == {"verification", "identification"}
    assert main(["identify-eval", str(tiny_run), "--gallery", str(tmp_path / "gallery"), "--probes",
                 str(tmp_path / "probes"), "--out", str(tmp_path / "id"), "--quiet"]) == 0
    doc = json.loads((tmp_path / "id" / "identify.json").read_text())
    r = doc["identification"]
    assert (r["mated_searches"], r["non_mated_searches"]) == (10, 6)
    assert doc["threshold_source"] == "thresholds.json"
    assert r["at_threshold"]["threshold"] == thresholds["tasks"]["identification"]["threshold"]
    for f in ("identify.md", "identify_cmc.png", "identify_det.png"):
        assert (tmp_path / "id" / f).is_file()
    write_pairs_csv(tmp_path / "p.csv", [(f"s{i}/1.pgm", f"s{i}/2.pgm", True) for i in range(31, 41)]
                    + [(f"s{i}/1.pgm", f"s{i + 1}/2.pgm", False) for i in range(30, 40)])
    assert main(["pairs", str(tiny_run), "--pairs", str(tmp_path / "p.csv"), "--data", str(orl_root),
                 "--folds", "5", "--out", str(tmp_path / "pr"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "cosine" in out and "squared_l2" in out and "deepface" in out
    assert main(["pairs", str(tiny_run), "--pairs", str(tmp_path / "missing.csv")]) == 2


@pytest.mark.slow
def test_cli_pairs_reads_kaggle_csvs_like_the_lfw_txt(tiny_run: Path, orl_root: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The Kaggle match/mismatch CSVs (one given, its sibling found) and the LFW View 1 .txt of the same pairs give
    the same figures; images live where Kaggle keeps them (lfw-deepfunneled/lfw-deepfunneled/)."""
    images = tmp_path / "lfw-deepfunneled" / "lfw-deepfunneled"
    for i in range(31, 41):  # ORL images under LFW names: the gate reads them by content
        _copy(orl_root, images / f"P{i}", f"s{i}", [1, 2], name=f"P{i}_000{{n}}.jpg")
    matched = [(f"P{i}", "1", "2") for i in range(31, 41)]
    mismatched = [(f"P{i}", "1", f"P{i + 1}", "2") for i in range(31, 40)] + [("P40", "1", "P31", "2")]
    (tmp_path / "matchpairsDevTest.csv").write_text(
        "name,imagenum1,imagenum2\n" + "".join(",".join(r) + "\n" for r in matched))
    (tmp_path / "mismatchpairsDevTest.csv").write_text(
        "name,imagenum1,name,imagenum2\n" + "".join(",".join(r) + "\n" for r in mismatched))
    (tmp_path / "pairsDevTest.txt").write_text(
        "10\n" + "".join("\t".join(r) + "\n" for r in matched + mismatched))
    common = ["--folds", "5", "--scores", "cosine", "--quiet"]
    assert main(["pairs", str(tiny_run), "--pairs", str(tmp_path / "matchpairsDevTest.csv"), *common,
                 "--out", str(tmp_path / "k")]) == 0
    assert main(["pairs", str(tiny_run), "--pairs", str(tmp_path / "pairsDevTest.txt"), "--data", str(images),
                 *common, "--out", str(tmp_path / "t")]) == 0
    capsys.readouterr()
    kaggle = json.loads((tmp_path / "k" / "pairs.json").read_text())["scorers"]["cosine"]
    txt = json.loads((tmp_path / "t" / "pairs.json").read_text())["scorers"]["cosine"]
    assert kaggle["kfold"]["accuracy_mean"] == txt["kfold"]["accuracy_mean"]
    assert kaggle["verification"]["roc_auc"] == txt["verification"]["roc_auc"]
    assert kaggle["kfold"]["folds"] == 5
