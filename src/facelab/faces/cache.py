"""Aligned face crops computed once and kept on disk, for training and evaluation on raw photos (``data.align``).

A crop is stored under a folder named by a digest of everything it depends on -- detector and its weights, crop
size, the alignment options, this cache's format -- and a file named by a digest of the image's resolved path,
size and modification time. A changed file or another detector setting is therefore recomputed, never served
stale; a photo without a face is remembered as such (so an epoch does not detect it again). Entries are written
atomically: the crop first, then the record that marks the entry complete.

Location: ``$FACELAB_CACHE/faces`` if set, else ``$XDG_CACHE_HOME/facelab/faces``, else ``~/.cache/facelab/faces``.
Deleting it only costs the time to detect again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from facelab.errors import FacelabError
from facelab.faces.base import DETECTORS, FaceCrop, NoFaceFound
from facelab.faces.parallel import default_workers, parallel_map
from facelab.faces.pipeline import AlignOptions, faces_in
from facelab.images import ImageError, read_image
from facelab.utils.io import atomic_open, write_json

if TYPE_CHECKING:
    from facelab.inference.spec import InputSpec

CACHE_ENV = "FACELAB_CACHE"
#: bump when the stored crops would differ for the same settings (alignment or storage changes)
CACHE_VERSION = 1
#: statuses of a cached image, in report order
STATUSES = ("aligned", "several", "undetected", "no_face", "failed")


def cache_root() -> Path:
    """The folder crops are cached under (see the module docstring)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env) / "faces"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "facelab" / "faces"


def check_align(detector: str, options: dict[str, Any] | None) -> None:
    """Raise a FacelabError now for an unknown detector or align option (before a long scan or training)."""
    if detector != "none":
        DETECTORS.get(detector)
    AlignOptions.from_dict(options)


@dataclass(frozen=True)
class CropCache:
    """Aligned crops of image files for one detector, crop size and option set. Picklable (data-loader workers and
    detection workers get a copy)."""

    detector: str
    size: int
    options: tuple[tuple[str, Any], ...]
    root: Path

    @classmethod
    def create(cls, detector: str, size: int, options: dict[str, Any] | None = None,
               root: str | Path | None = None) -> CropCache:
        check_align(detector, options)
        if detector == "none":
            raise FacelabError("a crop cache needs a detector (align is 'none')")
        full = AlignOptions.from_dict(options).to_dict()
        return cls(detector, int(size), tuple(sorted(full.items())), Path(root) if root else cache_root())

    @classmethod
    def for_spec(cls, spec: InputSpec, root: str | Path | None = None) -> CropCache:
        """The cache for a model's input spec (``spec.align`` must name a detector)."""
        return cls.create(spec.align, spec.input_size, spec.align_options, root)

    @property
    def opts(self) -> AlignOptions:
        return AlignOptions.from_dict(dict(self.options))

    @property
    def folder(self) -> Path:
        from facelab.faces.detectors import weights_id

        settings = {"version": CACHE_VERSION, "detector": self.detector, "weights": weights_id(self.detector),
                    "size": self.size, "options": dict(self.options)}
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]
        return self.root / f"{self.detector}-{self.size}-{digest}"

    def _entry(self, path: str | Path) -> tuple[Path, Path]:
        p = Path(path)
        try:
            st = p.stat()
        except FileNotFoundError:
            raise FacelabError(f"image not found: {p}") from None
        key = hashlib.sha1(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
        base = self.folder / key[:2] / key
        return base.with_suffix(".png"), base.with_suffix(".json")

    def lookup(self, path: str | Path) -> dict[str, Any] | None:
        """The stored record of ``path`` (None when absent or incomplete)."""
        png, rec = self._entry(path)
        try:
            doc = json.loads(rec.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if doc.get("status") in ("aligned", "several", "undetected") and not png.is_file():
            return None
        return doc

    def compute(self, path: str | Path) -> dict[str, Any]:
        """Detect and align ``path`` now and store the result; returns its record (status ``failed`` for an image
        that cannot be decoded, which is not stored: the next look tries again)."""
        png, rec = self._entry(path)
        try:
            image = read_image(path)
        except ImageError as exc:
            return {"status": "failed", "error": str(exc)}
        try:
            crops = faces_in(image, self.detector, self.size, self.opts, multiple=True)
        except NoFaceFound as exc:
            doc: dict[str, Any] = {"status": "no_face", "error": f"{path}: {exc}"}
            write_json(rec, doc)
            return doc
        crop = crops[0]
        found = 0 if crop.method == "undetected" else len(crops)
        with atomic_open(png, "wb") as fh:
            crop.image.save(fh, format="PNG")
        doc = {"status": "undetected" if found == 0 else ("several" if found > 1 else "aligned"),
               "faces_found": found, **crop.to_dict(),
               "transform": None if crop.transform is None else np.asarray(crop.transform).tolist()}
        write_json(rec, doc)
        return doc

    def crop(self, path: str | Path) -> FaceCrop:
        """The face crop of image file ``path`` (the policy's face), from the cache or computed now.

        Raises:
            NoFaceFound: no face (and the image is not usable whole); the message names the file.
            ImageError: the file cannot be decoded.
        """
        doc = self.lookup(path) or self.compute(path)
        status = doc["status"]
        if status == "no_face":
            raise NoFaceFound(doc["error"])
        if status == "failed":
            read_image(path)  # raises the gate's error naming the file
            raise FacelabError(doc["error"])  # pragma: no cover - the file was fixed in between
        png, _ = self._entry(path)
        image = read_image(png)
        lm = doc.get("landmarks")
        tf = doc.get("transform")
        return FaceCrop(image, tuple(doc["box"]), doc["method"], doc.get("score"),  # type: ignore[arg-type]
                        None if lm is None else np.asarray(lm, np.float32),
                        None if tf is None else np.asarray(tf, np.float64))

    def image(self, path: str | Path) -> Image.Image:
        """:meth:`crop`'s image (the reader a dataset uses instead of decoding the photo)."""
        return self.crop(path).image

    def prepare(self, paths: Sequence[str | Path], *, workers: int | None = None, progress: bool = True,
                desc: str = "detect + align") -> dict[str, dict[str, Any]]:
        """Make sure every image of ``paths`` is in the cache (missing ones computed in parallel, with a progress
        bar); returns ``str(path) -> record``."""
        from tqdm import tqdm

        out: dict[str, dict[str, Any]] = {}
        todo: list[str] = []
        for p in paths:
            doc = self.lookup(p)
            if doc is None:
                todo.append(str(p))
            else:
                out[str(p)] = doc
        n = default_workers() if workers is None else workers
        with tqdm(total=len(todo), desc=desc, unit="img", disable=not progress or not todo, leave=False) as bar:
            for p, doc in parallel_map(_compute_job, [(self, p) for p in todo], n):
                out[p] = doc
                bar.update(1)
        return out


def _compute_job(job: tuple[CropCache, str]) -> tuple[str, dict[str, Any]]:
    cache, path = job
    return path, cache.compute(path)


def status_counts(records: dict[str, dict[str, Any]]) -> dict[str, int]:
    counts = Counter(r["status"] for r in records.values())
    return {s: counts.get(s, 0) for s in STATUSES}


def describe_counts(counts: dict[str, int]) -> str:
    """``"1200 aligned, 30 several faces, 4 used without detection, 2 no face, 0 failed"``."""
    words = {"aligned": "aligned", "several": "several faces (one kept by the policy)",
             "undetected": "used without detection", "no_face": "no face", "failed": "unreadable"}
    return ", ".join(f"{counts.get(s, 0)} {words[s]}" for s in STATUSES)


def reader_for(detector: str, size: int, options: dict[str, Any] | None) -> Callable[[Path], Image.Image] | None:
    """The image reader a training or evaluation dataset uses: None for ``align="none"`` (decode the file as it
    is), else the aligned crop from the cache."""
    if detector == "none":
        return None
    return CropCache.create(detector, size, options).image

