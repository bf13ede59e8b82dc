"""Five-point alignment: the least-squares similarity transform that carries a face's landmarks onto the ArcFace
template, and the OpenCV warp that cuts the S x S crop with it.

Landmark order everywhere (as :class:`facelab.faces.base.Detection`): eye on the image's left, eye on the image's
right, nose tip, mouth corner on the image's left, mouth corner on the image's right.
"""

from __future__ import annotations

import math

import numpy as np

from facelab.errors import FacelabError

#: The ArcFace / InsightFace 112 x 112 five-point template (x, y) in pixels (Deng et al., "ArcFace", CVPR 2019;
#: the reference points of the insightface repository and of OpenCV's ``FaceRecognizerSF.alignCrop``).
ARCFACE_TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                                 [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)

#: Where a face-sized crop that no detector can see is assumed to hold its landmarks, as fractions of its width and
#: height: the mean YuNet landmarks over the 400 ORL images (tight 92 x 112 face crops), averaged with their mirror
#: image so the assumption is left-right symmetric. Used for ``FaceCrop.method == "undetected"``.
CROP_LANDMARKS = np.array([[0.318, 0.466], [0.682, 0.466], [0.500, 0.635], [0.348, 0.766], [0.652, 0.766]],
                          np.float64)

#: How a crop is filled where it reaches outside the photo (``cv2`` border modes). ``reflect`` (the default)
#: mirrors the surroundings: a tight crop's aligned face then has hair and wall at its edges, as the same face in a
#: photo has, instead of black bands a model learns to rely on (the ArcFace reference crops use ``black``; measured
#: in docs/faces.md).
FILL_MODES = {"reflect": 4, "replicate": 1, "black": 0}  # cv2.BORDER_REFLECT_101, BORDER_REPLICATE, BORDER_CONSTANT
DEFAULT_FILL = "reflect"

#: A warp that shrinks by more than this first area-resamples the face region (bilinear warping alone would
#: alias a 1000-pixel face drawn into 112 pixels).
MAX_WARP_SHRINK = 0.5


def template(size: int) -> np.ndarray:
    """The (5, 2) float64 template for an ``size`` x ``size`` crop: the 112 template scaled by ``size / 112``."""
    if size <= 0:
        raise FacelabError(f"crop size must be positive, got {size}")
    return ARCFACE_TEMPLATE_112 * (size / 112.0)


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2 x 3 similarity (rotation, uniform scale, translation; no reflection) ``M`` minimising
    ``sum_i || M [src_i; 1] - dst_i ||^2``.

    With ``a = s cos(t)``, ``b = s sin(t)`` the model ``x' = a x - b y + tx``, ``y' = b x + a y + ty`` is linear in
    (a, b, tx, ty), so the optimum is an ordinary linear least-squares solution (the same minimiser as Umeyama's
    closed form, "Least-squares estimation of transformation parameters between two point patterns", IEEE PAMI
    1991), computed in float64.

    Args:
        src, dst: (N, 2) corresponding points, N >= 2.

    Raises:
        FacelabError: fewer than 2 points, non-finite values, or all source points coincide.
    """
    s = np.asarray(src, np.float64)
    d = np.asarray(dst, np.float64)
    if s.ndim != 2 or s.shape[1] != 2 or s.shape != d.shape or len(s) < 2:
        raise FacelabError(f"similarity needs two matching (N, 2) point sets with N >= 2, got {s.shape} and "
                           f"{d.shape}")
    if not (np.isfinite(s).all() and np.isfinite(d).all()):
        raise FacelabError("landmarks must be finite numbers")
    if np.ptp(s, axis=0).max() < 1e-6:
        raise FacelabError("landmarks all coincide: no transform can be estimated")
    n = len(s)
    a = np.zeros((2 * n, 4))
    a[0::2] = np.c_[s[:, 0], -s[:, 1], np.ones(n), np.zeros(n)]
    a[1::2] = np.c_[s[:, 1], s[:, 0], np.zeros(n), np.ones(n)]
    (pa, pb, tx, ty), *_ = np.linalg.lstsq(a, d.reshape(-1), rcond=None)
    return np.array([[pa, -pb, tx], [pb, pa, ty]], np.float64)


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2 x 3 affine ``matrix`` to (N, 2) points."""
    p = np.asarray(points, np.float64)
    return p @ np.asarray(matrix, np.float64)[:, :2].T + np.asarray(matrix, np.float64)[:, 2]


def warp(rgb: np.ndarray, matrix: np.ndarray, size: int, fill: str = DEFAULT_FILL) -> np.ndarray:
    """The ``size`` x ``size`` crop ``out[y, x] = rgb[M^-1 (x, y)]`` (bilinear). Where the crop reaches outside the
    image it is filled per ``fill`` (:data:`FILL_MODES`).

    When ``M`` shrinks by more than :data:`MAX_WARP_SHRINK` (a big face in a big photo), the part of the image the
    crop covers is first resized with ``INTER_AREA`` so the warp samples a band-limited image.
    """
    import cv2

    m = np.asarray(matrix, np.float64)
    scale = math.sqrt(abs(np.linalg.det(m[:, :2])))
    src = rgb
    if scale < MAX_WARP_SHRINK:
        inv = cv2.invertAffineTransform(m)
        corners = transform_points(inv, np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64))
        h, w = rgb.shape[:2]
        x0, y0 = (max(0, math.floor(v) - 2) for v in corners.min(0))
        x1, y1 = min(w, math.ceil(corners[:, 0].max()) + 2), min(h, math.ceil(corners[:, 1].max()) + 2)
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            nw, nh = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
            src = cv2.resize(rgb[y0:y1, x0:x1], (nw, nh), interpolation=cv2.INTER_AREA)
            kx, ky = nw / (x1 - x0), nh / (y1 - y0)
            # crop <- original is M; original <- small is p = (q + 0.5) / k - 0.5 + (x0, y0) (cv2.resize maps
            # pixel centres), so crop <- small is M composed with that
            m = m @ np.array([[1 / kx, 0, x0 + 0.5 / kx - 0.5], [0, 1 / ky, y0 + 0.5 / ky - 0.5], [0, 0, 1]],
                             np.float64)
    return cv2.warpAffine(np.ascontiguousarray(src), m, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=FILL_MODES[fill])


def align(rgb: np.ndarray, landmarks: np.ndarray, size: int, fill: str = DEFAULT_FILL
          ) -> tuple[np.ndarray, np.ndarray]:
    """(crop (size, size, 3) uint8, 2 x 3 float64 transform from image to crop pixels) for a face whose five
    ``landmarks`` (5, 2) are in ``rgb``'s pixels."""
    matrix = estimate_similarity(landmarks, template(size))
    return warp(rgb, matrix, size, fill), matrix
