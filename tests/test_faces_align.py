"""Five-point alignment: the least-squares similarity against independent references, and the warp placing known
points on the template to sub-pixel accuracy (also through the anti-aliasing pre-shrink for large faces)."""

from __future__ import annotations

import numpy as np
import pytest
from scenes import similarity

from facelab.errors import FacelabError
from facelab.faces.align import ARCFACE_TEMPLATE_112, estimate_similarity, template, transform_points, warp


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Reference: Umeyama (1991) closed form with scale, float64, written from the paper's eqs. (34)-(42)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    var_s = (xs ** 2).sum() / len(src)
    cov = xd.T @ xs / len(src)
    u, d, vt = np.linalg.svd(cov)
    s = np.eye(2)
    if np.linalg.det(cov) < 0:
        s[1, 1] = -1
    r = u @ s @ vt
    c = np.trace(np.diag(d) @ s) / var_s
    t = mu_d - c * r @ mu_s
    return np.c_[c * r, t]


def test_exact_similarity_is_recovered() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = similarity(rng.uniform(-180, 180), rng.uniform(0.05, 20), *rng.uniform(-500, 500, 2))
        src = rng.uniform(0, 1000, (5, 2))
        got = estimate_similarity(src, transform_points(m, src))
        np.testing.assert_allclose(got, m, rtol=1e-9, atol=1e-7)


def test_noisy_points_match_umeyama_and_opencv() -> None:
    import cv2

    rng = np.random.default_rng(1)
    for _ in range(20):
        m = similarity(rng.uniform(-60, 60), rng.uniform(0.3, 5), *rng.uniform(-100, 300, 2))
        src = transform_points(m, ARCFACE_TEMPLATE_112) + rng.normal(0, 4, (5, 2))  # a detector's noisy points
        dst = ARCFACE_TEMPLATE_112
        got = estimate_similarity(src, dst)
        np.testing.assert_allclose(got, umeyama(src, dst), atol=1e-9)
        # OpenCV: every point an inlier (huge threshold), then its Levenberg-Marquardt refinement of the same cost
        ref, inliers = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=1e6,
                                                   refineIters=100)
        assert inliers.all()
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-3)  # an iterative solver: looser


def test_degenerate_points_are_errors() -> None:
    with pytest.raises(FacelabError, match="coincide"):
        estimate_similarity(np.ones((5, 2)), ARCFACE_TEMPLATE_112)
    with pytest.raises(FacelabError, match="finite"):
        estimate_similarity(np.full((5, 2), np.nan), ARCFACE_TEMPLATE_112)
    with pytest.raises(FacelabError, match="matching"):
        estimate_similarity(np.ones((5, 2)), np.ones((4, 2)))


def test_template_scales_with_size() -> None:
    np.testing.assert_allclose(template(112), ARCFACE_TEMPLATE_112)
    np.testing.assert_allclose(template(64), ARCFACE_TEMPLATE_112 * 64 / 112)


def _dots(shape: tuple[int, int], points: np.ndarray, sigma: float) -> np.ndarray:
    """An RGB image with a Gaussian dot of ``sigma`` pixels centred exactly on each point (pixel-centre coords)."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    img = np.zeros(shape)
    for x, y in points:
        img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))
    return np.repeat(np.clip(img * 255, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


def _centroids(crop: np.ndarray, near: np.ndarray, radius: int = 6) -> np.ndarray:
    g = crop[:, :, 0].astype(np.float64)
    out = []
    for x, y in near:
        x0, y0 = round(x) - radius, round(y) - radius
        win = g[y0:y0 + 2 * radius + 1, x0:x0 + 2 * radius + 1]
        yy, xx = np.mgrid[y0:y0 + win.shape[0], x0:x0 + win.shape[1]]
        out.append([(win * xx).sum() / win.sum(), (win * yy).sum() / win.sum()])
    return np.array(out)


@pytest.mark.parametrize(("scale", "angle", "size"), [(2.2, 17.0, 112), (0.6, -35.0, 112), (14.0, 8.0, 112),
                                                      (3.0, 0.0, 64)])
def test_warp_puts_known_landmarks_on_the_template(scale: float, angle: float, size: int) -> None:
    """Landmarks moved by a known similarity into a photo come back to the template within 0.5 px; scale 14 goes
    through the area-resampling path (a 1500-pixel face cut into 112 pixels)."""
    m = similarity(angle, scale, 40.0 * scale, 30.0 * scale)  # template pixels -> photo pixels
    pts = transform_points(m, ARCFACE_TEMPLATE_112)
    h = w = int(np.ceil(pts.max() + 60 * scale))
    photo = _dots((h, w), pts, sigma=1.6 * scale)
    dst = template(size)
    crop = warp(photo, estimate_similarity(pts, dst), size)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    err = np.linalg.norm(_centroids(crop, dst, radius=max(4, size // 20)) - dst, axis=1)
    assert err.max() < 0.5, err
