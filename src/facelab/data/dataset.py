"""Dataset over a split manifest's (relative path, label) list."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from facelab.data.transforms import base_transform
from facelab.errors import FacelabError
from facelab.faces.base import NoFaceFound
from facelab.images import ImageError, ImageNotFound, read_image, read_image_tensor
from facelab.utils.io import write_json

log = logging.getLogger(__name__)


class FaceDataset(Dataset[tuple[torch.Tensor, int]]):
    """Images of ``items`` under ``root``, resized to ``input_size``, then passed through ``transform``.

    With ``cache`` every image is decoded once in the constructor (an undecodable file is then an error naming it,
    before any training). Without it an image that fails to decode mid-epoch is replaced by another image of the same
    identity and reported once, so a long run never dies on one bad file.

    With ``cache_dir`` as well, the decoded images live in a memory-mapped uint8 file in that folder instead of RAM
    (:class:`DecodedCache`): datasets larger than memory are paged in by the operating system, loader processes
    share the pages, and a resumed run or another run on the same files and settings reuses the file.

    ``reader`` turns a file path into the PIL image (or uint8 tensor) used (default: the image gate's
    :func:`read_image`; with ``fast_decode`` :func:`read_image_tensor`, torchvision.io for JPEGs and Pillow's reduced
    DCT scale for large ones); training on raw photos passes the aligned-crop cache's reader
    (:func:`facelab.faces.cache.reader_for`).
    """

    def __init__(self, root: str | Path, items: Sequence[tuple[str, int]], input_size: int,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None, cache: bool = False,
                 reader: Callable[[Path], Image.Image | torch.Tensor] | None = None, progress: bool = False,
                 fast_decode: bool = False, cache_dir: str | Path | None = None, cache_key: str = "") -> None:
        self.root = Path(root)
        self.reader = reader or (partial(read_image_tensor, size_hint=input_size) if fast_decode else read_image)
        #: how an image record's bytes are decoded (always through the gate)
        self.bytes_reader: Callable[[tuple[str, bytes]], Image.Image | torch.Tensor] = (
            partial(read_image_tensor, size_hint=input_size) if fast_decode else read_image)
        self.items = list(items)
        self.base = base_transform(input_size)
        self.transform = transform
        self.failed: set[str] = set()
        self._cache: list[torch.Tensor] | DecodedCache | None = None
        if cache:
            what = "decode + align" if reader is not None else "decode"
            if cache_dir:
                key = f"{cache_key}|fast={fast_decode}|reader={'gate' if reader is None else 'custom'}"
                self._cache = DecodedCache.open_or_build(Path(cache_dir), self.root, self.items, input_size, key,
                                                         self._decode_strict, progress, what)
            else:
                self._cache = [self._decode_strict(p) for p, _ in tqdm(self.items, desc=what, unit="img",
                                                                        disable=not progress, leave=False)]

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> list[int]:
        return [y for _, y in self.items]

    def _decode(self, rel: str) -> torch.Tensor:
        if ".rec#" in rel:  # an image record of an insightface RecordIO file (facelab.data.recordio)
            name, key = rel.rsplit("#", 1)
            records = self.__dict__.setdefault("_records", {})
            if name not in records:
                from facelab.data.recordio import RecordFile

                records[name] = RecordFile(self.root / name)
            where, data, _ = records[name].image(int(key))
            return self.base(self.bytes_reader((where, data)))
        return self.base(self.reader(self.root / rel))

    def _decode_strict(self, rel: str) -> torch.Tensor:
        try:
            return self._decode(rel)
        except ImageNotFound:
            raise FacelabError(f"image listed in the split is missing: {self.root / rel}") from None

    def _load(self, index: int) -> torch.Tensor:
        if self._cache is not None:
            return self._cache[index]
        rel, label = self.items[index]
        try:
            return self._decode(rel)
        except (ImageError, NoFaceFound) as exc:
            if rel not in self.failed:
                self.failed.add(rel)
                log.warning("skipping undecodable image %s: %s", self.root / rel, exc)
            for j in range(1, len(self.items)):
                alt, alt_label = self.items[(index + j) % len(self.items)]
                if alt_label == label and alt not in self.failed:
                    return self._load((index + j) % len(self.items))
            raise FacelabError(f"no decodable image left for label {label} (last tried {rel})") from exc

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self._load(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, self.items[index][1]


class DecodedCache:
    """Decoded images (N, 3, S, S) uint8 in a memory-mapped file ``<folder>/decoded-<S>-<key>.u8`` with a JSON
    sidecar naming what it holds. The key hashes the data root, every file's path, size and modification time, the
    input size and how images are read, so a changed file or setting builds a new cache instead of reading a stale
    one. Built once (written to a temporary name, then renamed: a killed build leaves no half file), then opened
    read-only."""

    def __init__(self, array: np.memmap) -> None:
        self.array = array

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.array[i]))  # a copy: the mapping is read-only

    @staticmethod
    def key(root: Path, items: Sequence[tuple[str, int]], size: int, extra: str) -> str:
        h = hashlib.sha256(f"{root.resolve()}|{size}|{extra}".encode())
        for rel, _ in items:
            try:
                st = (root / rel).stat()
                h.update(f"|{rel}|{st.st_size}|{st.st_mtime_ns}".encode())
            except OSError:
                h.update(f"|{rel}|missing".encode())
        return h.hexdigest()[:20]

    @classmethod
    def open_or_build(cls, folder: Path, root: Path, items: Sequence[tuple[str, int]], size: int, extra: str,
                      decode: Callable[[str], torch.Tensor], progress: bool, desc: str) -> DecodedCache:
        key = cls.key(root, items, size, extra)
        path = folder / f"decoded-{size}-{key}.u8"
        meta = {"format": "facelab-decoded-cache", "version": 1, "images": len(items), "size": size,
                "root": str(root), "key": key}
        shape = (len(items), 3, size, size)
        side = path.with_suffix(".json")
        if path.is_file() and side.is_file():
            try:
                ok = json.loads(side.read_text()) == meta and path.stat().st_size == int(np.prod(shape))
            except (OSError, ValueError):
                ok = False
            if ok:
                return cls(np.memmap(path, dtype=np.uint8, mode="r", shape=shape))
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            out = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=shape)
            for i, (rel, _) in enumerate(tqdm(items, desc=f"{desc} (to {path.name})", unit="img",
                                              disable=not progress, leave=False)):
                img = decode(rel)
                if tuple(img.shape) != shape[1:]:
                    raise FacelabError(f"decoded {root / rel} to {tuple(img.shape)}, expected {shape[1:]}")
                out[i] = img.numpy()
            out.flush()
            del out
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        write_json(side, meta)
        return cls(np.memmap(path, dtype=np.uint8, mode="r", shape=shape))
