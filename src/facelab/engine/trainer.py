"""``facelab train``: fit a backbone + loss on an identity folder, checkpointing every epoch so it can resume.

Each epoch reseeds every RNG from ``(seed, epoch)``, so a run resumed after a kill reproduces, bit for bit on the
same machine, the epochs an uninterrupted run would have produced.
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from facelab.config import TrainConfig, from_dict, save_yaml, to_dict
from facelab.data import FaceDataset, SplitManifest, make_split, scan_folder, train_transform
from facelab.data.sampler import build_batch_sampler
from facelab.engine.checkpoint import load_checkpoint, save_checkpoint
from facelab.engine.optim import build_optimizer, build_scheduler
from facelab.errors import FacelabError
from facelab.losses import LOSSES, FaceLoss, build_loss
from facelab.models import BACKBONES, Backbone, build_backbone, count_parameters
from facelab.utils.io import atomic_open, write_json

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise FacelabError(f"unknown device '{name}': {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FacelabError(f"device '{name}' requested but CUDA is not available")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model_and_loss(cfg: TrainConfig, num_classes: int) -> tuple[Backbone, FaceLoss]:
    backbone = build_backbone(cfg.model, cfg.data.input_size)
    loss = build_loss(cfg.loss, cfg.model.embedding_dim, num_classes)
    return backbone, loss


@dataclass
class TrainResult:
    out_dir: Path
    checkpoint: Path
    history: list[dict[str, Any]]
    seconds: float


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        tqdm.write(msg, file=sys.stderr)


def train(cfg: TrainConfig, resume: bool = False, quiet: bool = False,
          stop_after_epochs: int | None = None) -> TrainResult:
    """Train per ``cfg``; with ``resume`` continue from ``cfg.out_dir/checkpoint.pt``.

    ``stop_after_epochs`` ends the process' work early (as a kill would) -- used by tests of resume.
    """
    out = Path(cfg.out_dir)
    ckpt_path = out / "checkpoint.pt"
    state: dict[str, Any] | None = None
    if resume:
        state = load_checkpoint(ckpt_path)
        cfg = from_dict(TrainConfig, state["config"])
        manifest = SplitManifest.from_dict(state["manifest"])
        _say(f"resuming {ckpt_path} after epoch {state['epoch']} of {cfg.optim.epochs}", quiet)
    elif ckpt_path.exists():
        raise FacelabError(f"{ckpt_path} already exists: pass --resume to continue it or choose another --out")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    if not cfg.data.root:
        raise FacelabError("no data folder given: set data.root in the config or pass --data")
    BACKBONES.get(cfg.model.backbone)  # fail on a misspelt name before a long scan of the data
    LOSSES.get(cfg.loss.name)
    if state is None:
        folder = scan_folder(cfg.data.root, min_images=max(1, cfg.data.split.min_images_per_identity))
        if folder.report.summary():
            _say(f"data: {folder.report.summary()}", quiet)
        manifest = make_split(folder, cfg.data.split)
        out.mkdir(parents=True, exist_ok=True)
        manifest.save(out / "split.json")
        save_yaml(cfg, out / "config.yaml")
    r = manifest.report
    _say(f"data: {r['train_images']} training images of {manifest.num_classes} identities; held out "
         f"{r['closed_test_images']} closed-set images and {r['open_identities']} unseen identities "
         f"({r['open_test_images']} images)", quiet)

    seed_everything(cfg.seed)
    backbone, loss_fn = build_model_and_loss(cfg, manifest.num_classes)
    backbone.to(device)
    loss_fn.to(device)
    dataset = FaceDataset(cfg.data.root, manifest.train, cfg.data.input_size, train_transform(cfg.data),
                          cache=cfg.data.cache_images)
    if len(dataset) < 2:
        raise FacelabError(f"need at least 2 training images for BatchNorm, got {len(dataset)}")
    generator = torch.Generator()
    batch_sampler = build_batch_sampler(dataset.labels, cfg.data, generator)
    loader = DataLoader(dataset, batch_sampler=batch_sampler, num_workers=cfg.data.num_workers,
                        persistent_workers=cfg.data.num_workers > 0, pin_memory=device.type == "cuda")
    steps = len(loader)
    if steps == 0:
        raise FacelabError(f"sampler '{cfg.data.sampler}' yields no batch from {len(dataset)} training images")
    optimizer = build_optimizer(backbone, loss_fn, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, steps)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if state is not None:
        backbone.load_state_dict(state["model"])
        loss_fn.load_state_dict(state["loss"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = list(state["history"])
        start_epoch = int(state["epoch"])
    _rewrite_log(out / "metrics.jsonl", history)
    _say(f"model: {cfg.model.backbone} ({count_parameters(backbone) / 1e6:.2f}M parameters), "
         f"loss: {cfg.loss.name}, device: {device}, {cfg.optim.epochs} epochs x {steps} steps", quiet)

    batch_size = len(next(iter(batch_sampler)))
    total = cfg.optim.epochs * steps * batch_size
    bar = tqdm(total=total, initial=start_epoch * steps * batch_size, unit="img", unit_scale=True,
               desc="train", disable=quiet, dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 10)
    t_start = time.perf_counter()
    last = cfg.optim.epochs if stop_after_epochs is None else min(cfg.optim.epochs, start_epoch + stop_after_epochs)
    for epoch in range(start_epoch, last):
        seed_everything(cfg.seed * 100_003 + epoch)
        generator.manual_seed(cfg.seed * 100_003 + epoch)
        stats = _train_epoch(backbone, loss_fn, loader, optimizer, scheduler, cfg, device, epoch, bar)
        record = {"epoch": epoch + 1, **stats, "lr": optimizer.param_groups[0]["lr"]}
        history.append(record)
        save_checkpoint(ckpt_path, {
            "epoch": epoch + 1,
            "config": to_dict(cfg),
            "manifest": manifest.to_dict(),
            "model": backbone.state_dict(),
            "loss": loss_fn.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "history": history,
        })
        with open(out / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
        acc = f" acc {stats['train_acc']:.3f}" if stats["train_acc"] is not None else ""
        _say(f"epoch {epoch + 1}/{cfg.optim.epochs}: loss {stats['loss']:.4f}{acc} "
             f"{stats['images_per_s']:.0f} img/s", quiet)
    bar.close()
    if len(dataset.failed):
        _say(f"data: {len(dataset.failed)} image(s) failed to decode during training and were replaced: "
             f"{', '.join(sorted(dataset.failed)[:5])}", quiet)
    if len(history) == cfg.optim.epochs:
        from facelab.evaluation.plots import plot_training_curves

        plot_training_curves(history, out / "training_curves.png")
        write_json(out / "training_curves.json", history)
    return TrainResult(out, ckpt_path, history, time.perf_counter() - t_start)


def _rewrite_log(path: Path, history: list[dict[str, Any]]) -> None:
    """The log mirrors the checkpoint's history, so a kill between checkpoint and log leaves no gap or duplicate."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as fh:
        for rec in history:
            fh.write(json.dumps(rec) + "\n")


def _train_epoch(backbone: nn.Module, loss_fn: FaceLoss, loader: DataLoader, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, cfg: TrainConfig, device: torch.device,
                 epoch: int, bar: tqdm) -> dict[str, Any]:
    backbone.train()
    loss_fn.train()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    total_loss, correct, seen = 0.0, 0, 0
    has_logits = True
    t0 = time.perf_counter()
    for step, (images, labels) in enumerate(loader):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        out = loss_fn(backbone(images), labels)
        if not torch.isfinite(out.loss):
            raise FacelabError(
                f"loss became {out.loss.item()} at epoch {epoch + 1} step {step + 1} "
                f"(lr {optimizer.param_groups[0]['lr']:.3g}); the last good checkpoint is kept -- "
                f"lower optim.lr or set optim.grad_clip"
            )
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        n = labels.numel()
        total_loss += out.loss.item() * n
        seen += n
        if out.logits is not None:
            correct += int((out.logits.argmax(1) == labels).sum())
        else:
            has_logits = False
        bar.update(n)
        bar.set_postfix(epoch=epoch + 1, loss=f"{total_loss / seen:.3f}", refresh=False)
    dt = time.perf_counter() - t0
    return {
        "loss": total_loss / max(seen, 1),
        "train_acc": correct / seen if has_logits and seen else None,
        "images_per_s": seen / dt if dt > 0 else math.nan,
        "seconds": dt,
    }
