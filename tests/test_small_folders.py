"""Photo folders as people really have them: a few photos per identity. The split keeps enough of each identity to
train on, pair/triplet losses get P x K batches or stop before the first step with one line, and an epoch that
learns nothing (loss exactly 0 in every batch) stops the run instead of being logged as training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facelab.cli import main
from facelab.config import SplitConfig, load_config, load_yaml
from facelab.data import make_split, scan_folder
from facelab.data.splits import closed_hold_out
from facelab.demo import bundled_faces, demo_config_path
from facelab.engine import train
from facelab.errors import FacelabError
from facelab.losses import LOSSES, FaceLoss, LossOutput
from facelab.losses.base import register_loss, zero_loss

TINY = ["data.input_size=32", "model.width=8", "model.embedding_dim=16", "optim.epochs=2", "threads=1",
        "eval.flip_tta=false"]


def write_folder(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """``counts[identity]`` PNG photos per identity: a per-identity pattern plus noise, so identities differ."""
    rng = np.random.default_rng(seed)
    for ident, n in counts.items():
        base = rng.integers(0, 256, (8, 8, 3))
        for i in range(n):
            pixels = np.kron(base, np.ones((5, 5, 1))) + rng.normal(0, 20, (40, 40, 3))
            (root / ident).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / ident / f"{i:02d}.png")
    return root


@pytest.fixture()
def twelve_by_three(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "faces", {f"id{i:02d}": 3 for i in range(12)})


# -- the split ------------------------------------------------------------------------------------------------------
def test_closed_hold_out_never_takes_more_than_a_third_and_leaves_two() -> None:
    cfg = SplitConfig()  # closed_images_per_identity=2, at most a third, at least 2 left
    for n in range(2, 40):
        expected = max(0, min(2, n // 3, n - 2))  # integer arithmetic, independent of the float fraction
        assert closed_hold_out(n, cfg) == expected, n
    assert [closed_hold_out(n, SplitConfig(closed_images_per_identity=5)) for n in (9, 12, 15, 30)] == [3, 4, 5, 5]
    old_rule = SplitConfig(closed_max_fraction=0.99, min_train_images=1)
    assert [closed_hold_out(n, old_rule) for n in (3, 4, 10)] == [2, 2, 2]


def test_small_identities_keep_their_photos_for_training_and_the_report_says_so(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "f", {"big": 10, "six": 6, "three": 3, "two": 2})
    m = make_split(scan_folder(root), SplitConfig(open_identities=0))
    per_identity = {name: (sum(1 for _, y in m.train if y == i), sum(1 for _, y in m.closed_test if y == i))
                    for i, name in enumerate(m.classes)}
    assert per_identity == {"big": (8, 2), "six": (4, 2), "three": (2, 1), "two": (2, 0)}
    assert m.report["closed_capped"] == [["three", 1, 3], ["two", 0, 2]]
    m.save(tmp_path / "split.json")
    assert json.loads((tmp_path / "split.json").read_text())["report"]["closed_capped"][0] == ["three", 1, 3]
    with pytest.raises(FacelabError, match=r"config key 'data.split.closed_max_fraction' must be in \[0, 1\)"):
        make_split(scan_folder(root), SplitConfig(closed_max_fraction=1.5))


def test_demo_split_is_unchanged_by_the_caps() -> None:
    """ORL (10 images each, 2 held out) never reaches either cap: the demo's split -- and its figures -- stand."""
    demo = load_config(demo_config_path(), base={"data": {"root": str(bundled_faces())}})
    folder = scan_folder(bundled_faces(), verify=False)
    now = make_split(folder, demo.data.split)
    uncapped = make_split(folder, SplitConfig(**{**vars(demo.data.split), "closed_max_fraction": 0.99,
                                                 "min_train_images": 1}))
    assert now.train == uncapped.train and now.closed_test == uncapped.closed_test
    assert now.open_identities == uncapped.open_identities and now.report["closed_capped"] == []
    assert (len(now.train), len(now.closed_test), len(now.open_test)) == (240, 60, 100)
    assert load_yaml(demo_config_path())["data"]["split"]["closed_images_per_identity"] == 2


# -- pair/triplet losses on 12 identities x 3 photos ------------------------------------------------------------------
@pytest.mark.slow
def test_triplet_on_twelve_by_three_trains_on_pk_batches(twelve_by_three: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_config(None, [*TINY, f"data.root={twelve_by_three}", f"out_dir={tmp_path / 'run'}",
                             "loss.name=triplet"])
    result = train(cfg)
    err = capsys.readouterr().err
    assert "batches: 9 identities x 2 images (loss 'triplet' needs 2 identities x 2 images each)" in err
    assert "held out fewer than 2 closed-set images of 9 identities" in err
    assert len(result.history) == 2 and all(h["loss"] > 0 for h in result.history)


def test_triplet_on_a_split_leaving_one_photo_stops_before_the_first_step(twelve_by_three: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    old_split = ["data.split.min_train_images=1", "data.split.closed_max_fraction=0.9"]  # 2 of 3 held out
    code = main(["train", "--data", str(twelve_by_three), "--out", str(run), "--loss", "triplet", "--quiet",
                 *(f"--set={o}" for o in [*TINY, *old_split])])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("facelab: error: loss 'triplet' learns from 2 images of an identity in a batch, but 9 of 9 "
                          "training identities have fewer training images")
    assert "data.split.min_train_images=2" in err
    assert not (run / "checkpoint.pt").exists() and not (run / "metrics.jsonl").exists()


# -- an epoch with nothing to learn ------------------------------------------------------------------------------------
class _NothingToLearn(FaceLoss):
    """Test loss: exact 0 that still backpropagates, reporting ``terms`` pair/triplet terms per batch."""

    terms = 0

    def __init__(self, embedding_dim: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        return LossOutput(zero_loss(embeddings), terms=self.terms)


class _AllMarginsMet(_NothingToLearn):
    terms = 6


@pytest.fixture()
def zero_losses() -> object:
    register_loss("test_no_pairs", _NothingToLearn)
    register_loss("test_margins_met", _AllMarginsMet)
    yield
    for name in ("test_no_pairs", "test_margins_met"):
        LOSSES._items.pop(name)


@pytest.mark.parametrize(("loss", "why"), [("test_no_pairs", "no batch held a valid pair or triplet"),
                                           ("test_margins_met", "every term already meets its margin")])
def test_an_epoch_of_exact_zero_loss_stops_the_run(twelve_by_three: Path, tmp_path: Path, zero_losses: object,
                                                   loss: str, why: str) -> None:
    cfg = load_config(None, [*TINY, f"data.root={twelve_by_three}", f"out_dir={tmp_path / 'run'}",
                             f"loss.name={loss}", "loss.options={}", "data.batch_size=4"])
    with pytest.raises(FacelabError) as info:
        train(cfg, quiet=True)
    msg = str(info.value)
    assert msg.startswith(f"loss '{loss}' was exactly 0 in every batch of epoch 1: ") and why in msg
    assert "no checkpoint was written" in msg and "\n" not in msg
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_mid_epoch_sums_from_an_older_checkpoint_never_make_an_epoch_look_empty() -> None:
    from facelab.engine.trainer import EpochTally

    old = EpochTally.from_list([3.0, 2.0, 8.0, 0.0], seconds=1.5)  # 4 sums: written before the zero-loss check
    assert (old.nonzero, old.terms, old.counted, old.seconds) == (1.0, 0.0, 0.0, 1.5)
    new = EpochTally(0.0, 0.0, 8.0, 8.0, 0.0, 0.0, 2.0)
    assert EpochTally.from_list(new.as_list(), seconds=0.0).as_list() == new.as_list()
