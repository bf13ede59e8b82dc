"""The one embedding primitive: images in, embeddings out -- the same way for evaluation, pair lists, ``embed``,
the gallery, the HTTP service and the Python API.

Per image: decode through the image gate (:mod:`facelab.images`), turn it into the face crop(s) the model's
:class:`~facelab.inference.spec.InputSpec` asks for (:func:`facelab.faces.prepare_faces`: the whole image for
pre-cropped faces, or detection + 5-point alignment), apply the spec's transform; then batches through the model,
with flip test-time augmentation when the spec says so (the mean of the embeddings of the crop and its mirror,
which removes the left/right bias of a single view). Embeddings come out raw (not normalised), float32.

An optional on-disk cache remembers the embedding of every file (by resolved path, size and mtime) or byte string
(by SHA-1) per model fingerprint, so re-scoring a protocol with another threshold or score type is instant and an
edited file or retrained model is never served stale embeddings.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from facelab.errors import FacelabError
from facelab.faces import FaceCrop, prepare_faces
from facelab.faces.cache import CropCache
from facelab.images import ImageError, ImageInput, read_image, source_name
from facelab.inference.spec import InputSpec
from facelab.utils.device import default_batch_size
from facelab.utils.io import atomic_open

CACHE_FORMAT = 2


def source_key(src: ImageInput) -> str | None:
    """A cache key that changes when the image does: path + size + mtime for files, SHA-1 for bytes; None for
    in-memory PIL images and arrays (never cached)."""
    if isinstance(src, tuple):
        return "sha1:" + hashlib.sha1(src[1]).hexdigest()
    if isinstance(src, bytes | bytearray):
        return "sha1:" + hashlib.sha1(src).hexdigest()
    if isinstance(src, str | os.PathLike):
        try:
            st = os.stat(src)
        except OSError:
            return None  # the gate reports the missing file with its name
        return f"file:{Path(src).resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return None


class FlipTTA(nn.Module):
    """``backbone`` with flip test-time augmentation: the mean of the embeddings of a batch and of its horizontal
    mirror (``flip=False``: the backbone alone). Raw embeddings out, (B, 3, S, S) -> (B, D). The one place flip TTA
    is written; the embedder runs it and exports trace it."""

    def __init__(self, backbone: nn.Module, flip: bool) -> None:
        super().__init__()
        self.backbone, self.flip = backbone, flip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb = self.backbone(x)
        if self.flip:
            emb = (emb + self.backbone(torch.flip(x, dims=[3]))) / 2
        return emb


@dataclass
class EmbeddingCache:
    """One ``.npz`` per model fingerprint: keys, float32 rows and how each face was found (crop method). Merged
    with what is on disk before each write, so two processes sharing a cache lose nothing but duplicate work."""

    path: Path
    _rows: dict[str, tuple[np.ndarray, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rows = self._read()

    def _read(self) -> dict[str, tuple[np.ndarray, str]]:
        if not self.path.is_file():
            return {}
        try:
            with np.load(self.path, allow_pickle=False) as z:
                if int(z["format"]) != CACHE_FORMAT:
                    return {}
                return {k: (e, m) for k, e, m in zip(z["keys"].tolist(), z["emb"], z["method"].tolist(),
                                                     strict=True)}
        except (OSError, ValueError, KeyError):  # a damaged cache is only lost time, never an error
            return {}

    def get(self, key: str) -> tuple[np.ndarray, str] | None:
        return self._rows.get(key)

    def __len__(self) -> int:
        return len(self._rows)

    def update(self, rows: dict[str, tuple[np.ndarray, str]]) -> None:
        if not rows:
            return
        merged = {**self._read(), **self._rows, **rows}
        self._rows = merged
        with atomic_open(self.path, "wb") as fh:
            np.savez(fh, format=np.int64(CACHE_FORMAT), keys=np.array(list(merged), dtype=str),
                     emb=np.stack([e for e, _ in merged.values()]).astype(np.float32),
                     method=np.array([m for _, m in merged.values()], dtype=str))


@dataclass
class Embedded:
    """What :meth:`Embedder.embed` did with a list of sources, one face each.

    ``embeddings`` (M, D) raw float32 rows for the sources listed in ``done`` (indices into the input, in order);
    ``methods`` how each face was found (``resized``, ``aligned``, ``undetected``); ``failed`` (index, one-line
    reason) for sources that could not be used (only when not strict)."""

    embeddings: np.ndarray
    done: list[int]
    methods: list[str]
    failed: list[tuple[int, str]]

    def counts(self) -> dict[str, int]:
        out = {"embedded": len(self.done), "failed": len(self.failed)}
        for m in self.methods:
            out[m] = out.get(m, 0) + 1
        return out


class Embedder:
    """Raw embeddings of images for one model (backbone in eval mode on ``device``) and its input spec.

    ``calls`` counts images actually sent through the model, so callers and tests can see a cache hit."""

    def __init__(self, model: nn.Module, spec: InputSpec, *, device: torch.device | str = "cpu",
                 batch_size: int | None = None, progress: bool = False, cache_dir: str | Path | None = None,
                 fingerprint: str = "", crop_cache: CropCache | None = None) -> None:
        if batch_size is None:
            batch_size = default_batch_size(device)
        if batch_size < 1:
            raise FacelabError(f"batch size must be >= 1, got {batch_size}")
        self.model, self.spec, self.device = model.eval(), spec, torch.device(device)
        self.graph = FlipTTA(self.model, spec.flip_tta)
        self.batch_size, self.progress, self.fingerprint = batch_size, progress, fingerprint
        self.transform = spec.transform()
        if cache_dir is not None and not fingerprint:
            raise FacelabError("an embedding cache needs the model fingerprint")
        self.cache = EmbeddingCache(Path(cache_dir) / f"{fingerprint[:32]}.npz") if cache_dir else None
        #: aligned crops of files detected once (training made them; evaluation reuses them)
        self.crop_cache = crop_cache
        self.calls = 0

    @property
    def flip(self) -> bool:
        return self.spec.flip_tta

    # -- the model ------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> np.ndarray:
        """Preprocessed (B, 3, S, S) -> raw float32 (B, D); flip TTA when the spec says so."""
        return self.graph(batch.to(self.device)).float().cpu().numpy()

    def embed_crops(self, crops: Sequence[Image.Image]) -> np.ndarray:
        """(N, D) raw embeddings of face crops (PIL RGB), in batches."""
        chunks = [self.forward(torch.stack([self.transform(c) for c in crops[i:i + self.batch_size]]))
                  for i in range(0, len(crops), self.batch_size)]
        self.calls += len(crops)
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)

    # -- images ---------------------------------------------------------------------------------------------------
    def faces(self, source: ImageInput, *, multiple: bool = False, name: str | None = None) -> list[FaceCrop]:
        """Decode ``source`` through the gate and return its face crop(s) as the spec asks (detection errors and
        image errors are FacelabErrors naming the image)."""
        try:
            if self.crop_cache is not None and not multiple and isinstance(source, str | os.PathLike):
                return [self.crop_cache.crop(source)]
            return prepare_faces(read_image(source, name), self.spec, multiple=multiple)
        except FacelabError as exc:
            label = source_name(source, name)
            msg = str(exc)
            raise type(exc)(msg if label in msg else f"{label}: {msg}") from None

    def embed_faces(self, source: ImageInput, name: str | None = None) -> tuple[list[FaceCrop], np.ndarray]:
        """Every face of one image and their raw embeddings (F, D)."""
        crops = self.faces(source, multiple=True, name=name)
        return crops, self.embed_crops([c.image for c in crops])

    def embed(self, sources: Sequence[ImageInput], *, desc: str = "embed", strict: bool = True,
              names: Sequence[str] | None = None) -> Embedded:
        """One face per source (the policy's choice when a photo holds several). Cached and repeated sources are
        embedded once. ``strict`` raises on the first unusable source; otherwise it is listed in ``failed``.
        ``names`` (one per source) are what messages call the images (default: their paths)."""
        keys = [source_key(s) for s in sources]
        found: dict[int, tuple[np.ndarray, str]] = {}
        first_of: dict[str, int] = {}
        todo: list[int] = []
        for i, k in enumerate(keys):
            hit = self.cache.get(k) if (self.cache is not None and k is not None) else None
            if hit is not None:
                found[i] = hit
            elif k is not None and k in first_of:
                continue  # a repeat of an image already queued
            else:
                todo.append(i)
                if k is not None:
                    first_of[k] = i
        failed: list[tuple[int, str]] = []
        batch_idx: list[int] = []
        batch_inputs: list[torch.Tensor] = []  # the model's inputs, not the crops: a batch never holds full images
        batch_methods: list[str] = []
        new: dict[str, tuple[np.ndarray, str]] = {}
        bar = tqdm(total=len(todo), desc=desc, unit="img", disable=not self.progress or not todo, leave=False,
                   dynamic_ncols=True)

        def flush() -> None:
            if not batch_inputs:
                return
            emb = self.forward(torch.stack(batch_inputs))
            self.calls += len(batch_inputs)
            for j, (i, method) in enumerate(zip(batch_idx, batch_methods, strict=True)):
                found[i] = (emb[j], method)
                if keys[i] is not None:
                    new[keys[i]] = found[i]  # type: ignore[index]
            bar.update(len(batch_inputs))
            batch_idx.clear()
            batch_inputs.clear()
            batch_methods.clear()

        if self.crop_cache is not None:  # detect + align the files not yet cached, in parallel processes
            files = [sources[i] for i in todo if isinstance(sources[i], str | os.PathLike)]
            self.crop_cache.prepare([f for f in files if os.path.isfile(f)],  # type: ignore[arg-type]
                                    progress=self.progress)
        try:
            for i in todo:
                try:
                    (crop,) = self.faces(sources[i], name=names[i] if names is not None else None)
                except (ImageError, FacelabError) as exc:
                    if strict:
                        raise
                    failed.append((i, str(exc)))
                    bar.update(1)
                    continue
                batch_idx.append(i)
                batch_inputs.append(self.transform(crop.image))  # the decoded image is freed right here
                batch_methods.append(crop.method)
                del crop
                if len(batch_inputs) >= self.batch_size:
                    flush()
            flush()
        finally:
            bar.close()
            if self.cache is not None:
                self.cache.update(new)
        bad = {i for i, _ in failed}
        done, rows, methods = [], [], []
        for i, k in enumerate(keys):
            if i not in found and k is not None and k in first_of and first_of[k] in found:
                found[i] = found[first_of[k]]
            if i in found:
                done.append(i)
                rows.append(found[i][0])
                methods.append(found[i][1])
            elif i not in bad and k is not None and first_of.get(k) in bad:
                failed.append((i, dict(failed)[first_of[k]]))
        dim = rows[0].shape[0] if rows else 0
        emb = np.stack(rows).astype(np.float32) if rows else np.zeros((0, dim), np.float32)
        return Embedded(emb, done, methods, sorted(failed))

    def embed_all(self, sources: Sequence[ImageInput], desc: str = "embed") -> np.ndarray:
        """Strict :meth:`embed`: (N, D) raw float32 in the order of ``sources`` (evaluation protocols)."""
        return self.embed(sources, desc=desc, strict=True).embeddings
