"""What the HTTP service accepts as an upload; decoding itself goes through the one image gate,
:mod:`facelab.images`."""

from __future__ import annotations

#: declared upload content types accepted by the HTTP service (the content check of the gate has the final word)
ALLOWED_CONTENT_TYPES = frozenset({
    "image/jpeg", "image/png", "image/bmp", "image/x-ms-bmp", "image/tiff", "image/webp", "image/avif",
    "image/heic", "image/heif", "image/x-portable-graymap", "image/x-portable-pixmap", "image/x-portable-anymap",
    "image/x-portable-bitmap",
})
