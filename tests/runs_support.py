"""Test helper: a run folder holding an untrained checkpoint, as `facelab train` writes it (no training needed)."""

from __future__ import annotations

from pathlib import Path

import torch

from facelab.config import load_config, to_dict
from facelab.data import make_split, scan_folder
from facelab.runs import build_model_and_loss, save_checkpoint


def untrained_run(out: Path, root: Path, overrides: list[str], seed: int = 0) -> Path:
    """Write ``out/checkpoint.pt``: the config (defaults + ``overrides``, data.root = ``root``), its seeded split of
    ``root`` and freshly initialised weights (torch seed ``seed``). Returns ``out``."""
    cfg = load_config(None, [*overrides, f"data.root={root}"])
    manifest = make_split(scan_folder(root, verify=False), cfg.data.split)
    torch.manual_seed(seed)
    backbone, loss = build_model_and_loss(cfg, manifest.num_classes)
    save_checkpoint(out / "checkpoint.pt", {"epoch": 1, "config": to_dict(cfg), "manifest": manifest.to_dict(),
                                            "model": backbone.state_dict(), "loss": loss.state_dict(),
                                            "optimizer": {}, "scheduler": {}, "history": []})
    return out
