"""Given splits (--train/--val, list files), per-epoch validation, best.pt, early stopping and resume of the best."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from facelab.cli import main
from facelab.config import TrainConfig, load_config
from facelab.data.given import given_manifest, load_given
from facelab.engine import train
from facelab.engine.validation import BestTracker, roc_auc
from facelab.errors import FacelabError
from facelab.evaluation.pairs import validation_pairs
from facelab.runs import load_checkpoint

TINY = [
    "data.input_size=64", "data.batch_size=16", "data.cache_images=true", "model.width=8",
    "model.embedding_dim=32", "loss.options.scale=16", "optim.epochs=3", "threads=1",
]


def make_split_tree(orl_root: Path, dest: Path, ids: int = 6, val_per_id: int = 2) -> tuple[Path, Path]:
    """DEST/train/<id>/ and DEST/val/<id>/ from ORL (ids in an order that is not sorted, plus an empty class and a
    stray file, as a real tree has)."""
    train, val = dest / "train", dest / "val"
    names = [f"s{i}" for i in (10, 2, 33, 1, 7, 21, 5, 40)[:ids]]
    for name in names:
        images = sorted((orl_root / name).glob("*.pgm"))
        for k, img in enumerate(images):
            target = (val if k < val_per_id else train) / f"id_{name}"
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(img, target / img.name)
    (train / "id_empty").mkdir()  # a class folder with no image is still a class for ImageFolder
    (train / "id_s10" / "notes.txt").write_text("not an image")
    return train, val


def tiny(out: Path, *extra: str) -> TrainConfig:
    return load_config(None, [*TINY, f"out_dir={out}", *extra])


# ------------------------------------------------------------------------------------------------- labels and lists

def test_folder_labels_are_image_folder_labels(orl_root: Path, tmp_path: Path) -> None:
    from torchvision.datasets import ImageFolder

    train, val = make_split_tree(orl_root, tmp_path)
    ref = ImageFolder(str(train), allow_empty=True)
    given = load_given(train)
    assert given.classes == ref.classes
    manifest = given_manifest(given, load_given(val))
    assert {c: i for i, c in enumerate(manifest.classes)} == ref.class_to_idx
    expected = sorted((Path(p).relative_to(tmp_path).as_posix(), y) for p, y in ref.samples)
    assert sorted(manifest.train) == expected
    val_ref = ImageFolder(str(val))  # val has no empty class: indices must still follow the training classes
    assert val_ref.class_to_idx != ref.class_to_idx
    assert sorted(manifest.closed_test) == sorted(
        (Path(p).relative_to(tmp_path).as_posix(), ref.class_to_idx[val_ref.classes[y]]) for p, y in val_ref.samples)
    assert manifest.report["empty_classes"] == ["id_empty"]
    assert manifest.open_test == [] and manifest.open_identities == []


def test_list_files_csv_and_text(orl_root: Path, tmp_path: Path) -> None:
    train, _ = make_split_tree(orl_root, tmp_path)
    rows = [(p.relative_to(tmp_path).as_posix(), p.parent.name) for p in sorted(train.rglob("*.pgm"))]
    (tmp_path / "train.csv").write_text("path,label\n" + "".join(f"{p},{y}\n" for p, y in rows))
    (tmp_path / "train.txt").write_text("".join(f"{p} {y}\n" for p, y in rows))
    a, b = load_given(tmp_path / "train.csv"), load_given(tmp_path / "train.txt")
    assert a.items == b.items == rows
    assert a.classes == sorted({y for _, y in rows})  # names: sorted, like folders (no empty class in a list)
    # integer labels are the class indices themselves (not sorted as strings: "10" after "9")
    (tmp_path / "idx.txt").write_text(f"{rows[0][0]} 10\n{rows[1][0]} 9\n{rows[2][0]} 0\n")
    idx = load_given(tmp_path / "idx.txt")
    m = given_manifest(idx, None)
    assert len(m.classes) == 11 and [y for _, y in m.train] == [10, 9, 0]


def test_list_and_split_errors_are_one_line(orl_root: Path, tmp_path: Path) -> None:
    train_dir, val = make_split_tree(orl_root, tmp_path)
    (tmp_path / "missing.txt").write_text("train/id_s1/nope.pgm id_s1\n")
    with pytest.raises(FacelabError, match=r"1 of 1 images listed in .*missing.txt are missing"):
        load_given(tmp_path / "missing.txt")
    (tmp_path / "bad.csv").write_text("file,who\nx.pgm,a\n")
    with pytest.raises(FacelabError, match=r"bad.csv:1: header must name a path column"):
        load_given(tmp_path / "bad.csv")
    (tmp_path / "escape.txt").write_text("../x.pgm a\n")
    with pytest.raises(FacelabError, match=r"escape.txt:1: .*leaves the data folder"):
        load_given(tmp_path / "escape.txt")
    shutil.copytree(val / "id_s1", val / "id_stranger")
    with pytest.raises(FacelabError, match=r"1 class\(es\) the training set .* does not \(first: id_stranger\)"):
        given_manifest(load_given(train_dir), load_given(val))
    with pytest.raises(FacelabError, match=r"data\.val' needs a given training set"):
        train_cfg = tiny(tmp_path / "r", f"data.val={val}", f"data.root={train_dir}")
        train(train_cfg, quiet=True)


def test_validation_config_is_checked(tmp_path: Path) -> None:
    from facelab.config import validate

    for override, message in [("validation.metric=val_f1", "validation.metric' must be one of"),
                              ("validation.patience=-1", "validation.patience' must be >= 0"),
                              ("validation.metric=val_auc", "no pair list is given"),
                              ("validation.min_delta=-0.1", "validation.min_delta' must be >= 0")]:
        with pytest.raises(FacelabError, match=message):
            validate(tiny(tmp_path, override))
    with pytest.raises(FacelabError, match=r"unknown config key 'validation\.patinece'"):
        tiny(tmp_path, "validation.patinece=3")


# ----------------------------------------------------------------------------------------------- metric arithmetic

def test_roc_auc_matches_scikit_learn() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    same = rng.random(500) < 0.4
    scores = np.round(rng.normal(same * 0.8, 1.0), 1)  # rounded: many ties
    assert roc_auc(scores, same) == pytest.approx(roc_auc_score(same, scores), abs=1e-12)
    assert roc_auc(np.array([0.1, 0.9]), np.array([False, True])) == 1.0
    with pytest.raises(FacelabError):
        roc_auc(np.array([0.1, 0.2]), np.array([True, True]))


def test_best_tracker_direction_min_delta_and_patience() -> None:
    t = BestTracker("val_acc", patience=2, min_delta=0.01)
    assert [t.update(e, v) for e, v in enumerate([0.5, 0.6, 0.605], 1)] == [True, True, False]
    assert not t.stopped
    assert t.update(4, 0.609) is False  # gains of at most 0.01 over 0.6: two epochs without improvement
    assert t.epoch == 2 and t.stopped
    lower = BestTracker("val_loss")
    assert [lower.update(e, v) for e, v in enumerate([2.0, 1.5, 1.7, None, 1.0], 1)] == [True, True, False, False,
                                                                                       True]
    assert lower.epoch == 5 and not lower.stopped
    again = BestTracker("val_loss")
    again.load(lower.state())
    assert again.state() == lower.state()
    with pytest.raises(FacelabError, match="chose its best epoch by val_loss"):
        BestTracker("val_acc").load(lower.state())


# --------------------------------------------------------------------------------------------------------- training

def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_best_checkpoint_is_the_best_validated_epoch(orl_root: Path, tmp_path: Path) -> None:
    train_dir, val_dir = make_split_tree(orl_root, tmp_path / "data")
    out = tmp_path / "run"
    result = train(tiny(out, f"data.train={train_dir}", f"data.val={val_dir}", "optim.epochs=4"), quiet=True)
    hist = _history(out)
    assert len(hist) == 4 and all(h["val_acc"] is not None and h["val_loss"] is not None for h in hist)
    best_epoch = int(np.argmax([h["val_acc"] for h in hist])) + 1  # the first of equal maxima: strict improvement
    best = load_checkpoint(out / "best.pt")
    assert best["epoch"] == best_epoch == hist[-1]["best_epoch"]
    assert best["best"]["value"] == pytest.approx(max(h["val_acc"] for h in hist))
    last = load_checkpoint(result.checkpoint)
    assert last["epoch"] == 4
    if best_epoch != 4:
        assert any(not torch.equal(best["model"][k], last["model"][k]) for k in best["model"])
    assert (out / "training_curves.png").stat().st_size > 0
    # the run's classes are the ImageFolder classes, and facelab eval scores the given validation set
    assert best["manifest"]["classes"][0] == "id_empty"
    from facelab.evaluation.protocol import evaluate

    metrics = evaluate(out / "best.pt", flip=False, quiet=True)  # validation embeds without flip TTA by default
    assert metrics["closed_set"]["images"] == 12
    assert metrics["closed_set"]["top1"] == pytest.approx(best["best"]["value"], abs=1e-6)


@pytest.mark.slow
def test_early_stopping_stops_and_resume_keeps_the_best(orl_root: Path, tmp_path: Path) -> None:
    train_dir, val_dir = make_split_tree(orl_root, tmp_path / "data")
    # an improvement must exceed 1.0 in accuracy: only epoch 1 ever counts as best, so patience 2 stops after 3
    stop = [f"data.train={train_dir}", f"data.val={val_dir}", "optim.epochs=10", "validation.patience=2",
            "validation.min_delta=1.0"]
    result = train(tiny(tmp_path / "stop", *stop), quiet=True)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    state = load_checkpoint(result.checkpoint)
    assert state["best"] == {"metric": "val_acc", "value": pytest.approx(result.history[0]["val_acc"]),
                             "epoch": 1, "bad_epochs": 2, "stopped": True}
    assert load_checkpoint(tmp_path / "stop" / "best.pt")["epoch"] == 1
    assert (tmp_path / "stop" / "training_curves.png").is_file()
    again = train(tiny(tmp_path / "stop", *stop), resume=True, quiet=True)  # a stopped run stays stopped
    assert len(again.history) == 3

    # resume keeps the best: stop after 2 epochs, resume to 4; best.pt is untouched (epoch 1) by the later epochs
    keep = [f"data.train={train_dir}", f"data.val={val_dir}", "optim.epochs=4", "validation.min_delta=1.0"]
    cfg = tiny(tmp_path / "keep", *keep)
    train(cfg, quiet=True, stop_after_epochs=2)
    before = (tmp_path / "keep" / "best.pt").read_bytes()
    resumed = train(cfg, resume=True, quiet=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert (tmp_path / "keep" / "best.pt").read_bytes() == before
    assert load_checkpoint(resumed.checkpoint)["best"]["epoch"] == 1
    assert [h["best_epoch"] for h in _history(tmp_path / "keep")] == [1, 1, 1, 1]


@pytest.mark.slow
def test_cli_given_split_with_validation_pairs(orl_root: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    train_dir, val_dir = make_split_tree(orl_root, tmp_path / "data", ids=4)
    # a labelled pair list over the validation images (img1,img2,label CSV)
    imgs = sorted(p.relative_to(val_dir).as_posix() for p in val_dir.rglob("*.pgm"))
    rows = [(a, b, a.split("/")[0] == b.split("/")[0]) for i, a in enumerate(imgs) for b in imgs[i + 1:]]
    (val_dir / "pairs.csv").write_text("img1,img2,label\n" + "".join(f"{a},{b},{int(s)}\n" for a, b, s in rows))
    out = tmp_path / "run"
    args = ["train", "--train", str(train_dir), "--val", str(val_dir), "--val-pairs", str(val_dir / "pairs.csv"),
            "--init", "none", "--out", str(out), "--epochs", "2", "--quiet",
            *[x for kv in TINY if not kv.startswith("optim.epochs") for x in ("--set", kv)]]
    assert main(args) == 0
    hist = _history(out)
    assert all(0 <= h["val_auc"] <= 1 and h["val_acc"] is not None for h in hist)
    state = load_checkpoint(out / "best.pt")
    assert state["best"]["metric"] == "val_auc"
    assert state["config"]["validation"]["pairs"] == str(val_dir / "pairs.csv")
    # the AUC the trainer logged is the one the evaluation package computes from the same embeddings' definition
    pairs = validation_pairs(str(val_dir / "pairs.csv"))
    assert int(pairs.labels.sum()) == sum(s for *_, s in rows)
