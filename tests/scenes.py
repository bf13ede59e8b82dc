"""Test scenes: bundled ORL faces pasted into larger photos, with the similarity transform that put them there."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


def background(width: int = 640, height: int = 480, seed: int = 0) -> Image.Image:
    """A smooth, coloured, textured backdrop (low-frequency colour blobs plus mild noise): not uniform, no face."""
    rng = np.random.default_rng(seed)
    low = Image.fromarray(rng.integers(40, 215, (6, 8, 3), dtype=np.uint8), "RGB").resize((width, height),
                                                                                         Image.BICUBIC)
    noise = rng.integers(-8, 9, (min(height, 256), min(width, 256), 3), dtype=np.int16)  # tiled: cheap when huge
    reps = (-(-height // noise.shape[0]), -(-width // noise.shape[1]), 1)
    arr = np.asarray(low, np.int16) + np.tile(noise, reps)[:height, :width]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def paste(face: Image.Image, scene: Image.Image, x: int, y: int, scale: float) -> Image.Image:
    """``scene`` with ``face`` resized by ``scale`` and its top-left corner at (x, y) (a copy)."""
    out = scene.copy()
    f = face.convert("RGB").resize((round(face.width * scale), round(face.height * scale)), Image.BICUBIC)
    out.paste(f, (x, y))
    return out


def similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    """2 x 3 matrix: rotate by ``angle_deg`` (counter-clockwise in image coordinates), scale, then translate."""
    a = math.radians(angle_deg)
    c, s = scale * math.cos(a), scale * math.sin(a)
    return np.array([[c, -s, tx], [s, c, ty]], np.float64)


def warp_into(face: Image.Image, matrix: np.ndarray, size: tuple[int, int], seed: int = 0) -> Image.Image:
    """``face`` warped by ``matrix`` (face pixels -> scene pixels) onto a :func:`background` of ``size``."""
    import cv2

    scene = np.asarray(background(*size, seed=seed)).copy()
    src = np.asarray(face.convert("RGB"))
    warped = cv2.warpAffine(src, matrix, size, flags=cv2.INTER_CUBIC)
    mask = cv2.warpAffine(np.full(src.shape[:2], 255, np.uint8), matrix, size, flags=cv2.INTER_NEAREST)
    scene[mask > 0] = warped[mask > 0]
    return Image.fromarray(scene, "RGB")
