"""Faces in photos: detection behind a registry, 5-point alignment onto the ArcFace template, and the policy that
turns a decoded image into the face crop(s) a model embeds (:func:`prepare_faces`)."""

from facelab.faces import detectors as _detectors  # noqa: F401  (registers yunet and retinaface)
from facelab.faces.base import DETECTORS, Detection, Detector, FaceCrop, NoFaceFound
from facelab.faces.pipeline import prepare_faces

__all__ = ["DETECTORS", "Detection", "Detector", "FaceCrop", "NoFaceFound", "prepare_faces"]
