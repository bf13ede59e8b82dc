"""The contract between detectors, the aligner and everything that embeds: :class:`Detection` in,
:class:`FaceCrop` out.

``prepare_faces(image, spec, multiple=...)`` (in :mod:`facelab.faces.pipeline`, exported by :mod:`facelab.faces`)
is the only call the embedding primitive makes. With ``align="none"`` (the image is already a face crop) it returns
the whole image resized to the model's input; with a detector name it detects, picks the face(s) by the documented
policy and warps each onto the ArcFace template.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from PIL import Image

from facelab.errors import FacelabError
from facelab.registry import Registry


class NoFaceFound(FacelabError):
    """A photo in which the detector finds no face (and that is not itself a face crop)."""


@dataclass(frozen=True)
class Detection:
    """One detected face in original-image pixels: ``box`` (x, y, w, h), detector ``score`` in [0, 1], and
    ``landmarks`` (5, 2) float32: left eye, right eye, nose tip, left and right mouth corners (left/right as seen in
    the image)."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray


class Detector(Protocol):
    """``detect(rgb)`` on an (H, W, 3) uint8 RGB array -> detections, best score first."""

    name: str

    def detect(self, rgb: np.ndarray) -> list[Detection]: ...


#: name -> ``fn(**options) -> Detector``
DETECTORS: Registry[Detector] = Registry("face detector")


@dataclass(frozen=True)
class FaceCrop:
    """A face ready for the model: ``image`` is RGB, S x S when aligned (a resized crop is left at its size: the
    model's transform resizes it exactly as training did). ``method`` says how it was made: ``"resized"`` (no
    detection asked: the whole image), ``"aligned"`` (detected, warped onto the template with ``transform``, a 2x3
    matrix from image to crop pixels) or ``"undetected"`` (detection found nothing in a face-sized image, used as a
    crop). ``box`` is in the original image's pixels (x, y, w, h)."""

    image: Image.Image
    box: tuple[float, float, float, float]
    method: str
    score: float | None = None
    landmarks: np.ndarray | None = None
    transform: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, object]:
        return {"box": [round(float(v), 2) for v in self.box], "method": self.method,
                "score": None if self.score is None else round(float(self.score), 4),
                "landmarks": None if self.landmarks is None else np.round(self.landmarks, 2).tolist()}
