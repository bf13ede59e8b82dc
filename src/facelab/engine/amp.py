"""Mixed precision chosen by ``train.amp``: an autocast dtype per device, and loss scaling only where fp16 needs it.

bf16 has float32's exponent range, so it trains without loss scaling on CPU and on recent GPUs; fp16 underflows
small gradients and needs a ``GradScaler`` (CUDA only here). Losses keep their logits in float32 themselves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from facelab.errors import FacelabError
from facelab.registry import Registry


@dataclass(frozen=True)
class Precision:
    name: str
    #: autocast dtype, None = full float32
    dtype: torch.dtype | None
    #: fp16 needs dynamic loss scaling
    scaled: bool = False

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)

    def grad_scaler(self, device: torch.device) -> torch.amp.GradScaler:
        """A scaler that is a no-op (``enabled=False``) unless fp16 asks for scaling."""
        return torch.amp.GradScaler(device.type, enabled=self.scaled)


#: name -> ``fn(device) -> Precision``; fails with a one-line reason where the device cannot do it
PRECISIONS: Registry[Precision] = Registry("train.amp mode")


def _cuda_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


@PRECISIONS.register("off")
def _off(device: torch.device) -> Precision:
    return Precision("off", None)


@PRECISIONS.register("bf16")
def _bf16(device: torch.device) -> Precision:
    if device.type == "cuda" and not _cuda_bf16():
        raise FacelabError("train.amp=bf16: this GPU has no bfloat16 support; use train.amp=fp16")
    return Precision("bf16", torch.bfloat16)


@PRECISIONS.register("fp16")
def _fp16(device: torch.device) -> Precision:
    if device.type != "cuda":
        raise FacelabError(f"train.amp=fp16 needs a CUDA device (got {device.type}); use train.amp=bf16 on CPU")
    return Precision("fp16", torch.float16, scaled=True)


@PRECISIONS.register("auto")
def _auto(device: torch.device) -> Precision:
    """bf16 where the GPU has it, else fp16; full precision on CPU, where bf16 is often slower than float32."""
    if device.type != "cuda":
        return _off(device)
    return _bf16(device) if _cuda_bf16() else _fp16(device)


def resolve_precision(name: str, device: torch.device) -> Precision:
    make: Callable[[torch.device], Precision] = PRECISIONS.get(name)
    return make(device)
