"""Load a trained run once and embed any list of images, remembering every embedding on disk.

Evaluation protocols (pair lists, galleries, HW2P2 folders) and deployment all need the same three steps: rebuild
the model from a checkpoint, decode and embed images in batches with a progress bar, and not pay for that twice.
The cache is keyed by a fingerprint of the weights and preprocessing plus, per image, its resolved path, size and
mtime (files) or the SHA-1 of its bytes (images held in memory, e.g. an insightface ``.bin``), so re-scoring a
protocol with another score type or threshold is instant and a retrained model or an edited file is never served
stale embeddings.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from facelab.data import base_transform, eval_transform
from facelab.data.align import face_preparer, resolved_align
from facelab.errors import FacelabError
from facelab.evaluation.embed import extract_embeddings
from facelab.faces.base import NoFaceFound
from facelab.images import read_image
from facelab.runs import EMBEDDING_CACHE, LoadedRun, load_run
from facelab.utils.io import atomic_open

#: an image to embed: a file, or (a stable name for messages, the encoded bytes)
ImageSource = Path | tuple[str, bytes]

CACHE_FORMAT = 1


def model_fingerprint(model: nn.Module, **preprocessing: Any) -> str:
    """SHA-256 of every parameter/buffer and the preprocessing settings: equal fingerprint, equal embeddings."""
    h = hashlib.sha256()
    h.update(json.dumps(preprocessing, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def source_key(src: ImageSource) -> str:
    if isinstance(src, tuple):
        return "sha1:" + hashlib.sha1(src[1]).hexdigest()
    try:
        st = os.stat(src)
    except FileNotFoundError:
        raise FacelabError(f"image not found: {src}") from None
    return f"file:{Path(src).resolve()}:{st.st_size}:{st.st_mtime_ns}"


class _Images(Dataset[tuple[torch.Tensor, int]]):
    """Decodes files or in-memory bytes; an undecodable image is an error naming it (never silently replaced,
    which would change what a protocol measures). ``prepare`` (face alignment) runs before resizing; a photo without
    a detectable face is used whole and counted in ``no_face``."""

    def __init__(self, sources: Sequence[ImageSource], input_size: int, transform: nn.Module,
                 prepare: Callable[[Image.Image], Image.Image] | None = None) -> None:
        self.sources, self.base, self.transform = list(sources), base_transform(input_size), transform
        self.prepare, self.no_face = prepare, 0

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = read_image(self.sources[i])  # an ImageError names the image
        if self.prepare is not None:
            try:
                img = self.prepare(img)
            except NoFaceFound:
                self.no_face += 1
        return self.transform(self.base(img)), 0


@dataclass
class EmbeddingCache:
    """One ``.npz`` per model fingerprint: keys and float32 rows. Merged with what is on disk before each write,
    so two processes sharing a cache lose nothing but duplicate work."""

    path: Path
    _rows: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rows = self._read()

    def _read(self) -> dict[str, np.ndarray]:
        if not self.path.is_file():
            return {}
        try:
            with np.load(self.path, allow_pickle=False) as z:
                if int(z["format"]) != CACHE_FORMAT:
                    return {}
                return dict(zip(z["keys"].tolist(), z["emb"], strict=True))
        except (OSError, ValueError, KeyError):  # a damaged cache is only lost time, never an error
            return {}

    def get(self, key: str) -> np.ndarray | None:
        return self._rows.get(key)

    def __len__(self) -> int:
        return len(self._rows)

    def update(self, rows: dict[str, np.ndarray]) -> None:
        if not rows:
            return
        merged = {**self._read(), **self._rows, **rows}
        self._rows = merged
        keys = np.array(list(merged), dtype=str)
        emb = np.stack(list(merged.values())).astype(np.float32)
        with atomic_open(self.path, "wb") as fh:
            np.savez(fh, format=np.int64(CACHE_FORMAT), keys=keys, emb=emb)


class Embedder:
    """Raw (un-normalised) embeddings of images for one model, through an optional on-disk cache.

    ``calls`` counts images actually sent through the model, so callers and tests can see a cache hit."""

    def __init__(self, model: nn.Module, input_size: int, transform: nn.Module, *, device: torch.device | str = "cpu",
                 flip: bool = True, batch_size: int = 128, cache_dir: str | Path | None = None,
                 progress: bool = True, fingerprint: str | None = None,
                 prepare: Callable[[Image.Image], Image.Image] | None = None) -> None:
        self.model, self.input_size, self.transform, self.prepare = model, input_size, transform, prepare
        self.no_face = 0
        self.device, self.flip, self.batch_size, self.progress = torch.device(device), flip, batch_size, progress
        self.fingerprint = fingerprint or model_fingerprint(model, input_size=input_size, flip=flip,
                                                            transform=repr(transform))
        self.cache = EmbeddingCache(Path(cache_dir) / f"{self.fingerprint[:32]}.npz") if cache_dir else None
        self.calls = 0

    @classmethod
    def from_run(cls, run: LoadedRun | str | Path, *, device: str | None = None, flip: bool | None = None,
                 cache: bool = True, progress: bool = True) -> Embedder:
        """The run's model and eval preprocessing; the cache lives in ``RUN/embedding_cache/``."""
        lr = run if isinstance(run, LoadedRun) else load_run(run, device)
        use_flip = lr.cfg.eval.flip_tta if flip is None else flip
        tf = eval_transform(lr.cfg.data)
        align = resolved_align(lr.cfg.data)
        extra = {} if align == "none" else {"align": align}  # unaligned runs keep their fingerprint
        fp = model_fingerprint(lr.backbone, input_size=lr.cfg.data.input_size, flip=use_flip,
                               mean=lr.cfg.data.mean, std=lr.cfg.data.std, **extra)
        return cls(lr.backbone, lr.cfg.data.input_size, tf, device=lr.device, flip=use_flip,
                   batch_size=lr.cfg.eval.batch_size, cache_dir=lr.path / EMBEDDING_CACHE if cache else None,
                   progress=progress, fingerprint=fp, prepare=face_preparer(lr.cfg.data))

    def embed(self, sources: Sequence[ImageSource], desc: str = "embed") -> np.ndarray:
        """(N, D) float32 in the order of ``sources``; duplicates and cached images are embedded once."""
        keys = [source_key(s) for s in sources]
        found: dict[str, np.ndarray] = {}
        if self.cache is not None:
            for k in keys:
                row = self.cache.get(k)
                if row is not None:
                    found[k] = row
        todo: dict[str, ImageSource] = {}
        for k, s in zip(keys, sources, strict=True):
            if k not in found and k not in todo:
                todo[k] = s
        if todo:
            ds = _Images(list(todo.values()), self.input_size, self.transform, self.prepare)
            emb = extract_embeddings(self.model, ds, self.batch_size, self.flip, self.device,
                                     f"{desc} ({len(todo)} images)", self.progress)
            self.no_face += ds.no_face
            self.calls += len(todo)
            new = dict(zip(todo, emb, strict=True))
            found.update(new)
            if self.cache is not None:
                self.cache.update(new)
        if not keys:
            return np.zeros((0, 0), np.float32)
        return np.stack([found[k] for k in keys]).astype(np.float32)
