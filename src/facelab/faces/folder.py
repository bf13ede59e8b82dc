"""``facelab align SRC DST``: an identity folder of raw photos -> the same layout of aligned face crops.

Work is spread over worker processes (each limited to one detector thread); every crop is written atomically and
recorded in a JSON-lines manifest, so a killed run resumes where it stopped: an image whose manifest record
matches its current size and mtime, and whose crops exist, is skipped. At the end the manifest is rewritten in
order, a summary (aligned / several faces / used without detection / no face, plus the folder's ignored, failed
and hidden files) is written beside it, and a contact sheet PNG shows a sample of the crops.

Layout of DST::

    DST/<identity>/<name>.png       one crop per image (``--several all``: <name>.png, <name>_face2.png, ...)
    DST/align_manifest.jsonl        one record per image: status, faces found, box, 5 points, score, crop files
    DST/align_summary.json          the counts, settings and speed
    DST/align_contact_sheet.png     up to ``sheet`` crops (green frame: detected; orange: used without detection)
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from facelab.errors import FacelabError
from facelab.faces.base import NoFaceFound
from facelab.faces.parallel import parallel_map
from facelab.faces.pipeline import AlignOptions, faces_in
from facelab.images import FileTally, ImageError, list_images, read_image
from facelab.utils.io import atomic_open, write_json

log = logging.getLogger(__name__)

MANIFEST = "align_manifest.jsonl"
SUMMARY = "align_summary.json"
SHEET = "align_contact_sheet.png"
#: ``several`` value that keeps every face instead of one
ALL_FACES = "all"
FORMATS = {"png": ".png", "jpg": ".jpg"}
#: manifest statuses -> summary wording
STATUSES = {"aligned": "aligned (one face)", "several": "several faces", "undetected": "used without detection",
            "no_face": "no face", "failed": "failed to decode"}


@dataclass(frozen=True)
class AlignSettings:
    """What the crops depend on; a DST made with other settings is not resumed into."""

    detector: str = "yunet"
    size: int = 112
    options: dict[str, Any] = field(default_factory=dict)
    all_faces: bool = False
    fmt: str = "png"

    def __post_init__(self) -> None:
        from facelab.faces.base import DETECTORS

        DETECTORS.get(self.detector)
        AlignOptions.from_dict(self.options)
        if not 16 <= self.size <= 1024:
            raise FacelabError(f"crop size must be in [16, 1024], got {self.size}")
        if self.fmt not in FORMATS:
            raise FacelabError(f"crop format must be one of {', '.join(FORMATS)}, got {self.fmt!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"detector": self.detector, "size": self.size, "options": AlignOptions.from_dict(self.options).to_dict(),
                "all_faces": self.all_faces, "format": self.fmt}


def _source_stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _crop_names(rel: str, n: int, fmt: str) -> list[str]:
    stem = Path(rel).with_suffix("").as_posix()
    ext = FORMATS[fmt]
    return [f"{stem}{ext}" if i == 0 else f"{stem}_face{i + 1}{ext}" for i in range(n)]


def _save(img: Image.Image, path: Path, fmt: str) -> None:
    # no fsync per crop (thousands of small files): a killed run leaves whole files or none, and _done checks sizes
    with atomic_open(path, "wb", fsync=False) as fh:
        if fmt == "jpg":
            img.save(fh, format="JPEG", quality=95)
        else:
            img.save(fh, format="PNG", compress_level=1)  # level 1: 2-2.5x faster than 6 on a 112px crop, 10% larger


def align_one(src: Path, dst: Path, rel: str, settings: AlignSettings) -> dict[str, Any]:
    """Align one image ``src/rel`` into ``dst``; returns its manifest record (never raises for a bad image)."""
    path = src / rel
    record: dict[str, Any] = {"image": rel}
    try:
        record["source"] = _source_stamp(path)
        image = read_image(path, rel)
    except (ImageError, OSError) as exc:
        return {**record, "status": "failed", "error": str(exc), "faces_found": 0, "crops": []}
    record["width"], record["height"] = image.width, image.height
    opts = AlignOptions.from_dict(settings.options)
    try:
        crops = faces_in(image, settings.detector, settings.size, opts, multiple=True)
    except NoFaceFound as exc:
        return {**record, "status": "no_face", "error": str(exc), "faces_found": 0, "crops": []}
    found = 0 if crops[0].method == "undetected" else len(crops)
    kept = crops if settings.all_faces else crops[:1]
    names = _crop_names(rel, len(kept), settings.fmt)
    for crop, name in zip(kept, names, strict=True):
        _save(crop.image, dst / name, settings.fmt)
    status = "undetected" if found == 0 else ("several" if found > 1 else "aligned")
    faces = [{"file": name, **crop.to_dict()} for crop, name in zip(kept, names, strict=True)]
    if not settings.all_faces and found > 1:  # the others were found but not kept: record where they were
        faces += [{"file": None, **crop.to_dict()} for crop in crops[1:]]
    return {**record, "status": status, "faces_found": found, "crops": faces}


def _work(job: tuple[Path, Path, str, AlignSettings]) -> dict[str, Any]:
    return align_one(*job)


# ------------------------------------------------------------------------------------------------------- the folder
@dataclass
class AlignSummary:
    counts: dict[str, int]
    tally: dict[str, int]
    seconds: float
    processed: int
    skipped: int
    out: Path
    examples: dict[str, list[str]]

    def lines(self) -> list[str]:
        rate = self.processed / self.seconds if self.seconds > 0 else 0.0
        c = self.counts
        out = [f"aligned {c['aligned']}, several faces {c['several']}, used without detection {c['undetected']}, "
               f"no face {c['no_face']}, failed {c['failed']} "
               f"({self.processed} processed in {self.seconds:.1f} s = {rate:.1f} img/s; {self.skipped} already "
               f"done)"]
        t = self.tally
        out.append(f"folder: {t['images']} image(s); {t['ignored']} file(s) ignored (not images), {t['failed']} "
                   f"unusable, {t['hidden']} hidden entr{'y' if t['hidden'] == 1 else 'ies'} skipped")
        for status in ("no_face", "failed"):
            if self.examples.get(status):
                few = ", ".join(self.examples[status][:3])
                more = len(self.examples[status]) - 3
                out.append(f"{STATUSES[status]}: {few}" + (f" and {more} more" if more > 0 else ""))
        out.append(f"crops, manifest ({MANIFEST}), summary ({SUMMARY}) and contact sheet ({SHEET}) in {self.out}")
        return out


def _read_manifest(path: Path) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
    """(settings header, image -> last record); a torn last line (killed mid-write) is ignored."""
    if not path.is_file():
        return None, {}
    header, records = None, {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "settings" in rec and header is None:
            header = rec["settings"]
        elif isinstance(rec, dict) and "image" in rec:
            records[rec["image"]] = rec
    return header, records


def _done(rec: dict[str, Any] | None, src: Path, dst: Path) -> bool:
    if rec is None or rec.get("status") == "failed":
        return False
    try:
        if rec.get("source") != _source_stamp(src / rec["image"]):
            return False
    except OSError:
        return False
    return all(_whole(dst / c["file"]) for c in rec.get("crops", []) if c.get("file"))


def _whole(path: Path) -> bool:
    """A crop file that exists and is not empty (a power cut after the rename can leave it empty)."""
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def align_folder(src: str | Path, dst: str | Path, settings: AlignSettings, *, workers: int = 2,
                 sheet: int = 64, progress: bool = True) -> AlignSummary:
    """Align every image under ``src`` into ``dst`` (same relative layout). See the module docstring.

    Raises:
        FacelabError: ``src`` missing or not a folder, ``dst`` inside ``src`` or the other way round, or ``dst``
            holding crops made with other settings.
    """
    from tqdm import tqdm

    src, dst = Path(src).resolve(), Path(dst).resolve()
    if not src.is_dir():
        raise FacelabError(f"not a folder: {src}")
    if dst == src or src in dst.parents or dst in src.parents:
        raise FacelabError(f"the output folder {dst} must not be inside the source folder {src} or contain it")
    tally: FileTally = list_images(src, verify=False)  # workers decode each image once and report failures
    manifest = dst / MANIFEST
    header, previous = _read_manifest(manifest)
    wanted = settings.to_dict()
    if header is not None and header != wanted:
        raise FacelabError(f"{dst} holds crops made with other settings ({MANIFEST}: {json.dumps(header)}); "
                           f"align into a new folder or delete it")
    dst.mkdir(parents=True, exist_ok=True)
    todo = [rel for rel in tally.images if not _done(previous.get(rel), src, dst)]
    records = {rel: previous[rel] for rel in tally.images if rel in previous and rel not in todo}
    t0 = time.perf_counter()
    with open(manifest, "a") as log_fh:
        if header is None:
            log_fh.write(json.dumps({"settings": wanted}) + "\n")
        bar = tqdm(total=len(todo), desc="align", unit="img", disable=not progress, smoothing=0.05)
        for rec in parallel_map(_work, [(src, dst, rel, settings) for rel in todo], workers):
            records[rec["image"]] = rec
            log_fh.write(json.dumps(rec) + "\n")
            log_fh.flush()
            bar.update(1)
        bar.close()
    seconds = time.perf_counter() - t0
    ordered = [records[rel] for rel in tally.images if rel in records]
    with atomic_open(manifest, "w") as fh:  # compact: one line per image, in folder order
        fh.write(json.dumps({"settings": wanted}) + "\n")
        for rec in ordered:
            fh.write(json.dumps(rec) + "\n")
    counts = dict.fromkeys(STATUSES, 0)
    examples: dict[str, list[str]] = {}
    for rec in ordered:
        counts[rec["status"]] += 1
        if rec["status"] in ("no_face", "failed"):
            examples.setdefault(rec["status"], []).append(rec["image"])
    # files that are not usable images: found by the folder scan (not an image by content despite the name) or
    # by a worker (fails to decode)
    failed = tally.failed + [(r["image"], r.get("error", "")) for r in ordered if r["status"] == "failed"]
    examples["failed"] = [p for p, _ in failed]
    counts["failed"] = len(failed)
    tally_counts = {"images": len(tally.images) - (len(failed) - len(tally.failed)), "ignored": len(tally.ignored),
                    "failed": len(failed), "hidden": len(tally.hidden)}
    summary = AlignSummary(counts, tally_counts, seconds, len(todo), len(tally.images) - len(todo), dst, examples)
    write_json(dst / SUMMARY, {"source": str(src), "settings": wanted, "counts": counts, "files": tally_counts,
                               "unusable": [{"file": p, "reason": r} for p, r in failed],
                               "ignored": tally.ignored, "processed": len(todo), "already_done": summary.skipped,
                               "seconds": round(seconds, 2),
                               "images_per_second": round(len(todo) / seconds, 1) if seconds > 0 else None,
                               "workers": workers})
    if sheet > 0:
        contact_sheet(dst, ordered, dst / SHEET, sheet)
    return summary


def contact_sheet(root: Path, records: list[dict[str, Any]], out: Path, n: int = 64, cols: int = 8,
                  tile: int = 112) -> Path | None:
    """A PNG grid of up to ``n`` crops spread evenly over ``records`` (green frame: detected and aligned; orange:
    used without detection). Returns None when there is no crop to show."""
    files = [(c["file"], c["method"]) for r in records for c in r.get("crops", []) if c.get("file")]
    if not files:
        return None
    pick = [files[i] for i in np.linspace(0, len(files) - 1, min(n, len(files))).round().astype(int)]
    colours = {"aligned": (40, 180, 80), "undetected": (240, 150, 20)}
    cells = [(root / name, colours.get(method, (128, 128, 128))) for name, method in pick]
    return tile_sheet([cells[i:i + cols] for i in range(0, len(cells), cols)], out, tile)


Cell = tuple[Path, tuple[int, int, int]]


def tile_sheet(rows: list[list[Cell]], out: Path, tile: int = 112, pad: int = 4) -> Path:
    """Write a PNG grid, atomically: one line per entry of ``rows``, each cell an image (read through the image
    gate, resized to ``tile`` x ``tile``) in a frame of the cell's RGB colour; an unreadable image leaves its
    framed tile dark. The grid is as wide as the longest row."""
    cols = max((len(r) for r in rows), default=1)
    sheet = Image.new("RGB", (cols * (tile + pad) + pad, max(len(rows), 1) * (tile + pad) + pad), (32, 32, 32))
    for r, row in enumerate(rows):
        for c, (path, colour) in enumerate(row):
            x, y = pad + c * (tile + pad), pad + r * (tile + pad)
            sheet.paste(colour, (x - 2, y - 2, x + tile + 2, y + tile + 2))
            sheet.paste((32, 32, 32), (x, y, x + tile, y + tile))
            try:
                img = read_image(path).resize((tile, tile), Image.BILINEAR)
            except ImageError:
                continue
            sheet.paste(img, (x, y))
    with atomic_open(out, "wb") as fh:
        sheet.save(fh, format="PNG")
    return out
