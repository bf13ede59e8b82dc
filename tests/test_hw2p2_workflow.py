"""HW2P2 exactness: a synthetic tree in the assignment's layout, submissions numbered as ImageFolder numbers classes,
`facelab pairs --format hw2p2`, label-sorted fold warnings, and `facelab eval` on a run with nothing held out."""

from __future__ import annotations

import csv
import logging
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from runs_support import untrained_run

from facelab.cli import main
from facelab.config import SplitConfig, load_config, to_dict
from facelab.data import make_split, scan_folder
from facelab.data.given import given_manifest, load_given
from facelab.evaluation.pairs import read_pairs
from facelab.inference.model import load_model
from facelab.runs import build_model_and_loss, save_checkpoint

TINY = ["data.input_size=32", "data.batch_size=8", "data.cache_images=true", "model.width=8",
        "model.embedding_dim=16", "loss.options.scale=16", "threads=1", "eval.flip_tta=false"]
#: seven identities with VGGFace2-style names, deliberately not in ORL's or numeric order
IDS = {"n000002": "s5", "n000011": "s12", "n000100": "s3", "n000033": "s40", "n000057": "s21", "n000009": "s8",
       "n000412": "s30"}


def hw2p2_tree(orl_root: Path, root: Path) -> Path:
    """The assignment's layout: classification/{train,dev}/<id>/, classification/test/ (flat), and
    verification/{known/<id>/, unknown_dev/, unknown_test/, verification_dev.csv} (images 1-6 train, 7-8 dev,
    9 test, 10 unknown_test; known holds images 1-2; unknown_dev has image 7 of each plus 2 strangers)."""
    cls, ver = root / "classification", root / "verification"
    truth = []
    for k, (name, orl) in enumerate(IDS.items()):
        src = orl_root / orl
        for n in range(1, 11):
            dest = {**{i: cls / "train" / name for i in range(1, 7)}, 7: cls / "dev" / name, 8: cls / "dev" / name,
                    9: cls / "test", 10: ver / "unknown_test"}[n]
            dest.mkdir(parents=True, exist_ok=True)
            fname = f"{k:02d}{n:02d}.pgm" if n in (9, 10) else f"{n:04d}_01.pgm"
            shutil.copy(src / f"{n}.pgm", dest / fname)
        (ver / "known" / name).mkdir(parents=True)
        for n in (1, 2):
            shutil.copy(src / f"{n}.pgm", ver / "known" / name / f"{n:04d}_01.pgm")
        (ver / "unknown_dev").mkdir(exist_ok=True)
        shutil.copy(src / "7.pgm", ver / "unknown_dev" / f"d{k:02d}.pgm")
        truth.append((f"d{k:02d}.pgm", name))
    for j, stranger in enumerate(("s1", "s2")):
        shutil.copy(orl_root / stranger / "1.pgm", ver / "unknown_dev" / f"x{j}.pgm")
        truth.append((f"x{j}.pgm", "n000000"))
    with open(ver / "verification_dev.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["unknown_dev", "known"], *truth])
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _predicted_names(run: Path, images: list[Path]) -> list[str]:
    """The run's class for each image, from its class scores (the submission's label before numbering)."""
    fm = load_model(run)
    emb = fm.embedder(cache=False).embed_all(images)
    logits = fm.run.loss.logits(torch.from_numpy(emb))
    return [fm.run.manifest.classes[int(i)] for i in logits.argmax(1)]


@pytest.mark.slow
def test_hw2p2_submission_labels_are_image_folder_labels(orl_root: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from torchvision.datasets import ImageFolder

    root = hw2p2_tree(orl_root, tmp_path / "hw2p2")
    train_dir, test_dir = root / "classification" / "train", root / "classification" / "test"
    class_to_idx = ImageFolder(str(train_dir)).class_to_idx
    tests = sorted(test_dir.iterdir())
    sets = [x for kv in [*TINY, "optim.epochs=2"] for x in ("--set", kv)]
    # a given split: --train/--val are the assignment's folders
    run = tmp_path / "given"
    assert main(["train", "--train", str(train_dir), "--val", str(root / "classification" / "dev"), "--init",
                 "none", "--out", str(run), "--quiet", *sets]) == 0
    assert main(["hw2p2", "classify", str(run), "--test", str(test_dir), "--out", str(tmp_path / "sub.csv"),
                 "--index-labels", "--quiet"]) == 0
    rows = _rows(tmp_path / "sub.csv")
    assert [r["id"] for r in rows] == [p.name for p in tests]
    assert [int(r["label"]) for r in rows] == [class_to_idx[n] for n in _predicted_names(run, tests)]

    # a seeded split holding 2 identities out, the first class folder among them, so that every trained class's
    # index in the run differs from ImageFolder's: the submission must still use ImageFolder's
    seed = next(s for s in range(100) if sorted(IDS)[0] in make_split(
        scan_folder(train_dir, verify=False), SplitConfig(seed=s, open_identities=2)).open_identities)
    seeded = tmp_path / "seeded"
    assert main(["train", "--data", str(train_dir), "--init", "none", "--out", str(seeded), "--quiet", *sets,
                 "--set", "data.split.open_identities=2", "--set", f"data.split.seed={seed}"]) == 0
    capsys.readouterr()
    assert main(["hw2p2", "classify", str(seeded), "--test", str(test_dir), "--out", str(tmp_path / "s.csv"),
                 "--index-labels", "--quiet"]) == 0
    assert "2 of the training folder's 7 classes were not trained on" in capsys.readouterr().out
    names = _predicted_names(seeded, tests)
    labels = [int(r["label"]) for r in _rows(tmp_path / "s.csv")]
    assert labels == [class_to_idx[n] for n in names]
    manifest_index = load_model(seeded).run.manifest.classes
    assert all(y != manifest_index.index(n) for y, n in zip(labels, names, strict=True))

    # known/unknown verification: one row per unknown_test image, a known identity or n000000
    assert main(["hw2p2", "verify", str(run), "--root", str(root / "verification"), "--out",
                 str(tmp_path / "ver"), "--quiet"]) == 0
    sub = _rows(tmp_path / "ver" / "submission.csv")
    assert [r["id"] for r in sub] == sorted(p.name for p in (root / "verification" / "unknown_test").iterdir())
    assert {r["label"] for r in sub} <= {*IDS, "n000000"}


@pytest.fixture(scope="module")
def untrained_orl_run(tmp_path_factory: pytest.TempPathFactory, orl_root: Path) -> Path:
    """An untrained checkpoint on ORL (30 training identities, 10 unseen): fast and deterministic."""
    return untrained_run(tmp_path_factory.mktemp("run"), orl_root, [*TINY, "data.split.open_identities=10"])


def test_classify_index_labels_follow_image_folder_not_the_run(untrained_orl_run: Path, orl_root: Path,
                                                               tmp_path: Path) -> None:
    from torchvision.datasets import ImageFolder

    from facelab.evaluation import hw2p2

    fm = load_model(untrained_orl_run)
    test = tmp_path / "test" / "images"  # test/<one folder>/ is read through
    test.mkdir(parents=True)
    for ident in fm.run.manifest.classes[:6]:
        shutil.copy(orl_root / ident / "1.pgm", test / f"{ident}.pgm")
    names = hw2p2.classify_folder(fm, tmp_path / "test", tmp_path / "names.csv", quiet=True)
    assert names["images"] == 6
    doc = hw2p2.classify_folder(fm, tmp_path / "test", tmp_path / "idx.csv", index_labels=True, quiet=True)
    assert doc["grader_classes"] == 40 and doc["never_predicted"] == 10
    class_to_idx = ImageFolder(str(orl_root)).class_to_idx
    assert [int(r["label"]) for r in _rows(tmp_path / "idx.csv")] == \
        [class_to_idx[r["label"]] for r in _rows(tmp_path / "names.csv")]


def test_pairs_format_hw2p2_on_the_command_line(untrained_orl_run: Path, orl_root: Path, tmp_path: Path) -> None:
    lines = [f"s3{i}/{j}.pgm s3{i}/{j + 5}.pgm 1" for i in range(1, 9) for j in (1, 2)]
    lines += [f"s3{i}/{j}.pgm s3{i + 1}/{j}.pgm 0" for i in range(1, 9) for j in (1, 2)]
    order = np.random.default_rng(0).permutation(len(lines))
    (tmp_path / "verification_pairs_val.txt").write_text("\n".join(lines[i] for i in order) + "\n")
    pl = read_pairs(tmp_path / "verification_pairs_val.txt", orl_root, "hw2p2", folds=4)
    assert len(pl) == 32 and int(pl.labels.sum()) == 16
    assert main(["pairs", str(untrained_orl_run), "--pairs", str(tmp_path / "verification_pairs_val.txt"), "--format",
                 "hw2p2", "--data", str(orl_root), "--scores", "cosine", "--folds", "4", "--out",
                 str(tmp_path / "rep"), "--quiet", "--no-cache"]) == 0
    assert (tmp_path / "rep" / "pairs.json").is_file()


def test_label_sorted_folds_are_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [f"a{i}.jpg,b{i}.jpg,1\n" for i in range(20)] + [f"c{i}.jpg,d{i}.jpg,0\n" for i in range(20)]
    (tmp_path / "sorted.csv").write_text("img1,img2,label\n" + "".join(rows))
    (tmp_path / "mixed.csv").write_text("img1,img2,label\n" + "".join(r for pair in zip(rows[:20], rows[20:],
                                                                                       strict=True) for r in pair))
    (tmp_path / "sorted.bin").write_bytes(pickle.dumps(([b"x"] * 40, [True] * 10 + [False] * 10), protocol=2))
    with caplog.at_level(logging.WARNING, logger="facelab.evaluation.pairs"):
        read_pairs(tmp_path / "mixed.csv")
        assert not caplog.records
        read_pairs(tmp_path / "sorted.csv")
        read_pairs(tmp_path / "sorted.bin")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "sorted.csv: 10 of 10 folds hold pairs of one class only" in messages[0]
    assert "add a fold column" in messages[0]
    assert "sorted.bin: 10 of 10 folds" in messages[1]


def test_eval_of_a_run_with_nothing_held_out_is_one_line(orl_root: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_config(None, [*TINY, f"data.train={orl_root}"])
    manifest = given_manifest(load_given(orl_root, verify=False), None)
    backbone, loss = build_model_and_loss(cfg, manifest.num_classes)
    save_checkpoint(tmp_path / "checkpoint.pt", {"epoch": 1, "config": to_dict(cfg), "manifest": manifest.to_dict(),
                                                 "model": backbone.state_dict(), "loss": loss.state_dict(),
                                                 "optimizer": {}, "scheduler": {}, "history": []})
    assert main(["eval", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "has no held-out images to score: it was trained on a given split without a validation set" in err


def test_the_hw2p2_recipe_is_valid_and_names_the_assignments_folders() -> None:
    from facelab.config import load_config
    from facelab.data.batch_augment import batchable
    from facelab.engine.trainer import _validate

    repo = Path(__file__).resolve().parents[1]
    cfg = load_config(repo / "configs" / "hw2p2.yaml")
    _validate(cfg, 1)
    assert (cfg.data.train, cfg.data.val) == ("hw2p2/classification/train", "hw2p2/classification/dev")
    assert cfg.init.model == "" and cfg.validation.metric == "val_acc" and cfg.validation.patience > 0
    assert cfg.data.pipeline == "fast" and batchable(cfg.data)
    strong = load_config(repo / "configs" / "augment_strong.yaml")
    _validate(strong, 1)
    assert len(strong.data.augment) == 7
