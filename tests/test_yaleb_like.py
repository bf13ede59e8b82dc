"""The Lambertian relighting behind benchmarks/yaleb_like.py (the stand-in for Extended Yale B used to tune
fine-tuning) follows the textbook model: I = albedo * (ambient + (1 - ambient) * max(0, n . l) * visible)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
yaleb_like = pytest.importorskip("yaleb_like")


def test_flat_surface_follows_lambert_cosine_law():
    rng = np.random.default_rng(0)
    albedo = rng.uniform(0.2, 1.0, (20, 24))
    z = np.zeros((20, 24))
    for az, el in [(0, 0), (30, 0), (0, 45), (-60, 20), (100, 10)]:
        a, e = np.radians(az), np.radians(el)
        cos_theta = max(0.0, np.cos(a) * np.cos(e))  # normal (0, 0, 1) . light
        expected = albedo * (0.1 + 0.9 * cos_theta)  # from behind (az 100): ambient only
        np.testing.assert_allclose(yaleb_like.render(albedo, z, az, el, 0.1), np.clip(expected, 0, 1), atol=1e-12)


def test_a_ridge_casts_a_shadow_on_the_side_away_from_the_light():
    z = np.zeros((30, 60))
    z[:, 28:32] = 20.0  # a wall down the middle
    albedo = np.ones_like(z)
    img = yaleb_like.render(albedo, z, 60, 0, 0.05)  # light from image right
    right, left = img[:, 40:50].mean(), img[:, 10:20].mean()
    assert right == pytest.approx(0.05 + 0.95 * np.cos(np.radians(60)))
    assert left == pytest.approx(0.05)  # the wall's shadow: ambient only
    mirrored = yaleb_like.render(albedo, z, -60, 0, 0.05)
    np.testing.assert_allclose(mirrored[:, ::-1], img, atol=1e-12)


def test_face_height_peaks_at_the_nose_and_is_zero_far_away():
    lm = np.array([[30.0, 40], [60, 40], [45, 58], [34, 72], [56, 72]])
    z = yaleb_like.face_height(112, 92, lm)
    peak = np.unravel_index(np.argmax(z), z.shape)
    assert abs(peak[1] - 45) <= 3 and 45 <= peak[0] <= 62
    assert z[0, 0] == pytest.approx(0, abs=1e-6) and z[111, 91] == pytest.approx(0, abs=1e-6)
