"""Scan an identity-folder tree (``ROOT/<identity>/<image>``, the VGGFace2 layout) and decode images safely."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from facelab.errors import FacelabError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".pbm", ".tif", ".tiff", ".webp"})


def load_rgb(path: str | Path) -> Image.Image:
    """Decode any supported image to 8-bit RGB (greyscale, palette, RGBA, CMYK, 16-bit all converted)."""
    with Image.open(path) as im:
        im.load()
        if im.mode == "RGBA" or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            background = Image.new("RGBA", im.size, (0, 0, 0, 255))
            return Image.alpha_composite(background, im).convert("RGB")
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            im = im.point(lambda v: v / 256).convert("L")
        return im.convert("RGB")


def check_image(path: Path) -> str | None:
    """Return None if ``path`` decodes as an image, else a short reason."""
    try:
        load_rgb(path)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None


@dataclass
class ScanReport:
    """What a scan found besides usable images, so nothing is skipped silently."""

    ignored_files: list[str] = field(default_factory=list)  # non-image extensions, hidden files
    bad_images: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    dropped_identities: list[tuple[str, int]] = field(default_factory=list)  # (identity, image count)

    def summary(self) -> str:
        parts = []
        if self.bad_images:
            shown = ", ".join(f"{p} ({r})" for p, r in self.bad_images[:5])
            more = f" and {len(self.bad_images) - 5} more" if len(self.bad_images) > 5 else ""
            parts.append(f"skipped {len(self.bad_images)} undecodable image(s): {shown}{more}")
        if self.ignored_files:
            shown = ", ".join(self.ignored_files[:5])
            more = f" and {len(self.ignored_files) - 5} more" if len(self.ignored_files) > 5 else ""
            parts.append(f"ignored {len(self.ignored_files)} non-image file(s): {shown}{more}")
        if self.dropped_identities:
            shown = ", ".join(f"{n} ({c})" for n, c in self.dropped_identities[:5])
            more = f" and {len(self.dropped_identities) - 5} more" if len(self.dropped_identities) > 5 else ""
            parts.append(f"dropped {len(self.dropped_identities)} identity folder(s) with too few images: "
                         f"{shown}{more}")
        return "; ".join(parts)


@dataclass
class FaceFolder:
    """Images grouped by identity, paths relative to ``root`` so manifests stay portable."""

    root: Path
    identities: dict[str, list[str]]
    report: ScanReport

    @property
    def num_images(self) -> int:
        return sum(len(v) for v in self.identities.values())


def scan_folder(root: str | Path, verify: bool = True, min_images: int = 1) -> FaceFolder:
    """List ``root``'s identity folders and their images.

    With ``verify`` every image is decoded once, so a corrupt file is found here and reported in one place rather
    than crashing an epoch hours later. Stray files beside the identity folders (``pairs.txt`` in LFW) and
    non-image files inside them are counted in the report, never read as faces.
    """
    root = Path(root)
    if not root.exists():
        raise FacelabError(f"data folder not found: {root}")
    if not root.is_dir():
        raise FacelabError(f"data path is not a folder: {root}")
    report = ScanReport()
    identities: dict[str, list[str]] = {}
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            report.ignored_files.append(entry.name)
            continue
        images = []
        for dirpath, dirnames, filenames in os.walk(entry.path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                rel = os.path.relpath(os.path.join(dirpath, name), root)
                if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                    report.ignored_files.append(rel)
                    continue
                if verify and (reason := check_image(root / rel)) is not None:
                    report.bad_images.append((rel, reason))
                    continue
                images.append(rel)
        if len(images) < min_images:
            report.dropped_identities.append((entry.name, len(images)))
            continue
        identities[entry.name] = images
    if not identities:
        detail = f" ({report.summary()})" if report.summary() else ""
        raise FacelabError(
            f"no identity folders with images found in {root}: expected ROOT/<identity>/<image>{detail}"
        )
    return FaceFolder(root=root, identities=identities, report=report)
