"""Face alignment in the data pipeline (``data.align``): each photo becomes its one face crop before resizing, the
same crop a deployed model with that alignment sees (:func:`facelab.faces.base.prepare_faces`)."""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

from facelab.config import DataConfig
from facelab.faces.base import prepare_faces
from facelab.inference.spec import NO_ALIGN, InputSpec

#: ``data.align`` value meaning "the init model's alignment when fine-tuning, none otherwise"
AUTO = "auto"


def resolved_align(cfg: DataConfig) -> str:
    """The detector name or ``"none"`` (``auto`` left unresolved, i.e. no init model, means none)."""
    return NO_ALIGN if cfg.align in (AUTO, "") else cfg.align


def face_preparer(cfg: DataConfig) -> Callable[[Image.Image], Image.Image] | None:
    """None when ``data.align`` resolves to none; else photo -> its face crop (``NoFaceFound`` when there is none).

    Raises:
        FacelabError: an unknown detector name (when the first photo is prepared).
    """
    align = resolved_align(cfg)
    if align == NO_ALIGN:
        return None
    spec = InputSpec(input_size=cfg.input_size, mean=cfg.mean, std=cfg.std, align=align)
    return lambda image: prepare_faces(image, spec)[0].image


def uses_alignment(cfg: DataConfig) -> bool:
    return resolved_align(cfg) != NO_ALIGN
