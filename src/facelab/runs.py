"""The run layer: what a run folder holds, the checkpoint format, opening a run, building its model, and the only
reader and writer of ``thresholds.json``.

A run folder (``facelab train --out RUN``)::

    RUN/checkpoint.pt        weights, optimizer, scheduler, config, split manifest, history (weights_only-loadable)
    RUN/config.yaml          the config trained with
    RUN/split.json           the seeded split: training, closed-set and open-set images
    RUN/metrics.jsonl        one line per epoch; training_curves.png/.json at the end
    RUN/metrics.json         facelab eval; roc.png/.json, scores_hist.png
    RUN/thresholds.json      facelab calibrate: 1:1 and 1:N accept thresholds, tied to the model fingerprint
    RUN/embedding_cache/     embeddings already computed, one file per model fingerprint

Training writes checkpoints through :func:`save_checkpoint`; evaluation, serving and the Python API open runs only
through :func:`load_run`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from facelab.config import TrainConfig, from_dict, to_dict
from facelab.data.splits import SplitManifest
from facelab.errors import FacelabError
from facelab.losses import FaceLoss, build_loss
from facelab.models import build_backbone, build_with_weights
from facelab.utils.device import resolve_device
from facelab.utils.io import load_torch, save_torch, write_json

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
#: the best validated epoch's checkpoint (facelab.engine.validation), same format
BEST = "best.pt"
CONFIG = "config.yaml"
SPLIT = "split.json"
METRICS = "metrics.json"
THRESHOLDS = "thresholds.json"
EMBEDDING_CACHE = "embedding_cache"

CHECKPOINT_FORMAT = "facelab-checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED = ("epoch", "config", "manifest", "model", "loss", "optimizer", "scheduler", "history")

THRESHOLDS_FORMAT, THRESHOLDS_VERSION = "facelab-thresholds", 1
#: the two decisions a deployment makes, as ``thresholds.json`` names them
VERIFICATION, IDENTIFICATION = "verification", "identification"


# -- checkpoints --------------------------------------------------------------------------------------------------
def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write atomically (temp file + rename): a killed process leaves the previous checkpoint intact."""
    save_torch(path, {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state})


def checkpoint_path(run: str | Path) -> Path:
    """``RUN/checkpoint.pt`` for a run folder, the path itself for a checkpoint file."""
    p = Path(run)
    return p / CHECKPOINT if p.is_dir() else p


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint (``weights_only``: it can never run code) and check its format and required keys."""
    path = checkpoint_path(path)
    state = load_torch(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise FacelabError(f"{path} is not a facelab checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise FacelabError(f"{path}: checkpoint version {state.get('version')} is not supported "
                           f"(need {CHECKPOINT_VERSION})")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise FacelabError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return state


def is_run(ref: str | Path) -> bool:
    """A run folder (holding a checkpoint) or a checkpoint file."""
    p = Path(ref)
    return (p.is_dir() and (p / CHECKPOINT).is_file()) or (p.is_file() and p.suffix == ".pt")


def run_dir(run: str | Path) -> Path:
    p = Path(run)
    return p if p.is_dir() else p.parent


# -- building and opening ------------------------------------------------------------------------------------------
def build_model_and_loss(cfg: TrainConfig, num_classes: int,
                         backbone_state: Mapping[str, torch.Tensor] | None = None) -> tuple[nn.Module, FaceLoss]:
    """The backbone and loss (with its class weights) a config describes: freshly initialised, or with
    ``backbone_state`` loaded into the backbone (rebuilt by ``build_with_weights``, which an ONNX-converted
    backbone needs: its graph travels in its state)."""
    if backbone_state is not None:
        backbone: nn.Module = build_with_weights(to_dict(cfg.model), cfg.data.input_size, backbone_state).train()
    else:
        backbone = build_backbone(cfg.model, cfg.data.input_size)
    loss = build_loss(cfg.loss, cfg.model.embedding_dim, num_classes)
    return backbone, loss


@dataclass
class LoadedRun:
    """A checkpoint turned back into modules, in eval mode on ``device``."""

    path: Path  # the run folder (thresholds.json and the embedding cache live here)
    cfg: TrainConfig
    manifest: SplitManifest
    backbone: nn.Module
    loss: FaceLoss
    device: torch.device
    epoch: int


def load_run(run: str | Path | LoadedRun, device: str | None = None) -> LoadedRun:
    """Open a run folder or checkpoint file: config, split manifest, backbone and loss with the trained weights.

    Raises:
        FacelabError: not a checkpoint, a foreign or damaged file, or weights that do not fit the stored config.
    """
    if isinstance(run, LoadedRun):
        return run
    state = load_checkpoint(run)
    cfg = from_dict(TrainConfig, state["config"])
    manifest = SplitManifest.from_dict(state["manifest"])
    dev = resolve_device(device or cfg.device)
    try:
        backbone, loss = build_model_and_loss(cfg, manifest.num_classes, state["model"])
    except FacelabError as exc:
        raise FacelabError(f"{checkpoint_path(run)}: {exc}") from None
    try:
        loss.load_state_dict(state["loss"])
    except RuntimeError as exc:
        raise FacelabError(f"{checkpoint_path(run)}: weights do not fit the stored config: "
                           f"{str(exc).strip().splitlines()[0]}") from None
    backbone.to(dev).eval()
    loss.to(dev).eval()
    return LoadedRun(run_dir(run), cfg, manifest, backbone, loss, dev, int(state["epoch"]))


# -- thresholds.json ---------------------------------------------------------------------------------------------
def _finite(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def save_thresholds(run: str | Path, entries: list[dict[str, Any]], fingerprint: str, dev: str = "") -> Path:
    """Merge calibrated entries (one per task: ``verification``, ``identification``) into ``RUN/thresholds.json``.
    Entries calibrated for another model fingerprint are dropped: they belong to weights that no longer exist."""
    path = run_dir(run) / THRESHOLDS
    doc: dict[str, Any] = {"format": THRESHOLDS_FORMAT, "version": THRESHOLDS_VERSION,
                           "model_fingerprint": fingerprint, "tasks": {}}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        if isinstance(old, dict) and old.get("model_fingerprint") == fingerprint:
            doc["tasks"] = dict(old.get("tasks", {}))
    for e in entries:
        doc["tasks"][e["task"]] = {**e, "dev": e.get("dev", dev), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(path, doc)
    return path


def load_thresholds(run: str | Path, fingerprint: str | None = None) -> dict[str, Any]:
    """The tasks of ``RUN/thresholds.json`` ({} if there is none).

    Raises:
        FacelabError: not valid JSON, not a thresholds file, or calibrated for other weights than ``fingerprint``.
    """
    path = run_dir(run) / THRESHOLDS
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FacelabError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != THRESHOLDS_FORMAT \
            or doc.get("version") != THRESHOLDS_VERSION:
        raise FacelabError(f"{path} is not a facelab thresholds file (version {THRESHOLDS_VERSION})")
    if fingerprint is not None and doc.get("model_fingerprint") != fingerprint:
        raise FacelabError(f"{path} was calibrated for other model weights; run `facelab calibrate` again")
    tasks = doc.get("tasks", {})
    return dict(tasks) if isinstance(tasks, dict) else {}


def calibrated_threshold(run: str | Path, task: str, score: str, fingerprint: str | None = None) -> float | None:
    """The saved native threshold for ``task`` if it was calibrated with ``score``, else None."""
    entry = load_thresholds(run, fingerprint).get(task)
    if not isinstance(entry, dict) or entry.get("score") != score:
        return None
    return _finite(entry.get("threshold"))


def eer_threshold(run: str | Path) -> float | None:
    """The equal-error-rate threshold of open-set verification in ``RUN/metrics.json`` (``facelab eval``)."""
    path = run_dir(run) / METRICS
    if not path.is_file():
        return None
    try:
        return _finite(json.loads(path.read_text())["open_set"]["verification"]["eer_threshold"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return None
