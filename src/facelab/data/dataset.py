"""Dataset over a split manifest's (relative path, label) list."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from facelab.data.transforms import base_transform
from facelab.errors import FacelabError
from facelab.faces.base import NoFaceFound
from facelab.images import ImageError, ImageNotFound, read_image, read_image_tensor

log = logging.getLogger(__name__)


class FaceDataset(Dataset[tuple[torch.Tensor, int]]):
    """Images of ``items`` under ``root``, resized to ``input_size``, then passed through ``transform``.

    With ``cache`` every image is decoded once in the constructor (an undecodable file is then an error naming it,
    before any training). Without it an image that fails to decode mid-epoch is replaced by another image of the same
    identity and reported once, so a long run never dies on one bad file.

    ``reader`` turns a file path into the PIL image (or uint8 tensor) used (default: the image gate's
    :func:`read_image`; with ``fast_decode`` :func:`read_image_tensor`, torchvision.io for JPEGs and Pillow's reduced
    DCT scale for large ones); training on raw photos passes the aligned-crop cache's reader
    (:func:`facelab.faces.cache.reader_for`).
    """

    def __init__(self, root: str | Path, items: Sequence[tuple[str, int]], input_size: int,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None, cache: bool = False,
                 reader: Callable[[Path], Image.Image | torch.Tensor] | None = None, progress: bool = False,
                 fast_decode: bool = False) -> None:
        self.root = Path(root)
        self.reader = reader or (partial(read_image_tensor, size_hint=input_size) if fast_decode else read_image)
        self.items = list(items)
        self.base = base_transform(input_size)
        self.transform = transform
        self.failed: set[str] = set()
        self._cache: list[torch.Tensor] | None = None
        if cache:
            what = "decode + align" if reader is not None else "decode"
            self._cache = [self._decode_strict(p) for p, _ in tqdm(self.items, desc=what, unit="img",
                                                                    disable=not progress, leave=False)]

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> list[int]:
        return [y for _, y in self.items]

    def _decode(self, rel: str) -> torch.Tensor:
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
