"""From a decoded photo to aligned face crops: detect (downscaling large photos, upscaling tiny ones, retrying on
a histogram-equalised copy), choose the face(s) by the several-faces policy, warp each onto the ArcFace template,
and fall back to using a face-sized image whole when no detector can see its face.

Everything a model needs to repeat this is in its :class:`~facelab.inference.spec.InputSpec`: ``align`` (the
detector name) and ``align_options`` (the keys of :class:`AlignOptions`), so training, evaluation and deployment
crop faces the same way. The measurements behind each default are in docs/faces.md.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from facelab.errors import FacelabError
from facelab.faces import align as _align
from facelab.faces.base import Detection, FaceCrop, NoFaceFound
from facelab.registry import Registry

if TYPE_CHECKING:
    from facelab.inference.spec import InputSpec

#: how to rank several faces; the first is the one used when one face is wanted. ``fn(detections, width, height)``
#: -> the detections in policy order.
SEVERAL_FACES: Registry[list[Detection]] = Registry("several-faces policy")


def _centre_distance(d: Detection, width: int, height: int) -> float:
    x, y, w, h = d.box
    return math.hypot(x + w / 2 - width / 2, y + h / 2 - height / 2)


@SEVERAL_FACES.register("largest")
def _largest(dets: Sequence[Detection], width: int, height: int) -> list[Detection]:
    """Largest box area first (ties: higher score)."""
    return sorted(dets, key=lambda d: (-d.box[2] * d.box[3], -d.score))


@SEVERAL_FACES.register("centre")
def _centre(dets: Sequence[Detection], width: int, height: int) -> list[Detection]:
    """Box centre nearest the image centre first."""
    return sorted(dets, key=lambda d: (_centre_distance(d, width, height), -d.score))


@SEVERAL_FACES.register("score")
def _score(dets: Sequence[Detection], width: int, height: int) -> list[Detection]:
    """Highest detector score first."""
    return sorted(dets, key=lambda d: -d.score)


@SEVERAL_FACES.register("largest_central")
def _largest_central(dets: Sequence[Detection], width: int, height: int) -> list[Detection]:
    """Largest box area minus twice the squared distance (pixels^2) of its centre from the image centre first:
    the trade-off InsightFace's detectors use to keep one face (``max_num``, metric "default")."""
    return sorted(dets, key=lambda d: -(d.box[2] * d.box[3] - 2.0 * _centre_distance(d, width, height) ** 2))


#: ``undetected`` values: what happens when the detector finds no face
UNDETECTED = ("auto", "crop", "error")


@dataclass(frozen=True)
class AlignOptions:
    """How a photo becomes face crops; read from ``InputSpec.align_options`` (unknown keys are errors).

    Attributes:
        several: policy ranking several faces (:data:`SEVERAL_FACES`); the first is used when one face is wanted.
        undetected: no face found -> ``"auto"``: a face-sized image (:meth:`face_sized`) is used whole as a crop
            (``FaceCrop.method == "undetected"``), a larger one raises :class:`NoFaceFound`; ``"crop"``: any image
            is used whole; ``"error"``: always :class:`NoFaceFound`.
        score_threshold: detector score below which a box is dropped (None: the detector's default).
        equalize: when nothing is found, detect again on a histogram-equalised copy (the crop is cut from the
            original pixels).
        detect_max_side: photos whose longer side exceeds this are downscaled for detection (boxes and landmarks
            are mapped back; the crop is cut from the full-resolution photo).
        detect_min_side: images whose longer side is below this are upscaled for detection.
        crop_max_side, crop_max_aspect: "face-sized" = longer side <= ``crop_max_side`` pixels and
            longer / shorter side <= ``crop_max_aspect``.
        fill: how a crop is filled where it reaches outside the photo (:data:`facelab.faces.align.FILL_MODES`).
        refine: take a second look at each kept face at a canonical scale (:func:`refine_landmarks`).
    """

    several: str = "largest_central"
    undetected: str = "auto"
    score_threshold: float | None = None
    equalize: bool = True
    detect_max_side: int = 1024
    detect_min_side: int = 160
    crop_max_side: int = 400
    crop_max_aspect: float = 1.5
    fill: str = _align.DEFAULT_FILL
    refine: bool = True

    def __post_init__(self) -> None:
        SEVERAL_FACES.get(self.several)
        if self.undetected not in UNDETECTED:
            raise FacelabError(f"align option undetected must be one of {', '.join(UNDETECTED)}, got "
                               f"{self.undetected!r}")
        if self.score_threshold is not None and not (isinstance(self.score_threshold, int | float)
                                                     and 0.0 <= float(self.score_threshold) <= 1.0):
            raise FacelabError(f"align option score_threshold must be in [0, 1], got {self.score_threshold!r}")
        if not isinstance(self.equalize, bool):
            raise FacelabError(f"align option equalize must be true or false, got {self.equalize!r}")
        for key in ("detect_max_side", "detect_min_side", "crop_max_side"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise FacelabError(f"align option {key} must be a positive integer, got {value!r}")
        if self.detect_min_side > self.detect_max_side:
            raise FacelabError(f"align option detect_min_side ({self.detect_min_side}) exceeds detect_max_side "
                               f"({self.detect_max_side})")
        if not isinstance(self.crop_max_aspect, int | float) or isinstance(self.crop_max_aspect, bool) \
                or self.crop_max_aspect < 1:
            raise FacelabError(f"align option crop_max_aspect must be a number >= 1, got {self.crop_max_aspect!r}")
        if not isinstance(self.refine, bool):
            raise FacelabError(f"align option refine must be true or false, got {self.refine!r}")
        if self.fill not in _align.FILL_MODES:
            raise FacelabError(f"align option fill must be one of {', '.join(_align.FILL_MODES)}, got "
                               f"{self.fill!r}")

    @classmethod
    def from_dict(cls, options: Mapping[str, Any] | None) -> AlignOptions:
        """Options from a mapping (``InputSpec.align_options``, ``data.align_options``, ``--align-option``)."""
        options = dict(options or {})
        names = [f.name for f in dataclasses.fields(cls)]
        for key in options:
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise FacelabError(f"unknown align option '{key}'{hint}; choose from {', '.join(names)}")
        return cls(**options)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def face_sized(self, width: int, height: int) -> bool:
        """Whether a ``width`` x ``height`` image is about the size of a face crop rather than a photo: its longer
        side at most ``crop_max_side`` pixels and not more elongated than ``crop_max_aspect``."""
        long, short = max(width, height), max(1, min(width, height))
        return long <= self.crop_max_side and long / short <= self.crop_max_aspect


def _resized_for_detection(rgb: np.ndarray, opts: AlignOptions) -> tuple[np.ndarray, float]:
    """(image the detector sees, its scale relative to ``rgb``)."""
    import cv2

    h, w = rgb.shape[:2]
    long = max(h, w)
    if long > opts.detect_max_side:
        f = opts.detect_max_side / long
        interp = cv2.INTER_AREA
    elif long < opts.detect_min_side:
        f = opts.detect_min_side / long
        interp = cv2.INTER_CUBIC
    else:
        return rgb, 1.0
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return cv2.resize(rgb, size, interpolation=interp), f


def _map_back(d: Detection, f: tuple[float, float], pad: int) -> Detection:
    """A detection in the detector's image (``rgb`` resized by ``f`` = (fx, fy), then bordered by ``pad`` pixels)
    -> ``rgb``'s pixels (cv2.resize maps pixel centres: ``p = (q + 0.5) / f - 0.5``)."""
    fx, fy = f
    x, y, w, h = d.box
    pts = (d.landmarks.astype(np.float64) - pad + 0.5) / np.array([fx, fy]) - 0.5
    return Detection(((x - pad + 0.5) / fx - 0.5, (y - pad + 0.5) / fy - 0.5, w / fx, h / fy), d.score,
                     pts.astype(np.float32))


def equalized(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` with its luma histogram equalised (``cv2.equalizeHist`` on Y of YCrCb; colour kept)."""
    import cv2

    ycc = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)
    ycc[:, :, 0] = cv2.equalizeHist(np.ascontiguousarray(ycc[:, :, 0]))
    return cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB)


#: a face whose box comes closer to the image border than this fraction of its larger side is detected again with
#: a black border around the image (:data:`CONTEXT_PAD`): detectors see faces with surroundings in training, and
#: without them (tight crops) YuNet put landmarks up to 10 px off at 92 x 112 (docs/faces.md)
BORDER_MARGIN = 0.2
#: the border added for that second look, as a fraction of the image's longer side
CONTEXT_PAD = 0.25


def _near_border(d: Detection, width: int, height: int) -> bool:
    x, y, w, h = d.box
    return min(x, y, width - x - w, height - y - h) < BORDER_MARGIN * max(w, h)


def find_faces(rgb: np.ndarray, detector: str, opts: AlignOptions) -> list[Detection]:
    """Every face the ``detector`` finds in an (H, W, 3) uint8 RGB array, in its pixels, best score first.

    The image is resized into [``detect_min_side``, ``detect_max_side``] for the detector. When nothing is found,
    or a face touches the border, it is detected again inside a black border of :data:`CONTEXT_PAD` (the
    bordered result is kept if it found anything); when still nothing is found and ``opts.equalize``, once more on
    the histogram-equalised bordered image.

    Raises:
        FacelabError: unknown detector, missing weights or optional wheel.
    """
    import cv2

    from facelab.faces.detectors import get_detector

    det = get_detector(detector, opts.score_threshold)
    small, _ = _resized_for_detection(rgb, opts)
    sh, sw = small.shape[:2]
    f = (sw / rgb.shape[1], sh / rgb.shape[0])
    found, pad = det.detect(small), 0
    if not found or any(_near_border(d, sw, sh) for d in found):
        p = max(1, round(CONTEXT_PAD * max(sw, sh)))
        bordered = cv2.copyMakeBorder(small, p, p, p, p, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        again = det.detect(bordered)
        if not again and not found and opts.equalize:
            again = det.detect(equalized(bordered))
        if again:
            found, pad = again, p
    return [_map_back(d, f, pad) for d in found]


#: the second look: the face warped upright by its first-pass alignment, the template's crop drawn at
#: REFINE_VIEW / REFINE_MARGIN pixels in the middle of a REFINE_VIEW x REFINE_VIEW view (black outside the photo)
REFINE_VIEW = 320
REFINE_MARGIN = 1.6


def refine_landmarks(rgb: np.ndarray, det: Detection, detector: str, opts: AlignOptions) -> Detection:
    """``det`` with its landmarks found again in a canonical view of the face: upright, at one scale and position
    (the first-pass alignment drawn into a larger view).

    YuNet's landmarks shift with the scale and roll a face is seen at: the same face as a 92 x 112 crop and pasted
    at 1-3.5x into photos gave SFace scores up to 0.11 apart (14 ORL identities); a second look at one canonical
    view brought that under 0.05 (benchmarks/faces_scenes.py, docs/faces.md). Keeps ``det`` when the second look
    finds no face near the centre of the view.
    """
    import cv2

    from facelab.faces.detectors import get_detector

    k = REFINE_VIEW / REFINE_MARGIN / 112.0
    shift = (REFINE_VIEW - 112.0 * k) / 2
    first = _align.estimate_similarity(det.landmarks, _align.template(112))
    view_m = np.array([[k, 0, shift], [0, k, shift]]) @ np.vstack([first, [0, 0, 1]])  # image -> view
    shrink = math.sqrt(abs(np.linalg.det(view_m[:, :2])))
    view = _align.warp(rgb, view_m, REFINE_VIEW, "black") if shrink < _align.MAX_WARP_SHRINK else \
        cv2.warpAffine(rgb, view_m, (REFINE_VIEW, REFINE_VIEW), flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    found = get_detector(detector, opts.score_threshold).detect(view)
    centre = _align.transform_points(np.array([[k, 0, shift], [0, k, shift]]), _align.template(112)).mean(0)

    def off(e: Detection) -> float:
        return float(np.linalg.norm(e.landmarks.mean(0) - centre))

    near = [e for e in found if off(e) < 0.15 * REFINE_VIEW / REFINE_MARGIN]
    if not near:
        return det
    best = min(near, key=off)
    inv = cv2.invertAffineTransform(view_m)
    return Detection(det.box, det.score, _align.transform_points(inv, best.landmarks).astype(np.float32))


def order_faces(dets: Sequence[Detection], policy: str, width: int, height: int) -> list[Detection]:
    """``dets`` ranked by the several-faces ``policy`` (:data:`SEVERAL_FACES`)."""
    rank: Callable[..., list[Detection]] = SEVERAL_FACES.get(policy)
    return list(rank(dets, width, height))


def aligned_crop(rgb: np.ndarray, det: Detection, size: int, fill: str = _align.DEFAULT_FILL) -> FaceCrop:
    """The detected face ``det`` warped onto the ``size`` x ``size`` template."""
    crop, matrix = _align.align(rgb, det.landmarks, size, fill)
    return FaceCrop(Image.fromarray(crop, "RGB"), tuple(float(v) for v in det.box), "aligned",  # type: ignore[arg-type]
                    float(det.score), det.landmarks.astype(np.float32), matrix)


def undetected_crop(rgb: np.ndarray, size: int, fill: str = _align.DEFAULT_FILL) -> FaceCrop:
    """A face crop no detector could see, framed as a detected one would be: its landmarks are assumed at
    :data:`facelab.faces.align.CROP_LANDMARKS` (where they sit in a typical tight crop) and warped onto the
    template like a detected face."""
    h, w = rgb.shape[:2]
    crop, matrix = _align.align(rgb, _align.CROP_LANDMARKS * np.array([w, h]), size, fill)
    return FaceCrop(Image.fromarray(crop, "RGB"), (0.0, 0.0, float(w), float(h)), "undetected", None, None, matrix)


def faces_in(image: Image.Image | np.ndarray, detector: str, size: int, opts: AlignOptions, *,
             multiple: bool = False) -> list[FaceCrop]:
    """:func:`detect_and_align` with the detector, crop size and options given directly (no InputSpec).

    Returns one crop (``multiple=False``: the first face by ``opts.several``) or every face in policy order.

    Raises:
        NoFaceFound: nothing detected, and the image may not be used whole (see ``AlignOptions.undetected``).
    """
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise FacelabError(f"expected an RGB image, got an array of {rgb.dtype} {tuple(rgb.shape)}")
    h, w = rgb.shape[:2]
    dets = find_faces(rgb, detector, opts)
    if not dets:
        if opts.undetected == "crop" or (opts.undetected == "auto" and opts.face_sized(w, h)):
            return [undetected_crop(rgb, size, opts.fill)]
        why = "" if opts.undetected == "error" else (
            f"; it is too large to be taken as a face crop itself (longer side > {opts.crop_max_side} px or "
            f"aspect > {opts.crop_max_aspect:g})")
        raise NoFaceFound(f"no face found in the {w}x{h} image by the {detector} detector{why}")
    ranked = order_faces(dets, opts.several, w, h)
    kept = ranked if multiple else ranked[:1]
    if opts.refine:
        kept = [refine_landmarks(rgb, d, detector, opts) for d in kept]
    return [aligned_crop(rgb, d, size, opts.fill) for d in kept]


def detect_and_align(image: Image.Image, spec: InputSpec, multiple: bool = False) -> list[FaceCrop]:
    """The face crop(s) of a decoded RGB photo for a model whose ``spec.align`` names a detector: detected, chosen
    by ``spec.align_options['several']`` and warped onto the ArcFace template at ``spec.input_size``.

    Returns:
        ``multiple=False``: exactly one :class:`FaceCrop`; ``multiple=True``: every face found, policy order.

    Raises:
        NoFaceFound: no face, and the image is not face-sized (or ``undetected="error"``).
        FacelabError: unknown detector or option, detector weights missing.
    """
    opts = AlignOptions.from_dict(spec.align_options)
    return faces_in(image, spec.align, spec.input_size, opts, multiple=multiple)


def whole_image(image: Image.Image) -> FaceCrop:
    """The whole image as the face (``align="none"``); the model's transform resizes it."""
    return FaceCrop(image, (0.0, 0.0, float(image.width), float(image.height)), "resized")


def prepare_faces(image: Image.Image, spec: InputSpec, *, multiple: bool = False) -> list[FaceCrop]:
    """The face crop(s) of a decoded RGB image for a model with input ``spec``.

    ``multiple=False`` returns exactly one crop (the face chosen by the policy) or raises :class:`NoFaceFound`;
    ``multiple=True`` returns every face found (at least one, or :class:`NoFaceFound`).
    """
    if not spec.aligned:
        return [whole_image(image)]
    return detect_and_align(image, spec, multiple=multiple)
