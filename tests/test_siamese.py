"""Siamese training on pair lists: the pair losses against float64 formulas, refusals, and a tiny end-to-end run
whose bundle and held-out report are the standard ones."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import facelab
from facelab.cli import main
from facelab.config import load_pair_config
from facelab.errors import FacelabError
from facelab.losses.siamese import PAIR_LOSSES, ContrastivePairLoss, LogisticPairLoss
from facelab.siamese import train_siamese

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def embeddings(seed: int = 0, n: int = 6, d: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64),
            torch.tensor([1, 0, 1, 1, 0, 0][:n], dtype=torch.float64))


@pytest.mark.parametrize("distance", ["l1", "sq"])
def test_logistic_pair_loss_is_a_weighted_distance_through_a_sigmoid(distance: str) -> None:
    e1, e2, same = embeddings()
    loss = LogisticPairLoss(8, distance).double()
    with torch.no_grad():
        loss.fc.weight.copy_(torch.linspace(-2, 1, 8, dtype=torch.float64))
        loss.fc.bias.fill_(0.3)
    out = loss(e1, e2, same)
    a = e1.numpy() / np.linalg.norm(e1.numpy(), axis=1, keepdims=True)
    b = e2.numpy() / np.linalg.norm(e2.numpy(), axis=1, keepdims=True)
    dist = np.abs(a - b) if distance == "l1" else (a - b) ** 2
    z = dist @ np.linspace(-2, 1, 8) + 0.3
    p = 1 / (1 + np.exp(-z))
    y = same.numpy()
    bce = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    np.testing.assert_allclose(out.logits.detach().numpy(), z, rtol=1e-12)
    assert out.loss.item() == pytest.approx(bce, rel=1e-12)
    out.loss.backward()
    assert loss.fc.weight.grad is not None and loss.fc.weight.grad.abs().sum() > 0


def test_logistic_head_starts_at_alike_when_close() -> None:
    loss = LogisticPairLoss(128, "l1")
    g = torch.Generator().manual_seed(0)
    e = torch.randn(64, 128, generator=g)
    close = loss.logits(e, e + 0.05 * torch.randn(64, 128, generator=g))
    far = loss.logits(e, torch.randn(64, 128, generator=g))
    assert (close > 0).all() and (far < 0).all()


def test_contrastive_pair_loss_formula() -> None:
    e1, e2, same = embeddings(1)
    out = ContrastivePairLoss(8, margin=0.6, pos_margin=0.1)(e1, e2, same)
    cos = (e1 * e2).sum(1) / (e1.norm(dim=1) * e2.norm(dim=1))
    d = (1 - cos).numpy()
    y = same.numpy().astype(bool)
    expected = np.where(y, np.maximum(d - 0.1, 0), np.maximum(0.6 - d, 0)).mean()
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(out.logits.numpy(), 0.35 - d, rtol=1e-12)
    with pytest.raises(FacelabError, match="pos_margin < margin"):
        ContrastivePairLoss(8, margin=0.1, pos_margin=0.2)
    assert set(PAIR_LOSSES.names()) == {"l1", "sq", "contrastive"}


def pair_csv(root: Path, path: Path, labelled: bool = True) -> Path:
    """4 folds x (6 same + 6 different) pairs over the identity folders under ``root``."""
    ids = sorted(p.name for p in root.iterdir())
    rng = np.random.default_rng(0)
    rows = []
    for fold in range(1, 5):
        for _ in range(6):
            who = ids[rng.integers(len(ids))]
            i, j = rng.choice(10, 2, replace=False) + 1
            rows.append((f"{who}/{i}.pgm", f"{who}/{j}.pgm", 1, fold))
            a, b = rng.choice(len(ids), 2, replace=False)
            rows.append((f"{ids[a]}/{rng.integers(1, 11)}.pgm", f"{ids[b]}/{rng.integers(1, 11)}.pgm", 0, fold))
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["img1", "img2", "label", "fold"] if labelled else ["img1", "img2"])
        w.writerows(rows if labelled else [r[:2] for r in rows])
    return path


TINY = ["data.input_size=32", "data.batch_size=8", "data.cache_images=true", "model.width=8",
        "model.embedding_dim=16", "optim.epochs=2", "optim.lr=0.05", "optim.warmup_epochs=0", "threads=1",
        "train_folds=[1, 2]"]


def test_refusals(small_faces: Path, tmp_path: Path) -> None:
    pairs = pair_csv(small_faces, tmp_path / "pairs.csv")
    base = [f"pairs={pairs}", f"data.root={small_faces}", f"out_dir={tmp_path / 'run'}", *TINY]
    with pytest.raises(FacelabError, match=r"train_folds \[7\] must be folds of pairs.csv, which has \[1, 2, 3, 4\]"):
        train_siamese(load_pair_config(None, [*base, "train_folds=[7]"]), quiet=True)
    with pytest.raises(FacelabError, match="leave fewer than 2 of the 4 folds"):
        train_siamese(load_pair_config(None, [*base, "train_folds=[1, 2, 3]"]), quiet=True)
    with pytest.raises(FacelabError, match="unknown pair loss 'hinge'"):
        train_siamese(load_pair_config(None, [*base, "loss=hinge"]), quiet=True)
    unlabelled = pair_csv(small_faces, tmp_path / "u.csv", labelled=False)
    with pytest.raises(FacelabError, match="has no labels"):
        train_siamese(load_pair_config(None, [*base, f"pairs={unlabelled}"]), quiet=True)
    with pytest.raises(FacelabError, match="unknown config key 'epochs'"):
        load_pair_config(None, ["epochs=3"])


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["l1", "contrastive"])
def test_tiny_siamese_run_end_to_end(small_faces: Path, tmp_path: Path, loss: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    pairs = pair_csv(small_faces, tmp_path / "pairs.csv")
    run = tmp_path / "run"
    assert main(["siamese", str(pairs), "--data", str(small_faces), "--out", str(run), "--loss", loss, "--json",
                 "--quiet", *itertools.chain.from_iterable(("--set", s) for s in TINY)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0 <= out["head_accuracy"] <= 1 and 0 <= out["cosine_roc_auc"] <= 1
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history["history"]] == [1, 2]
    assert history["train_pairs"] == 24 and history["test_pairs"] == 24
    test_rows = list(csv.DictReader((run / "test_pairs.csv").open()))
    assert {r["fold"] for r in test_rows} == {"3", "4"} and len(test_rows) == 24
    assert (run / "pair_head.safetensors").is_file() == (loss == "l1")
    model = facelab.load(run / "model.safetensors")  # a standard bundle
    assert model.embedding_dim == 16 and model.spec.input_size == 32
    report = json.loads((run / "test" / "pairs.json").read_text())
    assert report["scorers"]["cosine"]["verification"]["roc_auc"] == pytest.approx(out["cosine_roc_auc"])
