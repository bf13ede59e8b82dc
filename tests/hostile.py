"""Hostile inputs the hardening tests share: crafted image files (polyglot, decompression bombs, EPS) and pickles.

Everything is built byte by byte here, small and fast: a bomb's header declares a huge size while the file itself
stays a few hundred bytes, so nothing large is ever allocated unless the code under test decodes it.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

#: the pixels of the polyglot's TIFF reading (64x64 greyscale gradient)
POLYGLOT_TIFF_SIZE = 64
#: the size the same bytes declare when read as a PIL "IM" image
POLYGLOT_IM_SIZE = 8000

EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
       b"/Helvetica findfont 12 scalefont setfont 0 0 moveto (x) show showpage\n%%EOF\n")


def polyglot_tiff_im() -> bytes:
    """One file that is a valid 64x64 greyscale TIFF *and* a valid PIL "IM" image declaring 8000x8000.

    The TIFF header's first 8 bytes (``II*\\0`` + IFD offset) double as the start of an IM header line ``key: value``;
    the IM header follows (type, size, then ``\\x1a``), and the TIFF directory and strip sit after it at the offset
    the TIFF header names. Pillow without a format list tries the IM reader before the TIFF one."""
    n = POLYGLOT_TIFF_SIZE
    ifd_offset = 128  # b"\x80\0\0\0": no newline or colon, so line 1 of the IM header stays one line
    im_header = (b"x: polyglot\r\nImage type: L image\r\n"
                 + f"Image size (x*y): {POLYGLOT_IM_SIZE}*{POLYGLOT_IM_SIZE}\r\n".encode() + b"\x1a")
    head = b"II*\x00" + struct.pack("<I", ifd_offset) + im_header
    head = head.ljust(ifd_offset, b"\x00")
    entries = [(256, 3, 1, n), (257, 3, 1, n), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 0), (277, 3, 1, 1), (278, 3, 1, n), (279, 4, 1, n * n)]
    ifd_size = 2 + 12 * len(entries) + 4
    data_offset = ifd_offset + ifd_size
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        value = data_offset if tag == 273 else value
        packed = struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, typ, count) + packed
    ifd += struct.pack("<I", 0)
    return head + ifd + polyglot_pixels().tobytes()


def polyglot_pixels() -> np.ndarray:
    """(64, 64) uint8: what the TIFF reading of :func:`polyglot_tiff_im` holds."""
    n = POLYGLOT_TIFF_SIZE
    return ((np.arange(n)[:, None] * 3 + np.arange(n)[None, :]) % 256).astype(np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (8-bit RGB) with one row of pixel data: a decompression
    bomb's shape (refused from the header) without the CPU time to compress a real one."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * 3 * min(width, 64))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def blank_png(width: int, height: int, mode: str = "RGB") -> bytes:
    """A real, complete, highly compressible PNG (a 6300x6300 one is ~115 KB and decodes to ~120 MB)."""
    buf = io.BytesIO()
    Image.new(mode, (width, height)).save(buf, format="PNG", compress_level=9)
    return buf.getvalue()
