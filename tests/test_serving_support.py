"""Shared helpers for the deployment tests (imported by the other test_serving_* modules), and their own checks."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facelab.config import DataConfig, ModelConfig, TrainConfig, from_dict, to_dict
from facelab.inference.model import FaceModel
from facelab.inference.spec import InputSpec
from facelab.inference.thresholds import IDENTIFICATION, VERIFICATION, Threshold, Thresholds
from facelab.models import build_backbone
from facelab.runs import save_checkpoint

TINY_MODEL = ModelConfig(backbone="resnet18", width=8, embedding_dim=32)
TINY_DATA = DataConfig(input_size=64)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread per test: on a shared 2-core machine two OpenMP threads spin against other processes and
    a 30 ms forward pass takes seconds. Import this fixture into a test module to apply it there."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def thresholds(verification: float | None = 0.5, identification: float | None = None) -> Thresholds:
    """Given-by-hand thresholds for tests (no calibration curve)."""
    v = None if verification is None else Threshold(VERIFICATION, verification, "test value")
    i = None if identification is None else Threshold(IDENTIFICATION, identification, "test value")
    return Thresholds(v, i)


def tiny_model(seed: int = 0, threshold: float | None = 0.5, flip: bool = True,
               identification: float | None = None) -> FaceModel:
    """A random-weight width-8 ResNet model on the CPU: fast to build, deterministic for a seed. ``threshold`` is
    the 1:1 one; ``identification`` the 1:N one (defaults to ``threshold``)."""
    torch.manual_seed(seed)
    backbone = build_backbone(TINY_MODEL, TINY_DATA.input_size)
    spec = InputSpec(input_size=TINY_DATA.input_size, mean=TINY_DATA.mean, std=TINY_DATA.std, flip_tta=flip)
    ident = threshold if identification is None else identification
    return FaceModel.from_module(backbone, to_dict(TINY_MODEL), spec, thresholds=thresholds(threshold, ident),
                                 source=f"random seed {seed}", kind="module", device="cpu")


def fake_run(run: Path) -> Path:
    """A checkpoint.pt as `facelab train` writes it, around random tiny weights (no training needed): two classes,
    an empty split."""
    from facelab.data.splits import SplitManifest
    from facelab.runs import build_model_and_loss

    cfg = from_dict(TrainConfig, {"model": to_dict(TINY_MODEL), "data": {"input_size": 64}, "device": "cpu"})
    manifest = SplitManifest(["a", "b"], [], [], [], [])
    _, loss = build_model_and_loss(cfg, manifest.num_classes)
    state = {"epoch": 1, "config": to_dict(cfg), "manifest": manifest.to_dict(),
             "model": tiny_model().backbone.state_dict(), "loss": loss.state_dict(), "optimizer": {},
             "scheduler": {}, "history": []}
    save_checkpoint(run / "checkpoint.pt", state)
    return run


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def png_bytes(size: tuple[int, int] = (48, 48), seed: int = 0) -> bytes:
    """A random RGB PNG, e.g. a 'face' that no enrolled face resembles."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def face_files(orl_root: Path, identity: str, n: int = 3) -> list[Path]:
    return [orl_root / identity / f"{i}.pgm" for i in range(1, n + 1)]


def test_tiny_model_is_deterministic_and_unit_length(orl_root: Path) -> None:
    a, b = tiny_model(0), tiny_model(0)
    assert a.fingerprint == b.fingerprint
    emb = a.embed(face_files(orl_root, "s1", 2))
    assert emb.shape == (2, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
