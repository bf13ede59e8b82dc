"""Face alignment in the data pipeline (``data.align``): each photo becomes its one face crop before resizing, the
same crop a deployed model with that alignment sees (:func:`facelab.faces.prepare_faces`)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from facelab.config import DataConfig
from facelab.faces.base import NoFaceFound, prepare_faces
from facelab.images import read_image
from facelab.inference.spec import NO_ALIGN, InputSpec


def uses_alignment(cfg: DataConfig) -> bool:
    return cfg.align not in (NO_ALIGN, "")


class AlignedReader:
    """path -> the photo's face crop (``data.align``'s detector, 5-point template). A photo in which no face is
    found is used whole and its path kept in ``no_face``, so the caller can report the count."""

    def __init__(self, cfg: DataConfig) -> None:
        self.spec = InputSpec(input_size=cfg.input_size, mean=cfg.mean, std=cfg.std, align=cfg.align,
                              align_options=dict(cfg.align_options))
        self.no_face: set[str] = set()

    def __call__(self, path: Path) -> Image.Image:
        image = read_image(path)
        try:
            return prepare_faces(image, self.spec)[0].image
        except NoFaceFound:
            self.no_face.add(str(path))
            return image


def aligned_reader(cfg: DataConfig) -> AlignedReader | None:
    """None when ``data.align`` is none."""
    return AlignedReader(cfg) if uses_alignment(cfg) else None
