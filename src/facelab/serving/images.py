"""Decode untrusted image files and uploads: a fixed list of raster formats, a pixel cap, one-line errors.

Pillow can open dozens of formats (some via external tools, e.g. EPS through Ghostscript); a service taking uploads
from the network should only ever parse the few formats faces come in.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from facelab.data import load_rgb
from facelab.errors import FacelabError

#: Pillow format names accepted (PGM/PBM are Pillow's "PPM")
ALLOWED_FORMATS = ("JPEG", "PNG", "BMP", "PPM", "TIFF", "WEBP")
#: declared upload content types accepted by the HTTP service
ALLOWED_CONTENT_TYPES = frozenset({
    "image/jpeg", "image/png", "image/bmp", "image/x-ms-bmp", "image/tiff", "image/webp",
    "image/x-portable-graymap", "image/x-portable-pixmap", "image/x-portable-anymap", "image/x-portable-bitmap",
})
#: larger images are refused before decoding (a face crop needs far less; this stops decompression bombs)
MAX_PIXELS = 40_000_000


class ImageTooLarge(FacelabError):
    """The image header declares more pixels than :data:`MAX_PIXELS`."""


class UnsupportedImage(FacelabError):
    """Not an image, or an image format outside :data:`ALLOWED_FORMATS`."""


def decode_image(data: bytes | Path | str, name: str = "image", max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Bytes or a file path -> 8-bit RGB PIL image, or a FacelabError naming ``name`` (never a traceback)."""
    if isinstance(data, str | Path):
        name = str(data)
        try:
            data = Path(data).read_bytes()
        except OSError as exc:
            raise FacelabError(f"cannot read {name}: {exc.strerror or exc}") from None
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as im:
            width, height = im.size
    except UnidentifiedImageError:
        raise UnsupportedImage(f"{name} is not a supported image ({', '.join(ALLOWED_FORMATS)})") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise UnsupportedImage(f"{name} is not a readable image: {exc}") from None
    if width * height > max_pixels:
        raise ImageTooLarge(f"{name} is {width}x{height} pixels; the limit is {max_pixels:,}")
    try:
        return load_rgb(io.BytesIO(data))  # type: ignore[arg-type]  # Pillow reads file objects as well as paths
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise FacelabError(f"cannot decode {name}: {exc}") from None
