"""Face alignment in the data pipeline (``data.align``): each photo becomes its one face crop before resizing, the
same crop a deployed model with that alignment sees (:func:`facelab.faces.prepare_faces`)."""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

from facelab.config import DataConfig
from facelab.faces.base import prepare_faces
from facelab.inference.spec import NO_ALIGN, InputSpec


def uses_alignment(cfg: DataConfig) -> bool:
    return cfg.align not in (NO_ALIGN, "")


def face_preparer(cfg: DataConfig) -> Callable[[Image.Image], Image.Image] | None:
    """None when ``data.align`` is none; else photo -> its face crop (``NoFaceFound`` when there is none).

    Raises:
        FacelabError: an unknown detector name (when the first photo is prepared).
    """
    if not uses_alignment(cfg):
        return None
    spec = InputSpec(input_size=cfg.input_size, mean=cfg.mean, std=cfg.std, align=cfg.align,
                     align_options=dict(cfg.align_options))
    return lambda image: prepare_faces(image, spec)[0].image
