"""Checkpoints: one file holding everything needed to resume or evaluate, written atomically, read weights-only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from facelab.errors import FacelabError
from facelab.utils.io import load_torch, save_torch

FORMAT = "facelab-checkpoint"
VERSION = 1
REQUIRED = ("epoch", "config", "manifest", "model", "loss", "optimizer", "scheduler", "history")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    save_torch(path, {"format": FORMAT, "version": VERSION, **state})


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    state = load_torch(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise FacelabError(f"{path} is not a facelab checkpoint")
    if state.get("version") != VERSION:
        raise FacelabError(f"{path}: checkpoint version {state.get('version')} is not supported (need {VERSION})")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise FacelabError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return state
