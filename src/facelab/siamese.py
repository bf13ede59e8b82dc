"""``facelab siamese``: train a siamese network on a labelled pair list and test it on the held-out folds.

One backbone embeds both images of every pair (shared weights); a pair loss (:mod:`facelab.losses.siamese`:
``l1`` / ``sq`` -- a learned weighted sum of the distance vector and a sigmoid, trained with binary cross-entropy --
or ``contrastive``) compares the two embeddings. This is the siamese set-up of DeepFace (Taigman et al. 2014,
section 4.2) and of the course lectures, trained on an explicit pair list instead of identity folders: LFW's
``pairs.txt`` (folds 1-5 train, 6-10 test by default) or a CSV ``img1,img2,label[,fold]``.

The run folder holds::

    RUN/config.yaml              the PairTrainConfig
    RUN/model.safetensors        the backbone as a facelab bundle (usable by verify / pairs / serve / cluster)
    RUN/pair_head.safetensors    the learned pair head (l1 / sq), for the head's own decisions
    RUN/train_pairs.csv          the training pairs, RUN/test_pairs.csv the held-out ones (img1,img2,label,fold)
    RUN/history.json             per-epoch loss and training pair accuracy; the held-out scores

Testing uses the same pair-list evaluation as every model (``facelab pairs``: cosine score of the embeddings,
k-fold accuracy over the held-out folds, ROC) on RUN/test_pairs.csv, and also reports the head's own accuracy
(logit > 0) on those pairs.
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from facelab.config import PairTrainConfig, save_yaml, to_dict
from facelab.data.dataset import FaceDataset
from facelab.data.transforms import train_transform
from facelab.engine.optim import build_optimizer, build_scheduler
from facelab.engine.trainer import seed_everything
from facelab.errors import FacelabError
from facelab.evaluation.pairs import PairList, evaluate_pairs, read_pairs
from facelab.faces.cache import reader_for
from facelab.inference.model import FaceModel
from facelab.inference.spec import InputSpec
from facelab.losses.siamese import PAIR_LOSSES
from facelab.models import build_backbone
from facelab.utils.device import loader_workers, resolve_device
from facelab.utils.io import atomic_open, write_json

BUNDLE, HEAD, TRAIN_CSV, TEST_CSV, HISTORY = ("model.safetensors", "pair_head.safetensors", "train_pairs.csv",
                                              "test_pairs.csv", "history.json")


class PairDataset(Dataset[tuple[torch.Tensor, torch.Tensor, float]]):
    """Pairs ``(first[i], second[i], same[i])`` over a :class:`FaceDataset` of the distinct images."""

    def __init__(self, images: FaceDataset, first: np.ndarray, second: np.ndarray, same: np.ndarray) -> None:
        self.images, self.first, self.second, self.same = images, first, second, same

    def __len__(self) -> int:
        return len(self.first)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        return self.images[int(self.first[i])][0], self.images[int(self.second[i])][0], float(self.same[i])


@dataclass
class SiameseResult:
    out_dir: Path
    bundle: Path
    history: list[dict[str, Any]]
    test: dict[str, Any]
    seconds: float


def _subset(pairs: PairList, mask: np.ndarray) -> tuple[list[Path], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The distinct images of the pairs in ``mask`` and the pairs re-indexed into them (+ labels, folds)."""
    idx = np.nonzero(mask)[0]
    used = np.unique(np.concatenate([pairs.first[idx], pairs.second[idx]]))
    remap = {int(old): new for new, old in enumerate(used)}
    first = np.array([remap[int(i)] for i in pairs.first[idx]])
    second = np.array([remap[int(i)] for i in pairs.second[idx]])
    assert pairs.labels is not None
    return [Path(pairs.images[int(i)]) for i in used], first, second, pairs.labels[idx], pairs.folds[idx]


def _write_pairs(path: Path, root: Path, images: list[Path], first: np.ndarray, second: np.ndarray,
                 same: np.ndarray, folds: np.ndarray) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["img1", "img2", "label", "fold"])
    rel = [p.relative_to(root).as_posix() for p in images]
    w.writerows([(rel[a], rel[b], int(s), int(f)) for a, b, s, f in zip(first, second, same, folds, strict=True)])
    with atomic_open(path, "w") as fh:
        fh.write(buf.getvalue())


def train_siamese(cfg: PairTrainConfig, quiet: bool = False) -> SiameseResult:
    """Train, save and test (see the module docstring).

    Raises:
        FacelabError: no pair list or data root, a list without labels or whose images are missing, train folds
        the list does not have, no held-out fold, or a bad loss / model / optimizer setting.
    """
    if not cfg.pairs or not cfg.data.root:
        raise FacelabError("facelab siamese needs a pair list and the folder its images are under (--data)")
    if cfg.loss not in PAIR_LOSSES:
        raise FacelabError(f"unknown pair loss '{cfg.loss}' (choose from {', '.join(PAIR_LOSSES.names())})")
    start = time.perf_counter()
    root, out = Path(cfg.data.root), Path(cfg.out_dir)
    pairs = read_pairs(cfg.pairs, root, folds=cfg.folds)
    if pairs.labels is None:
        raise FacelabError(f"{pairs.name} has no labels: a siamese network learns from same/different pairs")
    pairs.require_images()
    # folds are numbered 1..K in the order of the list's own fold ids (LFW's 10 folds: 1-10; a CSV's fold column
    # values sorted)
    fold_ids, number = np.unique(pairs.folds, return_inverse=True)
    number = number + 1
    present = list(range(1, len(fold_ids) + 1))
    wrong = sorted(set(cfg.train_folds) - set(present))
    if wrong or not cfg.train_folds:
        raise FacelabError(f"train_folds {cfg.train_folds} must be folds of {pairs.name}, which has {present}")
    pairs.folds = number
    train_mask = np.isin(number, cfg.train_folds)
    if len(present) - len(set(cfg.train_folds)) < 2:
        raise FacelabError(f"train_folds {cfg.train_folds} leave fewer than 2 of the {len(present)} folds of "
                           f"{pairs.name} to test on (the k-fold protocol needs 2)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "config.yaml")
    train_imgs, tf, ts, ty, tfold = _subset(pairs, train_mask)
    test_imgs, vf, vs, vy, vfold = _subset(pairs, ~train_mask)
    _write_pairs(out / TRAIN_CSV, root, train_imgs, tf, ts, ty, tfold)
    _write_pairs(out / TEST_CSV, root, test_imgs, vf, vs, vy, vfold)

    d = cfg.data
    reader = reader_for(d.align, d.input_size, d.align_options)
    # each image its own label: a file that fails to decode is an error, never silently swapped for another
    images = FaceDataset(root, [(p.relative_to(root).as_posix(), i) for i, p in enumerate(train_imgs)], d.input_size,
                         train_transform(d), cache=d.cache_images, reader=reader, progress=not quiet)
    loader = DataLoader(PairDataset(images, tf, ts, ty), batch_size=d.batch_size, shuffle=True, drop_last=True,
                        num_workers=loader_workers(d.num_workers), generator=torch.Generator().manual_seed(cfg.seed))
    if len(loader) == 0:
        raise FacelabError(f"{len(tf)} training pairs make no batch of data.batch_size={d.batch_size}")
    backbone = build_backbone(cfg.model, d.input_size).to(device)
    loss_fn = PAIR_LOSSES.build(cfg.loss, embedding_dim=cfg.model.embedding_dim, **cfg.loss_options).to(device)
    optimizer = build_optimizer(backbone, loss_fn, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, len(loader))
    history: list[dict[str, Any]] = []
    for epoch in range(cfg.optim.epochs):
        backbone.train()
        loss_fn.train()
        total, right, seen = 0.0, 0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", unit="batch", disable=quiet, leave=False)
        for a, b, same in bar:
            a, b, same = a.to(device), b.to(device), same.to(device)
            emb = backbone(torch.cat([a, b]))  # one pass: both halves share the batch statistics
            e1, e2 = emb.chunk(2)
            outp = loss_fn(e1, e2, same)
            if not math.isfinite(outp.loss.item()):
                raise FacelabError(f"loss became {outp.loss.item()} at epoch {epoch + 1}: lower optim.lr "
                                   f"(now {cfg.optim.lr})")
            optimizer.zero_grad(set_to_none=True)
            outp.loss.backward()
            if cfg.optim.grad_clip > 0:
                nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                         cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            n = len(same)
            total += outp.loss.item() * n
            right += int(((outp.logits > 0) == same.bool()).sum())
            seen += n
            bar.set_postfix(loss=f"{total / seen:.4f}", refresh=False)
        record = {"epoch": epoch + 1, "loss": total / seen, "train_pair_accuracy": right / seen}
        history.append(record)
        if not quiet:
            tqdm.write(f"epoch {epoch + 1}/{cfg.optim.epochs}: loss {record['loss']:.4f} train pair accuracy "
                       f"{record['train_pair_accuracy']:.4f}", file=sys.stderr)

    spec = InputSpec(input_size=d.input_size, mean=tuple(d.mean), std=tuple(d.std),  # type: ignore[arg-type]
                     flip_tta=cfg.flip_tta, align=d.align, align_options=dict(d.align_options))
    model = FaceModel.from_module(backbone.eval(), to_dict(cfg.model), spec, embedding_dim=cfg.model.embedding_dim,
                                  source=f"facelab siamese {out}", kind="module", device=device)
    bundle = model.save_bundle(out / BUNDLE)
    head_state = {k: v.detach().cpu().contiguous() for k, v in loss_fn.state_dict().items()}
    if head_state:
        with atomic_open(out / HEAD, "wb") as fh:
            fh.write(save(head_state))
    test = _test(model, loss_fn, root, test_imgs, vf, vs, vy, out, quiet)
    seconds = time.perf_counter() - start
    write_json(out / HISTORY, {"config": to_dict(cfg), "history": history, "test": test,
                               "train_pairs": len(tf), "test_pairs": len(vf), "train_images": len(train_imgs),
                               "seconds": round(seconds, 1)})
    return SiameseResult(out, bundle, history, test, seconds)


@torch.no_grad()
def _test(model: FaceModel, loss_fn: nn.Module, root: Path, images: list[Path], first: np.ndarray,
          second: np.ndarray, same: np.ndarray, out: Path, quiet: bool) -> dict[str, Any]:
    """The held-out pairs: the standard pair-list evaluation (cosine) and the pair head's own accuracy."""
    doc = evaluate_pairs(model, out / TEST_CSV, data_root=root, out_dir=out / "test", cache=False, quiet=quiet)
    emb = torch.from_numpy(model.embedder(progress=False).embed_all(images, desc="embed"))
    loss_fn.eval()
    logits = loss_fn(emb[first], emb[second], torch.from_numpy(same)).logits
    head_acc = float(((logits > 0).numpy() == same).mean())
    cos = doc["scorers"]["cosine"]
    return {"head_accuracy": head_acc, "pairs_report": str(out / "test"),
            "cosine_kfold_accuracy": cos["kfold"]["accuracy_mean"], "cosine_kfold_std": cos["kfold"]["accuracy_std"],
            "cosine_roc_auc": cos["verification"]["roc_auc"], "cosine_eer": cos["verification"]["eer"]}
