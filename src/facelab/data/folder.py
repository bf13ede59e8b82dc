"""Scan an identity-folder tree (``ROOT/<identity>/<image>``, the VGGFace2 layout) through the image gate."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from facelab.config import DataConfig
from facelab.errors import FacelabError
from facelab.images import FileTally, list_images

log = logging.getLogger(__name__)


@dataclass
class ScanReport:
    """What a scan found besides usable images, so nothing is skipped silently (same counts as every folder
    command: :class:`facelab.images.FileTally`)."""

    ignored_files: list[str] = field(default_factory=list)  # not images (by content), stray files beside folders
    bad_images: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): corrupt, truncated, too large
    hidden: list[str] = field(default_factory=list)  # dot-files and dot-folders, never read
    dropped_identities: list[tuple[str, int]] = field(default_factory=list)  # (identity, image count)

    def counts(self) -> dict[str, int]:
        return {"ignored": len(self.ignored_files), "failed": len(self.bad_images), "hidden": len(self.hidden),
                "dropped_identities": len(self.dropped_identities)}

    def summary(self, used: int) -> str:
        """The line every folder command prints (see :meth:`facelab.images.FileTally.summary`), plus the identity
        folders dropped for having too few images."""
        line = FileTally([], self.ignored_files, self.bad_images, self.hidden).summary(used)
        if self.dropped_identities:
            line += (f"; dropped {len(self.dropped_identities)} identity folder(s) with too few images: "
                     f"{_few([f'{n} ({c})' for n, c in self.dropped_identities])}")
        return line


def _few(items: list[str], k: int = 5) -> str:
    more = f" and {len(items) - k} more" if len(items) > k else ""
    return ", ".join(items[:k]) + more


@dataclass
class FaceFolder:
    """Images grouped by identity, paths relative to ``root`` so manifests stay portable."""

    root: Path
    identities: dict[str, list[str]]
    report: ScanReport

    @property
    def num_images(self) -> int:
        return sum(len(v) for v in self.identities.values())

    def tally(self) -> FileTally:
        """The scan as the counts every folder command prints."""
        return FileTally([p for v in self.identities.values() for p in v], list(self.report.ignored_files),
                         list(self.report.bad_images), list(self.report.hidden))


def scan_folder(root: str | Path, verify: bool = True, min_images: int = 1) -> FaceFolder:
    """List ``root``'s identity folders and their images (chosen by content, any depth below the identity folder).

    With ``verify`` every image is decoded once through the gate, so a corrupt or oversized file is found here and
    reported in one place rather than crashing an epoch hours later. Stray files beside the identity folders
    (``pairs.txt`` in LFW) and non-image files inside them are counted in the report, never read as faces.
    """
    root = Path(root)
    if not root.exists():
        raise FacelabError(f"data folder not found: {root}")
    if not root.is_dir():
        raise FacelabError(f"data path is not a folder: {root}")
    tally = list_images(root, verify=verify)
    report = ScanReport(ignored_files=tally.ignored, bad_images=tally.failed, hidden=tally.hidden)
    grouped: dict[str, list[str]] = {}
    for rel in tally.images:
        ident, sep, _ = rel.partition("/")
        if sep:
            grouped.setdefault(ident, []).append(rel)
        else:
            report.ignored_files.append(rel)  # an image beside the identity folders belongs to no identity
    empty = [e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".") and e.name not in grouped]
    identities: dict[str, list[str]] = {}
    for ident in sorted([*grouped, *empty]):
        images = grouped.get(ident, [])
        if len(images) < min_images:
            report.dropped_identities.append((ident, len(images)))
            continue
        identities[ident] = images
    if not identities:
        raise FacelabError(f"no identity folders with images found in {root}: expected ROOT/<identity>/<image> "
                           f"({report.summary(0)})")
    return FaceFolder(root=root, identities=identities, report=report)


def align_faces(folder: FaceFolder, data: DataConfig, *, workers: int | None = None,
                progress: bool = True) -> str:
    """Detect and align every image of a scanned identity folder into the cache before a split is made, and drop
    the photos in which no face is found (counted in the folder's report as unusable, naming the file). Returns
    a one-line account of how the faces were found (``data.align`` names the detector; see facelab.faces.cache)."""
    from facelab.faces.cache import CropCache, describe_counts, status_counts

    cache = CropCache.create(data.align, data.input_size, data.align_options)
    paths = [folder.root / rel for rels in folder.identities.values() for rel in rels]
    records = cache.prepare(paths, workers=workers, progress=progress)
    for ident in list(folder.identities):
        kept = []
        for rel in folder.identities[ident]:
            rec = records[str(folder.root / rel)]
            if rec["status"] in ("no_face", "failed"):
                folder.report.bad_images.append((rel, rec.get("error", rec["status"])))
            else:
                kept.append(rel)
        if kept:
            folder.identities[ident] = kept
        else:
            del folder.identities[ident]
            folder.report.dropped_identities.append((ident, 0))
    if not folder.identities:
        raise FacelabError(f"no face found in any image of {folder.root} (detector {data.align})")
    return f"{describe_counts(status_counts(records))} ({data.align}, {data.input_size}x{data.input_size} crops " \
           f"cached in {cache.folder})"
