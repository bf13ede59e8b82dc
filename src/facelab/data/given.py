"""Given splits: a training set and a validation set the user (or a course) chose, instead of a seeded split.

Each set is an identity folder ``DIR/<class>/<image>`` or a list file:

* ``.csv`` with a header naming a path column (``path``, ``image`` or ``file``) and a class column (``label``,
  ``identity`` or ``class``);
* ``.rec``: an insightface RecordIO set (``train.rec`` + ``train.idx`` [+ ``property``], facelab.data.recordio);
* any other suffix: lines ``path label`` separated by whitespace (paths without spaces; use a CSV for those).

List paths are relative to ``data.root`` when it is set, else to the list's folder (absolute paths and ``..`` are
refused, :func:`facelab.utils.textfile.relative_path`).

**Labels follow torchvision's ImageFolder**, so a classification submission matches a grader that loads the same
folder with ``ImageFolder``: the class index is the position of the class folder's name in the sorted list of
*every* class folder of the training set, including folders with no usable image (ImageFolder's
``find_classes``: ``sorted(entry.name for entry in os.scandir(root) if entry.is_dir())``). Hidden folders
(``.ipynb_checkpoints``) are never classes here; ImageFolder would count them, so their presence is reported. A list
whose labels are all non-negative integers uses them as the class indices (class ``i`` is named ``"i"``); other labels
are names, numbered in sorted order. The validation set's classes must be classes of the training set.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facelab.data.folder import FaceFolder, ScanReport, scan_folder
from facelab.data.splits import SplitManifest
from facelab.errors import FacelabError
from facelab.utils.textfile import TextFileError, read_csv, read_lines, relative_path, where

log = logging.getLogger(__name__)

PATH_COLUMNS = ("path", "image", "file")
LABEL_COLUMNS = ("label", "identity", "class")


@dataclass
class GivenSet:
    """One given set: ``items`` are (path relative to ``base``, class name); ``classes`` every class in label order
    (ImageFolder's for a folder)."""

    source: Path
    base: Path
    items: list[tuple[str, str]]
    classes: list[str]
    report: ScanReport = field(default_factory=ScanReport)
    #: hidden sub-folders of a folder set (ImageFolder would count them as classes)
    hidden_folders: list[str] = field(default_factory=list)

    def to_folder(self) -> FaceFolder:
        """The set as a :class:`FaceFolder` (for face alignment, which drops images with no face)."""
        identities: dict[str, list[str]] = {}
        for rel, name in self.items:
            identities.setdefault(name, []).append(rel)
        return FaceFolder(self.base, identities, self.report)

    def keep(self, folder: FaceFolder) -> None:
        """Keep only the items still in ``folder`` (after alignment dropped the faceless ones)."""
        kept = {rel for rels in folder.identities.values() for rel in rels}
        self.items = [(rel, name) for rel, name in self.items if rel in kept]


def image_folder_classes(root: str | Path) -> list[str]:
    """torchvision ImageFolder's class list for ``root`` without hidden folders: every sub-folder name, sorted."""
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def _load_folder(path: Path, verify: bool) -> GivenSet:
    folder = scan_folder(path, verify=verify, min_images=0)  # min 0: folders without images stay classes
    hidden = sorted(e.name for e in os.scandir(path) if e.is_dir() and e.name.startswith("."))
    classes = image_folder_classes(path)
    items = [(rel, name) for name in classes for rel in sorted(folder.identities.get(name, []))]
    if not items:
        raise FacelabError(f"no images in the class folders of {path} ({folder.report.summary(0)})")
    return GivenSet(path, path, items, classes, folder.report, hidden)


def _load_records(path: Path) -> GivenSet:
    """An insightface RecordIO training set (``train.rec`` + ``train.idx`` [+ ``property``]): one item per image
    record, ``<file>#<key>``; classes are the integer labels (``property``'s class count when present)."""
    from tqdm import tqdm

    from facelab.data.recordio import RecordFile, read_property

    rf = RecordFile(path)
    keys = rf.image_keys()
    labels = [rf.label(k) for k in tqdm(keys, desc=f"read {path.name} labels", unit="rec", leave=False,
                                        disable=len(keys) < 10_000)]
    rf.close()
    bad = next((k for k, y in zip(keys, labels, strict=True) if y < 0 or y != int(y)), None)
    if bad is not None:
        raise FacelabError(f"{path}#{bad}: label {labels[keys.index(bad)]} is not a class index")
    declared = read_property(path.parent)
    count = max(int(y) for y in labels) + 1
    if declared is not None and declared < count:
        raise FacelabError(f"{path.parent / 'property'} declares {declared} classes but {path.name} has label "
                           f"{count - 1}")
    classes = [str(i) for i in range(declared or count)]
    items = [(f"{path.name}#{k}", str(int(y))) for k, y in zip(keys, labels, strict=True)]
    return GivenSet(path, path.parent, items, classes)


def _is_index(label: str) -> bool:
    return label.isascii() and label.isdigit()


def _read_list(path: Path, root: Path | None) -> GivenSet:
    base = root if root is not None else path.parent
    raw: list[tuple[int, str, str]] = []
    if path.suffix.lower() == ".csv":
        table = read_csv(path, "image list")
        p_col = next((i for c in PATH_COLUMNS if (i := table.column(c)) is not None), None)
        y_col = next((i for c in LABEL_COLUMNS if (i := table.column(c)) is not None), None)
        if p_col is None or y_col is None:
            raise TextFileError(f"{where(path, 1)}: header must name a path column ({', '.join(PATH_COLUMNS)}) and "
                                f"a class column ({', '.join(LABEL_COLUMNS)}); got {','.join(table.header)[:80]!r}")
        for row in table.rows:
            raw.append((row[0], table.field(row, p_col, "path"), table.field(row, y_col, "label")))
    else:
        for n, line in read_lines(path, "image list"):
            parts = line.split()
            if len(parts) != 2:
                raise TextFileError(f"{where(path, n)}: expected 'path label', got {line[:80]!r} (a path with "
                                    f"spaces needs a .csv list)")
            raw.append((n, parts[0], parts[1]))
    if not raw:
        raise TextFileError(f"{path} lists no images")
    items = [(Path(relative_path(p, path, n)).as_posix(), label) for n, p, label in raw]
    missing = [rel for rel, _ in items if not (base / rel).is_file()]
    if missing:
        raise FacelabError(f"{len(missing)} of {len(items)} images listed in {path} are missing (first: "
                           f"{base / missing[0]}); paths are relative to {base} (set data.root to the folder that "
                           f"holds them)")
    labels = sorted({label for _, label in items})
    if all(_is_index(label) for label in labels):
        classes = [str(i) for i in range(max(int(label) for label in labels) + 1)]
        items = [(rel, str(int(label))) for rel, label in items]
    else:
        classes = labels
    return GivenSet(path, base, items, classes)


def load_given(source: str | Path, root: str | Path | None = None, verify: bool = True) -> GivenSet:
    """A given set from an identity folder or a list file (module docstring).

    Raises:
        FacelabError: the path is missing, a folder without images, or a malformed list (naming file and line) or
            one naming missing images.
    """
    path = Path(source)
    if not path.exists():
        raise FacelabError(f"given split not found: {path}")
    if path.is_dir():
        return _load_folder(path, verify)
    if path.suffix.lower() == ".rec":
        return _load_records(path)
    return _read_list(path, Path(root) if root else None)


def given_manifest(train: GivenSet, val: GivenSet | None) -> SplitManifest:
    """The run's manifest: the training set's classes and images, the validation images as its closed set, no open
    set. Paths are relative to the common folder of both sets (the manifest's ``root``).

    Raises:
        FacelabError: a validation class the training set does not have, naming it.
    """
    root = Path(os.path.commonpath([str(train.base.resolve())] + ([str(val.base.resolve())] if val else [])))
    index = {name: i for i, name in enumerate(train.classes)}

    def rel(s: GivenSet, p: str) -> str:
        return Path(os.path.relpath(s.base.resolve() / p, root)).as_posix()

    train_items = [(rel(train, p), index[name]) for p, name in train.items]
    val_items: list[tuple[str, int]] = []
    if val is not None:
        unknown = sorted({name for _, name in val.items if name not in index})
        if unknown:
            raise FacelabError(f"validation set {val.source} has {len(unknown)} class(es) the training set "
                               f"{train.source} does not (first: {unknown[0]})")
        val_items = [(rel(val, p), index[name]) for p, name in val.items]
    used = {y for _, y in train_items}
    report: dict[str, Any] = {
        "given": {"train": str(train.source), "val": str(val.source) if val else None},
        "identities": len(train.classes),
        "train_identities": len(train.classes),
        "open_identities": 0,
        "train_images": len(train_items),
        "closed_test_images": len(val_items),
        "open_test_images": 0,
        "closed_capped": [],
        # classes with no training image (kept: their index is the grader's)
        "empty_classes": [c for i, c in enumerate(train.classes) if i not in used],
        "bad_images": [list(x) for s in (train, val) if s for x in s.report.bad_images],
        "ignored_files": sum(len(s.report.ignored_files) for s in (train, val) if s),
        "dropped_identities": [],
        "hidden_folders": train.hidden_folders,
    }
    return SplitManifest(list(train.classes), train_items, val_items, [], [], 0, str(root), report)
