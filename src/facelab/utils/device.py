"""Torch device selection, shared by training, evaluation and inference."""

from __future__ import annotations

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
