"""The one door every image comes through: files, uploads, pair-file bytes, PIL images and numpy arrays.

Training, evaluation, embedding, the gallery, the HTTP service and the Python API all call :func:`read_image`
(or :func:`open_image` when they want to know what was done), so the same rules hold everywhere:

* **format by content, never by file name**: the bytes are opened once with Pillow restricted to
  :data:`ALLOWED_FORMATS` and that same open object is decoded -- a polyglot file cannot pass the check as one format
  and be decoded as another, and formats that reach external programs (EPS through Ghostscript) are never parsed;
* **size before pixels**: the header's width x height is checked against a pixel cap (:func:`max_pixels`, default
  :data:`DEFAULT_MAX_PIXELS`, configurable with ``FACELAB_MAX_PIXELS``) before anything is decoded, so a
  decompression bomb is an ordinary :class:`ImageTooLarge` error;
* **orientation applied**: the EXIF Orientation tag (all eight values, mirrored ones included) is applied first, as
  a phone's gallery app would, and recorded in :class:`ImageMeta`;
* **one colour model out**: greyscale, palette, 16-bit, RGBA/LA (composited on black), CMYK and YCbCr all become
  8-bit RGB.

HEIC/HEIF (phones' camera format) is read through ``pi-heif`` when it is installed, AVIF through Pillow itself.
"""

from __future__ import annotations

import contextvars
import io
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facelab.errors import FacelabError

try:  # HEIC/HEIF: optional decoder plugin (decode-only build of pillow-heif)
    import pi_heif

    pi_heif.register_heif_opener()
    _HEIF = ("HEIF",)
except ImportError:  # pragma: no cover - pi-heif is a default dependency
    _HEIF = ()

#: Pillow format names accepted (Pillow's "PPM" covers PGM/PBM/PPM; "HEIF" covers .heic/.heif via pi-heif)
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP", "PPM", "TIFF", "WEBP", "AVIF", *_HEIF)
#: human-readable list for messages and docs
FORMAT_NAMES = "JPEG, PNG, BMP, PGM/PPM, TIFF, WebP, AVIF" + (", HEIC/HEIF" if _HEIF else "")
#: larger images are refused before decoding (a 40 MP photo is larger than any phone's; a face needs far less)
DEFAULT_MAX_PIXELS = 40_000_000
MAX_PIXELS_ENV = "FACELAB_MAX_PIXELS"
#: EXIF tag number of Orientation
ORIENTATION_TAG = 0x0112
#: ``warnings.catch_warnings`` swaps a process-wide filter list: two threads interleaving it can leave one thread's
#: temporary filters installed for good, so the gate's (header-only, fast) uses of it take turns
_WARNINGS_LOCK = threading.Lock()
#: called with (width, height, mode) after the size check and before any pixel is decoded (see
#: :class:`facelab.serving.limits.DecodeBudget`): it may block, or raise an :class:`ImageError` to refuse
HeaderHook = Callable[[int, int, str], None]
#: (cap, header hook) in force for this thread / task when a call gives none (see :func:`decode_limits`)
_LIMITS: contextvars.ContextVar[tuple[int | None, HeaderHook | None]] = contextvars.ContextVar(
    "facelab_decode_limits", default=(None, None))


@contextmanager
def decode_limits(cap: int | None = None, on_header: HeaderHook | None = None) -> Iterator[None]:
    """Within this block (this thread or task only) every decode through the gate uses ``cap`` and ``on_header``
    unless the call gives its own: how the HTTP service applies its pixel cap and decode-memory budget to decodes
    that happen deep inside the model and the gallery."""
    token = _LIMITS.set((cap, on_header))
    try:
        yield
    finally:
        _LIMITS.reset(token)

#: anything :func:`read_image` accepts: a path, encoded bytes, (name, bytes), a PIL image or an (H, W[, C]) array
ImageInput = Union[str, os.PathLike, bytes, bytearray, tuple[str, bytes], Image.Image, np.ndarray]  # noqa: UP007


class ImageError(FacelabError):
    """An image that cannot be used; the message names it."""


class UnsupportedImage(ImageError):
    """Not an image, or an image format outside :data:`ALLOWED_FORMATS`."""


class ImageTooLarge(ImageError):
    """The header declares more pixels than the cap (:func:`max_pixels`)."""


class UnreadableImage(ImageError):
    """A supported format whose pixels fail to decode (truncated or corrupt file)."""


class ImageNotFound(ImageError):
    """No file at that path."""


@dataclass(frozen=True)
class ImageMeta:
    """What the gate learned and did: ``width``/``height`` after orientation, ``orientation`` the EXIF value (1 =
    upright or no tag) that was applied, ``format`` the decoder used (by content)."""

    name: str
    format: str
    width: int
    height: int
    orientation: int = 1

    @property
    def rotated(self) -> bool:
        return self.orientation != 1


def max_pixels() -> int:
    """The pixel cap in force: ``FACELAB_MAX_PIXELS`` if set (a positive integer), else :data:`DEFAULT_MAX_PIXELS`."""
    raw = os.environ.get(MAX_PIXELS_ENV)
    if raw is None:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        raise FacelabError(f"{MAX_PIXELS_ENV} must be a positive integer, got {raw!r}") from None
    if value <= 0:
        raise FacelabError(f"{MAX_PIXELS_ENV} must be a positive integer, got {raw!r}")
    return value


def source_name(src: ImageInput, name: str | None = None) -> str:
    """A name for messages: ``name`` if given, the path, the first element of a (name, bytes) tuple, or a kind."""
    if name:
        return name
    if isinstance(src, str | os.PathLike):
        return str(src)
    if isinstance(src, tuple):
        return str(src[0])
    if isinstance(src, Image.Image):
        return "PIL image"
    if isinstance(src, np.ndarray):
        return "array"
    return "image bytes"


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any decoded mode -> 8-bit RGB; transparency is composited on black (the same for every input)."""
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.uint32 if im.mode != "I" else np.int64)
        im = Image.fromarray(np.clip(arr >> 8, 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        im = Image.fromarray(np.clip(np.asarray(im), 0, 255).astype(np.uint8), "L")
    return im if im.mode == "RGB" else im.convert("RGB")


def _pillow_limit() -> int | None:
    """Pixels above which Pillow itself refuses to open an image (``2 * Image.MAX_IMAGE_PIXELS``), or None."""
    return None if Image.MAX_IMAGE_PIXELS is None else 2 * int(Image.MAX_IMAGE_PIXELS)


def _open_header(fh: IO[bytes], name: str, cap: int) -> Image.Image:
    """Open ``fh`` with the format allow-list (header only, no pixels) and check its size against ``cap``.

    Pillow warns above ``Image.MAX_IMAGE_PIXELS`` and refuses above twice that; its warning is silenced here (the
    size check just below is the one in force, so a cap raised above Pillow's warning level works) and its refusal
    becomes :class:`ImageTooLarge`."""
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(fh, formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError:
        limit = _pillow_limit()
        shown = cap if limit is None else min(cap, limit)
        raise ImageTooLarge(f"{name} declares more pixels than the limit of {shown:,} ({MAX_PIXELS_ENV})") from None
    except UnidentifiedImageError:
        raise UnsupportedImage(f"{name} is not a supported image ({FORMAT_NAMES})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise UnreadableImage(f"{name} is not a readable image: {_first_line(exc)}") from None
    width, height = im.size
    if width <= 0 or height <= 0:
        im.close()
        raise UnreadableImage(f"{name} has an empty size {width}x{height}")
    if width * height > cap:
        im.close()
        raise ImageTooLarge(f"{name} is {width}x{height} pixels; the limit is {cap:,} ({MAX_PIXELS_ENV})")
    return im


def _open_checked(fh: IO[bytes], name: str, cap: int, on_header: HeaderHook | None = None
                  ) -> tuple[Image.Image, ImageMeta]:
    """Open ``fh`` once with the format allow-list, check the header's size, decode that same object."""
    im = _open_header(fh, name, cap)
    out: Image.Image | None = None
    try:
        fmt = str(im.format)
        try:
            with _WARNINGS_LOCK, warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Pillow warns on odd-but-valid EXIF; we only need the tag
                orientation = int(im.getexif().get(ORIENTATION_TAG, 1) or 1)
        except (OSError, ValueError, SyntaxError, EOFError, TypeError) as exc:
            raise UnreadableImage(f"cannot decode {name}: {_first_line(exc)}") from None
        if orientation not in range(1, 9):
            orientation = 1
        if on_header is not None:
            on_header(im.width, im.height, im.mode if orientation == 1 else f"{im.mode}+rotate")
        try:
            im.load()
            out = _to_rgb(ImageOps.exif_transpose(im) if orientation != 1 else im)
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
            raise UnreadableImage(f"cannot decode {name}: {_first_line(exc)}") from None
        except MemoryError:
            raise ImageTooLarge(f"{name}: not enough memory to decode it") from None
    finally:
        if out is not im:
            im.close()
    return out, ImageMeta(name, fmt, out.width, out.height, orientation)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _from_array(arr: np.ndarray, name: str, cap: int) -> Image.Image:
    """(H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA; uint8, or float in [0, 1]."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise UnsupportedImage(f"{name}: expected an (H, W), (H, W, 3) RGB or (H, W, 4) RGBA array, got shape "
                               f"{tuple(arr.shape)}")
    if arr.shape[0] * arr.shape[1] > cap:
        raise ImageTooLarge(f"{name} is {arr.shape[1]}x{arr.shape[0]} pixels; the limit is {cap:,}")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
            raise UnsupportedImage(f"{name}: arrays must be uint8 (0..255) or finite floats in [0, 1], got "
                                   f"{arr.dtype}")
        arr = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[arr.shape[2] if arr.ndim == 3 else 2]
    return _to_rgb(Image.fromarray(np.ascontiguousarray(arr), mode))


def open_image(src: ImageInput, name: str | None = None, *, cap: int | None = None,
               on_header: HeaderHook | None = None) -> tuple[Image.Image, ImageMeta]:
    """Decode ``src`` through the gate: (8-bit RGB PIL image, what was done).

    ``src`` is a path, encoded bytes, a ``(name, bytes)`` tuple, a PIL image or a numpy array (see
    :func:`_from_array`). In-memory PIL images and arrays are taken as they are (no EXIF, no format check).
    ``on_header(width, height, mode)`` is called for encoded inputs once the header passed the size check and
    before any pixel is decoded (the HTTP service uses it to bound the memory of concurrent decodes).

    Raises:
        ImageNotFound: no such file.
        UnsupportedImage: not an image, or a format outside :data:`ALLOWED_FORMATS`.
        ImageTooLarge: more pixels than ``cap`` (default :func:`max_pixels`), found from the header.
        UnreadableImage: a supported format that fails to decode (truncated, corrupt).
    """
    label = source_name(src, name)
    scoped_cap, scoped_hook = _LIMITS.get()
    cap = scoped_cap if cap is None else cap
    on_header = scoped_hook if on_header is None else on_header
    limit = max_pixels() if cap is None else cap
    if isinstance(src, Image.Image):
        if src.width * src.height > limit:
            raise ImageTooLarge(f"{label} is {src.width}x{src.height} pixels; the limit is {limit:,}")
        out = _to_rgb(src)
        return out, ImageMeta(label, "PIL", out.width, out.height)
    if isinstance(src, np.ndarray):
        out = _from_array(src, label, limit)
        return out, ImageMeta(label, "array", out.width, out.height)
    if isinstance(src, tuple):
        src = src[1]
    if isinstance(src, bytes | bytearray | memoryview):
        return _open_checked(io.BytesIO(bytes(src)), label, limit, on_header)
    with _open_file(Path(src), label) as fh:
        return _open_checked(fh, label, limit, on_header)


def read_image(src: ImageInput, name: str | None = None, *, cap: int | None = None,
               on_header: HeaderHook | None = None) -> Image.Image:
    """:func:`open_image` without the metadata: an 8-bit RGB PIL image, or an :class:`ImageError`."""
    return open_image(src, name, cap=cap, on_header=on_header)[0]


def peek(path: str | Path, name: str | None = None, *, cap: int | None = None) -> tuple[str | None, ImageError | None]:
    """Read only the header of the file at ``path``: (accepted format, None) when it would pass the gate's header
    checks, else (None, the error decoding would raise): :class:`UnsupportedImage` for what is not an accepted
    image at all, :class:`UnreadableImage` for a damaged one, :class:`ImageTooLarge` for a bomb. Nothing is
    decoded, so choosing a folder's files costs one header read each."""
    try:
        return header_check(path, name, cap), None
    except ImageError as exc:
        return None, exc


def sniff_format(path: str | Path) -> str | None:
    """The accepted format of the file at ``path`` judged by its content (header only, nothing decoded), or None
    when it is not a usable image. A JPEG named ``.HEIC`` is a JPEG; a text file named ``.jpg`` is None."""
    return peek(path)[0]


def _check(src: ImageInput, name: str | None = None) -> ImageError | None:
    try:
        open_image(src, name)
    except ImageError as exc:
        return exc
    return None


def _open_file(path: Path, label: str) -> IO[bytes]:
    """``path`` opened for reading (Pillow reads lazily from it; the caller closes it), or the ImageError that says
    why not."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise ImageNotFound(f"image not found: {label}") from None
    except IsADirectoryError:
        raise UnsupportedImage(f"{label} is a folder, not an image") from None
    except OSError as exc:
        raise UnreadableImage(f"cannot read {label}: {exc.strerror or exc}") from None


def header_check(path: str | Path, name: str | None = None, cap: int | None = None) -> str:
    """The format of the image at ``path`` from its header alone (nothing decoded), after the same format and size
    checks as :func:`open_image` (:func:`peek` without raising).

    Raises:
        ImageError: as :func:`open_image` (an image over the cap is :class:`ImageTooLarge`, not "not an image").
    """
    label = name or str(path)
    limit = max_pixels() if cap is None else cap
    with _open_file(Path(path), label) as fh, _open_header(fh, label, limit) as im:
        return str(im.format)


def check_image(src: ImageInput, name: str | None = None) -> str | None:
    """None if ``src`` decodes through the gate, else the one-line reason naming it (for scans that skip and count)."""
    error = _check(src, name)
    return None if error is None else str(error)


def read_images(sources: Sequence[ImageInput]) -> list[Image.Image]:
    """:func:`read_image` over a list; the first bad one raises."""
    return [read_image(s) for s in sources]


def describe(meta: ImageMeta) -> dict[str, Any]:
    """``meta`` as a JSON-ready dict."""
    return {"name": meta.name, "format": meta.format, "width": meta.width, "height": meta.height,
            "orientation": meta.orientation}


#: file suffixes that promise an image: such a file that is not one is reported as broken, not as "not an image"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".pgm", ".ppm", ".pbm", ".pnm", ".tif",
                            ".tiff", ".webp", ".avif", ".heic", ".heif"})


@dataclass
class FileTally:
    """What a folder held, so no file is skipped without a count. Paths are relative to the folder scanned.

    ``images``: usable images (accepted format by content; decoded once when verified). ``ignored``: files that are
    not images (notes, CSVs, ``pairs.txt``). ``failed``: (path, message naming it) for images that cannot be used --
    corrupt, truncated, too large, or a file named like an image that is not one. ``hidden``: dot-files and dot-folders
    (``.DS_Store``, macOS ``._*`` companions, ``.ipynb_checkpoints``), never read."""

    images: list[str]
    ignored: list[str]
    failed: list[tuple[str, str]]
    hidden: list[str]

    def counts(self) -> dict[str, int]:
        return {"images": len(self.images), "ignored": len(self.ignored), "failed": len(self.failed),
                "hidden": len(self.hidden)}

    def merge(self, other: FileTally, prefix: str = "") -> None:
        self.images += [prefix + p for p in other.images]
        self.ignored += [prefix + p for p in other.ignored]
        self.failed += [(prefix + p, r) for p, r in other.failed]
        self.hidden += [prefix + p for p in other.hidden]

    def summary(self, used: int | None = None) -> str:
        """One line: ``N images used; M not images (a, b); K unusable (x: reason); H hidden entries skipped``."""
        n = len(self.images) if used is None else used
        parts = [f"{n} image(s) used"]
        if self.ignored:
            parts.append(f"{len(self.ignored)} file(s) ignored, not images ({_few(self.ignored)})")
        if self.failed:
            parts.append(f"{len(self.failed)} image(s) unusable ({_few([r for _, r in self.failed])})")
        if self.hidden:
            parts.append(f"{len(self.hidden)} hidden entr{'y' if len(self.hidden) == 1 else 'ies'} skipped")
        return "; ".join(parts)


def _few(items: Sequence[str], k: int = 3) -> str:
    more = f" and {len(items) - k} more" if len(items) > k else ""
    return ", ".join(items[:k]) + more


def list_images(folder: str | Path, *, recursive: bool = True, verify: bool = True) -> FileTally:
    """Every file under ``folder`` (sorted; recursive unless told otherwise) sorted into a :class:`FileTally` by
    content. With ``verify`` each image is decoded once through the gate (finds corrupt and oversized files now,
    not mid-epoch); without it only the header is read.

    Raises:
        FacelabError: ``folder`` does not exist or is not a folder.
    """
    root = Path(folder)
    if not root.exists():
        raise FacelabError(f"folder not found: {root}")
    if not root.is_dir():
        raise FacelabError(f"not a folder: {root}")
    tally = FileTally([], [], [], [])
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel = (lambda n, d=rel_dir: n if d == "." else os.path.join(d, n))  # noqa: E731
        tally.hidden += sorted(rel(d) + "/" for d in dirnames if d.startswith("."))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        for fname in sorted(filenames):
            path = rel(fname)
            if fname.startswith("."):
                tally.hidden.append(path)
                continue
            full = os.path.join(dirpath, fname)
            if not os.path.isfile(full):
                tally.ignored.append(path)  # sockets, broken links
                continue
            fmt, error = peek(full, path)
            if fmt is not None and verify:
                error = _check(full, path)
            if error is None:
                tally.images.append(path)
            elif isinstance(error, UnsupportedImage) and Path(fname).suffix.lower() not in IMAGE_SUFFIXES:
                tally.ignored.append(path)  # notes, CSVs, pairs.txt: not images and not named like one
            else:
                tally.failed.append((path, str(error)))
    return tally
