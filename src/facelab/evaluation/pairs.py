"""1:1 verification from pair lists: LFW ``pairs.txt`` (and the View 1 ``pairsDev*.txt``), the Kaggle LFW CSVs,
a CSV ``img1,img2,label[,fold]`` and insightface ``.bin``.

Readers are registered by format and picked by file suffix (or by name), and all produce the same ``PairList``.
Every reader gives a one-line error naming file and line for a malformed input (encoding, NUL bytes, missing
columns, oversized fields, absolute or escaping paths: :mod:`facelab.utils.textfile`), before anything is embedded.
The k-fold protocol is LFW's: for each fold the accept threshold is the one with the best accuracy on the other
folds, and the reported accuracy is the mean (and population std) over folds of that held-out accuracy -- the
pooled ``best_accuracy`` on all pairs would be optimistic.

Folds. ``pairs.txt`` names its folds (10 consecutive blocks of 300 matched + 300 mismatched pairs); the Kaggle
``pairs.csv`` keeps that order, so it is cut into the same consecutive blocks. Lists without fold information --
the View 1 ``pairsDevTrain.txt`` / ``pairsDevTest.txt``, the Kaggle ``matchpairsDev*.csv`` + ``mismatchpairsDev*.csv``
given together, several files combined -- are cut with :func:`stratified_folds`: the matched pairs in file order
into ``folds`` consecutive blocks, the mismatched pairs likewise, block i of each forming fold i. Written from
``pairs.txt``'s 3000 + 3000 pairs, that rebuilds exactly pairs.txt's folds. (LFW defines no folds for View 1: it is
a development split; the k-fold figure on it is a convenience, its threshold chosen on the other folds as usual.)
"""

from __future__ import annotations

import csv
import io
import logging
import os
import pickle
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facelab.engine.validation import ValidationPairs
from facelab.errors import FacelabError
from facelab.evaluation.metrics import (
    DEFAULT_FAR_TARGETS,
    best_accuracy,
    native_thresholds,
    roc_curve,
    verification_report,
)
from facelab.evaluation.report import default_report_dir, write_verification_report
from facelab.evaluation.scorers import PairScorer, build_scorer
from facelab.images import ImageInput
from facelab.inference.embedder import Embedder
from facelab.inference.model import FaceModel, load_model
from facelab.registry import Registry
from facelab.utils.textfile import (
    CsvTable,
    TextFileError,
    path_component,
    read_csv,
    read_lines,
    relative_path,
    where,
)


@dataclass
class PairList:
    """Pairs as indices into ``images`` (each image embedded once however many pairs use it)."""

    source: Path
    images: list[ImageInput]
    first: np.ndarray  # (P,) index into images
    second: np.ndarray
    labels: np.ndarray | None  # (P,) bool, True = same identity; None when the list has no labels (a test set)
    folds: np.ndarray  # (P,) int fold of each pair
    root: Path | None = None  # folder the image paths were resolved against (None: images held in memory)
    sources: list[Path] = field(default_factory=list)  # every file read (several when lists were combined)

    def __len__(self) -> int:
        return len(self.first)

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    @property
    def files(self) -> list[Path]:
        """Every file the list was read from."""
        return self.sources or [self.source]

    @property
    def name(self) -> str:
        """The file name, or the names joined with ``+`` for combined lists."""
        return " + ".join(p.name for p in self.files)

    def missing_images(self) -> list[Path]:
        """The listed image files that do not exist (in-memory images never are)."""
        return [p for p in self.images if isinstance(p, Path) and not p.is_file()]

    def require_images(self) -> None:
        """Raise one error naming the first missing image (and how many are), before anything is embedded."""
        missing = self.missing_images()
        if missing:
            raise FacelabError(f"{len(missing)} of {len(self.images)} images listed in {self.name} are missing "
                               f"(first: {missing[0]}); image paths are resolved under {self.root}: pass --data "
                               f"with the folder that holds them")


class _Indexer:
    def __init__(self) -> None:
        self.images: list[ImageInput] = []
        self._index: dict[ImageInput, int] = {}

    def __call__(self, src: ImageInput) -> int:
        if src not in self._index:
            self._index[src] = len(self.images)
            self.images.append(src)
        return self._index[src]


def contiguous_folds(n: int, k: int) -> np.ndarray:
    """Fold of each of ``n`` pairs cut into ``k`` consecutive blocks (insightface's unshuffled KFold)."""
    if k < 1:
        raise FacelabError(f"the number of folds must be >= 1, got {k}")
    if n < k:
        raise FacelabError(f"cannot cut {n} pairs into {k} folds")
    return np.repeat(np.arange(k), np.diff(np.linspace(0, n, k + 1).astype(int)))


def stratified_folds(labels: np.ndarray, k: int) -> np.ndarray:
    """Fold of each pair: the matched pairs (in order) cut into ``k`` consecutive blocks, the mismatched pairs
    likewise, block i of each being fold i -- the structure of LFW's ``pairs.txt`` for lists that carry no folds."""
    labels = np.asarray(labels, bool)
    folds = np.zeros(len(labels), np.int64)
    for cls, what in ((True, "matched"), (False, "mismatched")):
        idx = np.nonzero(labels == cls)[0]
        if len(idx) < k:
            raise FacelabError(f"cannot cut {len(idx)} {what} pairs into {k} folds (--folds)")
        folds[idx] = np.arange(len(idx)) * k // len(idx)
    return folds


log = logging.getLogger(__name__)


def one_class_folds(labels: np.ndarray | None, folds: np.ndarray) -> list[int]:
    """The folds holding pairs of one class only, in a labelled list that has both: a list sorted by label (all
    matched pairs, then all mismatched) cut into consecutive folds. k-fold accuracy then chooses each fold's
    threshold on folds of the other class and reads below chance."""
    if labels is None:
        return []
    labels = np.asarray(labels, bool)
    if labels.all() or not labels.any():
        return []
    return [int(f) for f in np.unique(folds) if len(np.unique(labels[folds == f])) == 1]


def warn_one_class_folds(path: Path, labels: np.ndarray | None, folds: np.ndarray, fix: str) -> None:
    """Log a one-line warning naming ``path`` when :func:`one_class_folds` finds any (``fix`` says what to do)."""
    bad = one_class_folds(labels, folds)
    if bad:
        log.warning("%s: %d of %d folds hold pairs of one class only (the list is sorted by label), so k-fold "
                    "accuracy is meaningless (below chance); %s", path, len(bad), len(np.unique(folds)), fix)


#: format name -> ``reader(path, image_root, folds) -> PairList``
PAIR_READERS: Registry[PairList] = Registry("pair-list format")
SUFFIX_FORMATS = {".txt": "lfw", ".csv": "csv", ".bin": "bin"}
#: LFW image numbers are written %04d; more digits than this is not an LFW list
_MAX_NUMBER_DIGITS = 6


def _lfw_image(root: Path, name: str, num: str, path: Path, line: int) -> Path:
    """``ROOT/name/name_000n.jpg`` for an LFW ``name n``, both checked."""
    name = path_component(name, path, line, "identity name")
    if not (num.isascii() and num.isdigit() and len(num) <= _MAX_NUMBER_DIGITS):
        raise TextFileError(f"{where(path, line)}: image number {num[:20]!r} is not a whole number of at most "
                            f"{_MAX_NUMBER_DIGITS} digits")
    return root / name / f"{name}_{int(num):04d}.jpg"


def _int_field(text: str, path: Path, line: int, what: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 9):
        raise TextFileError(f"{where(path, line)}: {what} {text[:20]!r} is not a whole number of at most 9 digits")
    return int(text)


@PAIR_READERS.register("lfw")
def read_lfw_pairs(path: Path, root: Path | None, folds: int = 10) -> PairList:
    """LFW ``pairs.txt`` (View 2): a header ``<folds> <n>``, then per fold n matched lines ``name i j`` and n
    mismatched lines ``name1 i name2 j``. Also the View 1 ``pairsDevTrain.txt`` / ``pairsDevTest.txt``: a header
    ``<n>``, n matched then n mismatched lines, folds from :func:`stratified_folds`. Images are
    ``ROOT/name/name_%04d.jpg`` (ROOT defaults to the file's folder)."""
    root = Path(root) if root else path.parent
    lines = read_lines(path, "LFW pair list")
    head_line, head = lines[0]
    fields = head.split()
    if len(fields) not in (1, 2):
        raise TextFileError(f"{where(path, head_line)}: first line must be '<folds> <pairs per class>' (pairs.txt) "
                            f"or '<pairs per class>' (pairsDevTest.txt), got {head[:60]!r}")
    numbers = [_int_field(f, path, head_line, "header value") for f in fields]
    n_folds, per_class = (numbers[0], numbers[1]) if len(numbers) == 2 else (None, numbers[0])
    if per_class == 0 or n_folds == 0:
        raise TextFileError(f"{where(path, head_line)}: the header declares no pairs ({head!r})")
    body = lines[1:]
    expected = (n_folds or 1) * 2 * per_class
    if len(body) != expected:
        raise TextFileError(f"{path}: header promises {n_folds or 1}x{2 * per_class} pairs but {len(body)} lines "
                            f"follow")
    index = _Indexer()
    first, second, labels = [], [], []
    for line, text in body:
        parts = text.split()
        if len(parts) == 3:
            a = _lfw_image(root, parts[0], parts[1], path, line)
            b, same = _lfw_image(root, parts[0], parts[2], path, line), True
        elif len(parts) == 4:
            a = _lfw_image(root, parts[0], parts[1], path, line)
            b, same = _lfw_image(root, parts[2], parts[3], path, line), False
        else:
            raise TextFileError(f"{where(path, line)}: expected 'name i j' or 'name1 i name2 j', got {text[:80]!r}")
        first.append(index(a))
        second.append(index(b))
        labels.append(same)
    label_arr = np.array(labels)
    fold = (np.repeat(np.arange(n_folds), 2 * per_class) if n_folds is not None
            else stratified_folds(label_arr, folds))
    return PairList(path, index.images, np.array(first), np.array(second), label_arr, fold, root, [path])


#: a Kaggle LFW CSV starts with these columns (pairs.csv, matchpairsDev*.csv and mismatchpairsDev*.csv alike)
KAGGLE_HEADER = ("name", "imagenum1")
#: where the Kaggle distribution keeps the images, relative to its CSVs (tried when --data is not given)
KAGGLE_IMAGE_DIRS = (".", "lfw-deepfunneled/lfw-deepfunneled", "lfw-deepfunneled", "lfw_funneled", "lfw")
_KAGGLE_SPLIT = re.compile(r"(?i)(mis)?(matchpairs.*\.csv)")


def _is_kaggle(table: CsvTable) -> bool:
    return tuple(h.lower() for h in table.header[:2]) == KAGGLE_HEADER


@PAIR_READERS.register("kaggle")
def read_kaggle_pairs(path: Path, root: Path | None, folds: int = 10) -> PairList:
    """The LFW CSVs of the Kaggle distribution: ``pairs.csv`` (header ``name,imagenum1,imagenum2,``; matched rows
    ``name,n1,n2,``, mismatched rows ``name1,n1,name2,n2``, in pairs.txt's order, so folds are its ``folds``
    consecutive blocks) and ``matchpairsDev*.csv`` / ``mismatchpairsDev*.csv`` (one class each: :func:`read_pairs`
    reads the two together and cuts :func:`stratified_folds`). ``name,n`` is ``ROOT/name/name_000n.jpg``; without
    ``root`` the first of :data:`KAGGLE_IMAGE_DIRS` (beside the CSV) that holds the first image is used."""
    return _kaggle_from_table(read_csv(path, "Kaggle LFW pair CSV"), root, folds)


def _kaggle_from_table(table: CsvTable, root: Path | None, folds: int) -> PairList:
    path = table.path
    if not _is_kaggle(table):
        raise TextFileError(f"{where(path, 1)}: expected a Kaggle LFW header starting name,imagenum1; got "
                            f"{','.join(table.header)[:80]!r}")
    rows: list[tuple[int, list[str]]] = []
    for line, cells in table.rows:
        values = [c.strip() for c in cells]
        while values and not values[-1]:
            values.pop()  # pairs.csv ends matched rows with an empty 4th field
        if len(values) not in (3, 4) or not all(values):
            raise TextFileError(f"{where(path, line)}: expected 'name,n1,n2' or 'name1,n1,name2,n2', got "
                                f"{','.join(cells)[:80]!r}")
        rows.append((line, values))
    if not rows:
        raise TextFileError(f"{path} has a header but no pairs")
    if root is None:
        line, v = rows[0]
        probe = _lfw_image(Path(), v[0], v[1], path, line)
        root = next((path.parent / d for d in KAGGLE_IMAGE_DIRS if (path.parent / d / probe).is_file()), path.parent)
        root = Path(os.path.normpath(root))
    index = _Indexer()
    first, second, labels = [], [], []
    for line, v in rows:
        matched = len(v) == 3
        first.append(index(_lfw_image(root, v[0], v[1], path, line)))
        second.append(index(_lfw_image(root, v[0] if matched else v[2], v[2] if matched else v[3], path, line)))
        labels.append(matched)
    label_arr = np.array(labels)
    fold = contiguous_folds(len(rows), folds) if len(set(labels)) == 2 else np.zeros(len(rows), np.int64)
    return PairList(path, index.images, np.array(first), np.array(second), label_arr, fold, root, [path])


_TRUTH = {"1": True, "0": False, "true": True, "false": False, "same": True, "different": False}


@PAIR_READERS.register("csv")
def read_csv_pairs(path: Path, root: Path | None, folds: int = 10) -> PairList:
    """CSV with a header naming ``img1,img2`` and optionally ``label`` (1/0, true/false, same/different) and
    ``fold``; paths are relative to ROOT (default: the CSV's folder; absolute paths and ``..`` are refused). Without
    ``fold`` the pairs are cut into ``folds`` consecutive blocks; without ``label`` the list can be scored but not
    evaluated. A Kaggle LFW CSV (header ``name,imagenum1,...``) is read by :func:`read_kaggle_pairs`."""
    table = read_csv(path, "pair CSV")
    if _is_kaggle(table):
        return _kaggle_from_table(table, root, folds)
    root = Path(root) if root else path.parent
    cols = {name: table.column(name) for name in ("img1", "img2", "label", "fold")}
    if cols["img1"] is None or cols["img2"] is None:
        raise TextFileError(f"{where(path, 1)}: expected a CSV header with columns img1,img2[,label][,fold] (or a "
                            f"Kaggle LFW header name,imagenum1,...); got {','.join(table.header)[:80]!r}")
    if not table.rows:
        raise TextFileError(f"{path} has a header but no pairs")
    index = _Indexer()
    first, second, labels, fold = [], [], [], []
    for row in table.rows:
        line = row[0]
        first.append(index(root / relative_path(table.field(row, cols["img1"], "img1"), path, line)))
        second.append(index(root / relative_path(table.field(row, cols["img2"], "img2"), path, line)))
        if cols["label"] is not None:
            value = table.field(row, cols["label"], "label").lower()
            if value not in _TRUTH:
                raise TextFileError(f"{where(path, line)}: label {value[:20]!r} is not one of {', '.join(_TRUTH)}")
            labels.append(_TRUTH[value])
        if cols["fold"] is not None:
            fold.append(_int_field(table.field(row, cols["fold"], "fold"), path, line, "fold"))
    folds_arr = np.array(fold) if fold else contiguous_folds(len(first), folds)
    if not fold and labels:
        warn_one_class_folds(path, np.array(labels), folds_arr, "add a fold column (img1,img2,label,fold) or "
                             "interleave matched and mismatched pairs")
    return PairList(path, index.images, np.array(first), np.array(second),
                    np.array(labels) if labels else None, folds_arr, root, [path])  # type: ignore[arg-type]


@PAIR_READERS.register("hw2p2")
def read_hw2p2_pairs(path: Path, root: Path | None, folds: int = 10) -> PairList:
    """Whitespace-separated ``img1 img2 [label]`` (HW2P2's verification_pairs_*.txt; CMU 11-785), paths relative to ROOT
    (absolute paths and ``..`` are refused)."""
    root = Path(root) if root else path.parent
    index = _Indexer()
    first, second, labels = [], [], []
    for n, line in read_lines(path, "pair list"):
        parts = line.split()
        if len(parts) not in (2, 3):
            raise TextFileError(f"{path}:{n}: expected 'img1 img2 [label]', got {line[:80]!r}")
        first.append(index(root / relative_path(parts[0], path, n)))
        second.append(index(root / relative_path(parts[1], path, n)))
        if len(parts) == 3:
            if parts[2] not in ("0", "1"):
                raise TextFileError(f"{path}:{n}: label must be 0 or 1, got {parts[2][:20]!r}")
            labels.append(parts[2] == "1")
    if labels and len(labels) != len(first):
        raise FacelabError(f"{path}: some lines have a label and some do not")
    fold = np.arange(len(first)) * folds // max(len(first), 1)
    if labels:
        warn_one_class_folds(path, np.array(labels), fold, "interleave matched and mismatched lines")
    return PairList(path, index.images, np.array(first), np.array(second),
                    np.array(labels) if labels else None, fold, root, [path])


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """Python 3 writes ``bytes`` under pickle protocol <= 2 as ``_codecs.encode(text, "latin1")``; this stands in
    for that one call and nothing else."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError(f"refusing _codecs.encode with {type(text).__name__}, {encoding!r}")
    return text.encode("latin1")


class _DataOnlyUnpickler(pickle.Unpickler):
    """Refuses every global: bytes, str, numbers, bools, lists and tuples need none, while anything that could run
    code (``os.system``, ``builtins.eval``, numpy reconstructors) arrives through ``find_class``. The one exception is
    the latin-1 bytes encoding of protocol-2 pickles, answered by a checked stand-in, not the real function."""

    def find_class(self, module: str, name: str) -> type:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes  # type: ignore[return-value]
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only bytes, lists and bools are accepted")


#: larger ``.bin`` files are refused unread (insightface's are 50-300 MB)
MAX_BIN_BYTES = 4 << 30


def load_bin(path: str | Path) -> tuple[list[bytes], list[bool]]:
    """Read an insightface verification ``.bin`` (a pickled ``(list of encoded images, list of issame)``) without
    mxnet and without trusting the pickle. The file is read whole first, so a length declared inside the pickle can
    never ask for more memory than the file has bytes (it is a "truncated" error instead)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_BIN_BYTES:
            raise FacelabError(f"{path}: {size:,} bytes is larger than a .bin pair file can be ({MAX_BIN_BYTES:,})")
        data = path.read_bytes()
    except FileNotFoundError:
        raise FacelabError(f"pair file not found: {path}") from None
    except OSError as exc:
        raise FacelabError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        obj = _DataOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            RecursionError, MemoryError, OverflowError) as exc:
        raise FacelabError(f"{path}: not a readable insightface .bin: {str(exc)[:200]}") from None
    if not (isinstance(obj, tuple | list) and len(obj) == 2):
        raise FacelabError(f"{path}: expected a pickled (images, issame) pair, got {type(obj).__name__}")
    bins, issame = obj
    if not (isinstance(bins, list) and all(isinstance(b, bytes | bytearray) for b in bins)):
        raise FacelabError(f"{path}: the image list must hold encoded images as bytes")
    if not (isinstance(issame, list) and all(isinstance(x, bool) for x in issame)):
        raise FacelabError(f"{path}: the issame list must hold booleans")
    if len(bins) != 2 * len(issame):
        raise FacelabError(f"{path}: {len(bins)} images for {len(issame)} pairs (need exactly 2 per pair)")
    if not issame:
        raise FacelabError(f"{path} holds no pairs")
    return [bytes(b) for b in bins], issame


@PAIR_READERS.register("bin")
def read_bin_pairs(path: Path, root: Path | None, folds: int = 10) -> PairList:
    """insightface ``.bin``: images 2i and 2i+1 form pair i; folds are consecutive blocks (as insightface does)."""
    bins, issame = load_bin(path)
    index = _Indexer()
    first = [index((f"{path}#{2 * i}", bins[2 * i])) for i in range(len(issame))]
    second = [index((f"{path}#{2 * i + 1}", bins[2 * i + 1])) for i in range(len(issame))]
    fold = contiguous_folds(len(issame), folds)
    warn_one_class_folds(path, np.array(issame), fold, "insightface's own .bin files alternate blocks of matched "
                         "and mismatched pairs; rebuild this one that way")
    return PairList(path, index.images, np.array(first), np.array(second), np.array(issame), fold, None, [path])


def combine_pair_lists(lists: Sequence[PairList], folds: int) -> PairList:
    """Several labelled lists as one (e.g. Kaggle's matched and mismatched files): images shared, folds from
    :func:`stratified_folds` over the concatenation, pairs ordered by fold (stable, so within a fold the files'
    order is kept)."""
    for pl in lists:
        if pl.labels is None:
            raise FacelabError(f"{pl.source}: only labelled pair lists can be combined")
    index = _Indexer()
    first = np.concatenate([[index(pl.images[i]) for i in pl.first] for pl in lists]).astype(np.int64)
    second = np.concatenate([[index(pl.images[i]) for i in pl.second] for pl in lists]).astype(np.int64)
    labels = np.concatenate([pl.labels for pl in lists if pl.labels is not None]).astype(bool)
    fold = stratified_folds(labels, folds)
    order = np.argsort(fold, kind="stable")
    roots = {pl.root for pl in lists}
    return PairList(lists[0].source, index.images, first[order], second[order], labels[order], fold[order],
                    lists[0].root if len(roots) == 1 else None, [f for pl in lists for f in pl.sources])


def kaggle_sibling(path: Path) -> Path | None:
    """For a Kaggle ``matchpairsX.csv`` its ``mismatchpairsX.csv`` and vice versa (None for any other name)."""
    m = _KAGGLE_SPLIT.fullmatch(path.name)
    if m is None:
        return None
    return path.with_name(m.group(2) if m.group(1) else "mis" + m.group(2))


def _read_one(path: Path, root: Path | None, fmt: str | None, folds: int) -> PairList:
    if not path.is_file():
        raise FacelabError(f"pair file not found: {path}")
    name = fmt or SUFFIX_FORMATS.get(path.suffix.lower())
    if name is None:
        raise FacelabError(f"{path}: unknown pair-list suffix; pass a format ({', '.join(PAIR_READERS.names())})")
    return PAIR_READERS.get(name)(path, root, folds)


def read_pairs(path: str | Path | Sequence[str | Path], root: str | Path | None = None, fmt: str | None = None,
               folds: int = 10) -> PairList:
    """Read a pair list; ``fmt`` defaults to the reader registered for the file's suffix.

    Several files are read as one list (:func:`combine_pair_lists`). A Kaggle ``matchpairsX.csv`` or
    ``mismatchpairsX.csv`` given alone is read together with its sibling beside it, since each holds one class.

    Raises:
        FacelabError: a missing or malformed file (naming file and line), or a one-class file without its sibling.
    """
    files = [Path(path)] if isinstance(path, str | os.PathLike) else [Path(p) for p in path]
    if not files:
        raise FacelabError("no pair file given")
    root_path = Path(root) if root else None
    if len(files) == 1:
        sibling = kaggle_sibling(files[0])
        if sibling is not None and files[0].is_file():
            if not sibling.is_file():
                kind = "mismatched" if files[0].name.lower().startswith("mis") else "matched"
                raise FacelabError(f"{files[0]} holds only {kind} pairs and {sibling.name} is not beside it: give "
                                   f"both (--pairs {files[0].name} --pairs <the other file>)")
            files = sorted([files[0], sibling], key=lambda f: f.name.lower().startswith("mis"))
    lists = [_read_one(f, root_path, fmt, folds) for f in files]
    if len(lists) == 1:
        return lists[0]
    return combine_pair_lists(lists, folds)


def write_pairs_csv(path: str | Path, rows: list[tuple[str, str, bool]]) -> None:
    """Write ``img1,img2,label`` rows (the CSV reader's format); used by tests and tools that make pair lists."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["img1", "img2", "label"])
    w.writerows([(a, b, int(s)) for a, b, s in rows])
    Path(path).write_text(buf.getvalue())


# --------------------------------------------------------------------------------------------------- k-fold protocol

#: ``fit(train_idx) -> scores for all pairs`` (oriented, higher = alike); a stateless scorer ignores train_idx
FoldScorer = Callable[[np.ndarray], np.ndarray]


def kfold_accuracy(scores: np.ndarray | FoldScorer, labels: np.ndarray, folds: np.ndarray) -> dict:
    """Per fold: threshold = best accuracy on the other folds, accuracy on this fold. ``scores`` may be a function
    of the training pairs' indices, for scorers that learn (fitted on the other folds only, never on the test fold).
    Returns the mean/std over folds, every fold's threshold and accuracy, and the out-of-fold scores."""
    labels = np.asarray(labels, bool)
    fold_ids = np.unique(folds)
    if len(fold_ids) < 2:
        raise FacelabError("the k-fold protocol needs at least 2 folds")
    out_scores = np.zeros(len(labels))
    per_fold = []
    for f in fold_ids:
        test, train = folds == f, folds != f
        s = scores(np.nonzero(train)[0]) if callable(scores) else np.asarray(scores, float)
        _, thr = best_accuracy(roc_curve(s[train], labels[train]))
        acc = float(np.mean((s[test] >= thr) == labels[test]))
        out_scores[test] = s[test]
        per_fold.append({"fold": int(f), "threshold": thr, "accuracy": acc, "pairs": int(test.sum())})
    accs = np.array([p["accuracy"] for p in per_fold])
    return {"folds": len(fold_ids), "accuracy_mean": float(accs.mean()), "accuracy_std": float(accs.std()),
            "per_fold": per_fold, "scores": out_scores}


# ---------------------------------------------------------------------------------------------------- whole protocol

DEFAULT_SCORERS = ("cosine", "squared_l2", "deepface")


def score_pairs(emb: np.ndarray, pairs: PairList, scorers: tuple[str, ...] = DEFAULT_SCORERS,
                far_targets: tuple[float, ...] = DEFAULT_FAR_TARGETS) -> dict[str, dict]:
    """Run the k-fold protocol and the ROC metrics for each scorer on embeddings of ``pairs.images``.

    Fixed scores are one pass; a learned scorer is refitted per fold and its ROC uses out-of-fold scores only."""
    if pairs.labels is None:
        raise FacelabError(f"{pairs.source}: the pair list has no labels, so it can be scored but not evaluated")
    a, b, labels = emb[pairs.first], emb[pairs.second], pairs.labels
    results: dict[str, dict] = {}
    for name in scorers:
        scorer: PairScorer = build_scorer(name)

        def fold_scores(train: np.ndarray, sc: PairScorer = scorer) -> np.ndarray:
            sc.fit(a[train], b[train], labels[train])
            return sc.score(a, b)

        kf = kfold_accuracy(fold_scores if scorer.trainable else scorer.score(a, b), labels, pairs.folds)
        for p in kf["per_fold"]:
            p["threshold"] = scorer.native(p["threshold"])
        report = native_thresholds(verification_report(kf["scores"], labels, far_targets), scorer.native)
        results[name] = {"scorer": scorer, "scores": kf["scores"], "labels": labels,
                         "report": {"score": name, "accept": scorer.accept, **report}, "kfold": kf}
    return results


def embed_pair_list(model: str | Path | FaceModel, pairs_file: str | Path | Sequence[str | Path],
                    data_root: str | Path | None = None, fmt: str | None = None, *, folds: int = 10,
                    require_labels: bool = False, device: str | None = None, flip: bool | None = None,
                    cache: bool = True, quiet: bool = False) -> tuple[PairList, FaceModel, Embedder, np.ndarray]:
    """Read a pair list, check that its images exist (and, with ``require_labels``, that it is labelled) before the
    model is loaded, then embed every image once. Returns (pairs, model, embedder, raw (N, D) float32 embeddings
    in the order of ``pairs.images``).

    Raises:
        FacelabError: an unreadable list, missing images, no labels when required, an unusable image.
    """
    pairs = read_pairs(pairs_file, data_root, fmt, folds)
    pairs.require_images()  # a wrong --data is one error now, not a failure after embedding half the list
    if require_labels and pairs.labels is None:
        raise FacelabError(f"{pairs.source}: the pair list has no labels (same/different), which this needs")
    fm = load_model(model, device=device)
    embedder = fm.embedder(progress=not quiet, cache=cache, flip=flip)
    return pairs, fm, embedder, embedder.embed_all(pairs.images, desc=f"embed {pairs.name}")


def evaluate_pairs(model: str | Path | FaceModel, pairs_file: str | Path | Sequence[str | Path],
                   data_root: str | Path | None = None, fmt: str | None = None,
                   scorers: tuple[str, ...] = DEFAULT_SCORERS, far_targets: tuple[float, ...] = DEFAULT_FAR_TARGETS,
                   out_dir: str | Path | None = None, device: str | None = None, flip: bool | None = None,
                   folds: int = 10, cache: bool = True, quiet: bool = False) -> dict:
    """``facelab pairs``: embed every image of a pair list (cached for runs), score it with each scorer, write
    reports. ``model`` is any model reference (run, checkpoint, bundle, pretrained name); ``pairs_file`` may be
    several files read as one list (:func:`read_pairs`). The list is read and its images checked to exist before
    the model is loaded."""
    pairs, fm, embedder, emb = embed_pair_list(model, pairs_file, data_root, fmt, folds=folds, device=device,
                                               flip=flip, cache=cache, quiet=quiet)
    results = score_pairs(emb, pairs, scorers, far_targets)
    meta = {"name": pairs.name, "pairs_file": " ".join(str(f) for f in pairs.files), "model": fm.ref or fm.source,
            "model_kind": fm.kind, "backbone": fm.architecture.get("backbone"), "align": fm.spec.align,
            "flip_tta": embedder.flip, "images": len(pairs.images), "pairs_total": len(pairs),
            "model_fingerprint": embedder.fingerprint[:16], "images_embedded_now": embedder.calls}
    if fm.run is not None:
        meta["epochs"] = fm.run.epoch
    out = Path(out_dir) if out_dir else default_report_dir(fm, "pairs_" + "_".join(f.stem for f in pairs.files))
    doc = write_verification_report(out, meta, results)
    doc["out_dir"] = str(out)
    return doc


def format_pairs_table(doc: dict) -> str:
    """The console summary of :func:`evaluate_pairs`."""
    rows = [f"{doc['name']}: {doc['pairs_total']} pairs, {doc['images']} images ({doc['images_embedded_now']} "
            f"embedded now, the rest from cache); reports in {doc.get('out_dir', '')}"]
    for name, s in doc["scorers"].items():
        v, kf = s["verification"], s["kfold"]
        tar = ", ".join(f"{o['tar']:.4f}@{o['far_target']:g}" for o in v["tar_at_far"] if o["reliable"])
        rows.append(f"  {name:<11} {kf['folds']}-fold accuracy {kf['accuracy_mean']:.4f} ± {kf['accuracy_std']:.4f}"
                    f"  AUC {v['roc_auc']:.4f}  EER {v['eer']:.4f}  TAR@FAR {tar}")
    return "\n".join(rows)


def validation_pairs(path: str, root: str | None = None, fmt: str | None = None) -> ValidationPairs:
    """A labelled pair list for per-epoch validation during training (:mod:`facelab.engine.validation`).

    Raises:
        FacelabError: as :func:`read_pairs`, a list without labels, or missing images (named).
    """
    pairs = read_pairs(path, root, fmt)
    if pairs.labels is None:
        raise FacelabError(f"{pairs.name} has no labels: validation.pairs needs a labelled pair list")
    pairs.require_images()
    return ValidationPairs(pairs.name, pairs.images, pairs.first, pairs.second, pairs.labels)
