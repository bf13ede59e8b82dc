"""Torch device selection, shared by training, evaluation and inference."""

from __future__ import annotations

import os

import torch

from facelab.errors import FacelabError


def resolve_device(name: str | None, local_rank: int = 0) -> torch.device:
    """``auto`` (or None)/``cuda`` pick GPU ``local_rank`` (torchrun's LOCAL_RANK) when CUDA is available.

    Raises:
        FacelabError: an unknown device name, or CUDA asked for on a machine without it.
    """
    name = name or "auto"
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise FacelabError(f"unknown device '{name}': {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FacelabError(f"device '{name}' requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


#: images per forward pass by device type. On CPU, small batches are much faster: a batch's activations above
#: glibc's largest mmap threshold (32 MB) are mapped and unmapped at every layer, and the page faults cost more
#: than the convolutions (SFace with flip TTA, 2 threads: 31 img/s at batch 8, 14 at batch 64; ResNet-18 width 32
#: at 64 px: 142 vs 99; measured side by side, docs/pretrained.md).
#: Used for embedding (facelab.inference.embedder) and for the distillation targets of fine-tuning.
DEFAULT_BATCH_SIZE = {"cpu": 8, "cuda": 64, "mps": 32}


def default_batch_size(device: torch.device | str) -> int:
    """The default images per forward pass on ``device`` (see :data:`DEFAULT_BATCH_SIZE`)."""
    return DEFAULT_BATCH_SIZE.get(torch.device(device).type, 8)


def loader_workers(setting: int | str, world: int = 1) -> int:
    """Loader processes per training process for ``data.num_workers``: a count as given; "auto": 0 with <= 2 usable
    cores (workers would only compete with the model for them), else the cores left after the ``world`` training
    processes, shared among them, at most 4 each."""
    if setting != "auto":
        return int(setting)
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    if cores <= 2:
        return 0
    return max(0, min(4, (cores - world) // max(world, 1)))
