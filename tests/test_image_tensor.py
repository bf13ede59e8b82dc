"""read_image_tensor: the gate's checks, then torchvision.io for upright JPEGs, Pillow for everything else."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facelab.images import (
    ImageTooLarge,
    UnreadableImage,
    UnsupportedImage,
    open_image,
    read_image,
    read_image_tensor,
)


def _jpeg(w: int, h: int, orientation: int = 1, mode: str = "RGB") -> bytes:
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1).astype(np.uint8)
    im = Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    im.save(buf, "JPEG", quality=90, exif=exif)
    return buf.getvalue()


def _same(tensor: object, pil: Image.Image) -> None:
    arr = tensor.permute(1, 2, 0).numpy()  # type: ignore[attr-defined]
    assert arr.shape == np.asarray(pil).shape
    assert np.abs(arr.astype(int) - np.asarray(pil).astype(int)).max() <= 1


def test_tensor_decode_equals_the_gates_for_every_path(tmp_path: Path) -> None:
    for data in (_jpeg(90, 60), _jpeg(90, 60, mode="L"), _jpeg(90, 60, orientation=6)):
        (tmp_path / "a.jpg").write_bytes(data)
        _same(read_image_tensor(tmp_path / "a.jpg"), read_image(tmp_path / "a.jpg"))
        _same(read_image_tensor(("x.jpg", data)), read_image(data))
    assert tuple(read_image_tensor(_jpeg(90, 60, orientation=6)).shape) == (3, 90, 60)  # rotated upright
    big = _jpeg(800, 640)  # the hint shrinks it 8x: Pillow's reduced DCT scale
    small, meta = open_image(big, size_hint=64)
    assert meta.scale == 8
    _same(read_image_tensor(big, size_hint=64), small)
    png = io.BytesIO()
    Image.new("RGBA", (20, 10), (10, 20, 30, 0)).save(png, "PNG")
    _same(read_image_tensor(png.getvalue()), read_image(png.getvalue()))
    _same(read_image_tensor(np.zeros((5, 7, 3), np.uint8)), read_image(np.zeros((5, 7, 3), np.uint8)))


def test_tensor_decode_keeps_the_gates_refusals(tmp_path: Path) -> None:
    data = _jpeg(90, 60)
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImage, match=r"cut\.jpg") as err:
        read_image_tensor(tmp_path / "cut.jpg")
    assert "\n" not in str(err.value) and ".cpp" not in str(err.value)
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(UnsupportedImage, match=r"text\.jpg is not a supported image"):
        read_image_tensor(tmp_path / "text.jpg")
    with pytest.raises(ImageTooLarge, match="90x60 pixels; the limit is 1,000"):
        read_image_tensor(data, cap=1000)
    with pytest.raises(Exception, match="image not found"):
        read_image_tensor(tmp_path / "missing.jpg")
