"""1:1 verification from pair lists: LFW ``pairs.txt``, a CSV ``img1,img2,label[,fold]`` and insightface ``.bin``.

Readers are registered by format and picked by file suffix (or by name), and all produce the same ``PairList``.
The k-fold protocol is LFW's: for each fold the accept threshold is the one with the best accuracy on the other
folds, and the reported accuracy is the mean (and population std) over folds of that held-out accuracy -- the
pooled ``best_accuracy`` on all pairs would be optimistic.
"""

from __future__ import annotations

import csv
import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
from facelab.inference.model import FaceModel, load_model
from facelab.registry import Registry


@dataclass
class PairList:
    """Pairs as indices into ``images`` (each image embedded once however many pairs use it)."""

    source: Path
    images: list[ImageInput]
    first: np.ndarray  # (P,) index into images
    second: np.ndarray
    labels: np.ndarray | None  # (P,) bool, True = same identity; None when the list has no labels (a test set)
    folds: np.ndarray  # (P,) int fold of each pair

    def __len__(self) -> int:
        return len(self.first)

    @property
    def has_labels(self) -> bool:
        return self.labels is not None


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
    if n < k:
        raise FacelabError(f"cannot cut {n} pairs into {k} folds")
    return np.repeat(np.arange(k), np.diff(np.linspace(0, n, k + 1).astype(int)))


#: format name -> ``reader(path, image_root, folds) -> PairList``
PAIR_READERS: Registry[PairList] = Registry("pair-list format")
SUFFIX_FORMATS = {".txt": "lfw", ".csv": "csv", ".bin": "bin"}


@PAIR_READERS.register("lfw")
def read_lfw_pairs(path: Path, root: Path | None, folds: int = 10) -> PairList:
    """LFW ``pairs.txt``: a header ``<folds> <n>``, then per fold n genuine lines ``name i j`` and n impostor lines
    ``name1 i name2 j``; images are ``ROOT/name/name_%04d.jpg`` (ROOT defaults to the file's folder)."""
    root = Path(root) if root else path.parent
    lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    if not lines or len(lines[0]) != 2:
        raise FacelabError(f"{path}: first line must be '<folds> <pairs per class>' (LFW pairs.txt)")
    try:
        n_folds, per_class = int(lines[0][0]), int(lines[0][1])
    except ValueError:
        raise FacelabError(f"{path}: first line must be two integers, got {' '.join(lines[0])}") from None
    body = lines[1:]
    if len(body) != n_folds * 2 * per_class:
        raise FacelabError(f"{path}: header promises {n_folds}x{2 * per_class} pairs but {len(body)} lines follow")
    index = _Indexer()

    def img(name: str, num: str, line: int) -> int:
        try:
            return index(root / name / f"{name}_{int(num):04d}.jpg")
        except ValueError:
            raise FacelabError(f"{path}:{line}: image number {num!r} is not an integer") from None

    first, second, labels = [], [], []
    for i, parts in enumerate(body):
        line = i + 2
        if len(parts) == 3:
            a, b, same = img(parts[0], parts[1], line), img(parts[0], parts[2], line), True
        elif len(parts) == 4:
            a, b, same = img(parts[0], parts[1], line), img(parts[2], parts[3], line), False
        else:
            raise FacelabError(f"{path}:{line}: expected 'name i j' or 'name1 i name2 j', got {' '.join(parts)}")
        first.append(a)
        second.append(b)
        labels.append(same)
    fold = np.repeat(np.arange(n_folds), 2 * per_class)
    return PairList(path, index.images, np.array(first), np.array(second), np.array(labels), fold)


@PAIR_READERS.register("csv")
def read_csv_pairs(path: Path, root: Path | None, folds: int = 10) -> PairList:
    """CSV with a header naming ``img1,img2`` and optionally ``label`` (1/0, true/false, same/different) and
    ``fold``; paths are relative to ROOT (default: the CSV's folder). Without ``fold`` the pairs are cut into
    ``folds`` consecutive blocks; without ``label`` the list can be scored but not evaluated."""
    root = Path(root) if root else path.parent
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"img1", "img2"} <= set(rows[0]):
        raise FacelabError(f"{path}: expected a CSV header with columns img1,img2[,label][,fold]")
    truth = {"1": True, "0": False, "true": True, "false": False, "same": True, "different": False}
    index = _Indexer()
    first, second, labels, fold = [], [], [], []
    for i, row in enumerate(rows):
        first.append(index(root / row["img1"].strip()))
        second.append(index(root / row["img2"].strip()))
        if "label" in row:
            value = (row["label"] or "").strip().lower()
            if value not in truth:
                raise FacelabError(f"{path}:{i + 2}: label {row['label']!r} is not one of {', '.join(truth)}")
            labels.append(truth[value])
        if "fold" in row:
            try:
                fold.append(int(row["fold"]))
            except (TypeError, ValueError):
                raise FacelabError(f"{path}:{i + 2}: fold {row['fold']!r} is not an integer") from None
    folds_arr = np.array(fold) if fold else contiguous_folds(len(rows), folds)
    return PairList(path, index.images, np.array(first), np.array(second),
                    np.array(labels) if labels else None, folds_arr)  # type: ignore[arg-type]


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


def load_bin(path: str | Path) -> tuple[list[bytes], list[bool]]:
    """Read an insightface verification ``.bin`` (a pickled ``(list of encoded images, list of issame)``) without
    mxnet and without trusting the pickle."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            obj = _DataOnlyUnpickler(fh, encoding="bytes").load()
    except FileNotFoundError:
        raise FacelabError(f"pair file not found: {path}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as exc:
        raise FacelabError(f"{path}: not a readable insightface .bin: {exc}") from None
    if not (isinstance(obj, tuple | list) and len(obj) == 2):
        raise FacelabError(f"{path}: expected a pickled (images, issame) pair, got {type(obj).__name__}")
    bins, issame = obj
    if not (isinstance(bins, list) and all(isinstance(b, bytes | bytearray) for b in bins)):
        raise FacelabError(f"{path}: the image list must hold encoded images as bytes")
    if not (isinstance(issame, list) and all(isinstance(x, bool) for x in issame)):
        raise FacelabError(f"{path}: the issame list must hold booleans")
    if len(bins) != 2 * len(issame):
        raise FacelabError(f"{path}: {len(bins)} images for {len(issame)} pairs (need exactly 2 per pair)")
    return [bytes(b) for b in bins], issame


@PAIR_READERS.register("bin")
def read_bin_pairs(path: Path, root: Path | None, folds: int = 10) -> PairList:
    """insightface ``.bin``: images 2i and 2i+1 form pair i; folds are consecutive blocks (as insightface does)."""
    bins, issame = load_bin(path)
    index = _Indexer()
    first = [index((f"{path}#{2 * i}", bins[2 * i])) for i in range(len(issame))]
    second = [index((f"{path}#{2 * i + 1}", bins[2 * i + 1])) for i in range(len(issame))]
    return PairList(path, index.images, np.array(first), np.array(second), np.array(issame),
                    contiguous_folds(len(issame), folds))


def read_pairs(path: str | Path, root: str | Path | None = None, fmt: str | None = None, folds: int = 10) -> PairList:
    """Read a pair list; ``fmt`` defaults to the reader registered for the file's suffix."""
    path = Path(path)
    if not path.is_file():
        raise FacelabError(f"pair file not found: {path}")
    name = fmt or SUFFIX_FORMATS.get(path.suffix.lower())
    if name is None:
        raise FacelabError(f"{path}: unknown pair-list suffix; pass a format ({', '.join(PAIR_READERS.names())})")
    return PAIR_READERS.get(name)(path, Path(root) if root else None, folds)


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


def evaluate_pairs(model: str | Path | FaceModel, pairs_file: str | Path, data_root: str | Path | None = None,
                   fmt: str | None = None, scorers: tuple[str, ...] = DEFAULT_SCORERS,
                   far_targets: tuple[float, ...] = DEFAULT_FAR_TARGETS, out_dir: str | Path | None = None,
                   device: str | None = None, flip: bool | None = None, folds: int = 10, cache: bool = True,
                   quiet: bool = False) -> dict:
    """``facelab pairs``: embed every image of a pair list (cached for runs), score it with each scorer, write
    reports. ``model`` is any model reference (run, checkpoint, bundle, pretrained name)."""
    fm = load_model(model, device=device)
    pairs = read_pairs(pairs_file, data_root, fmt, folds)
    embedder = fm.embedder(progress=not quiet, cache=cache, flip=flip)
    emb = embedder.embed_all(pairs.images, desc=f"embed {Path(pairs_file).name}")
    results = score_pairs(emb, pairs, scorers, far_targets)
    meta = {"name": Path(pairs_file).name, "pairs_file": str(pairs_file), "model": fm.ref or fm.source,
            "model_kind": fm.kind, "backbone": fm.architecture.get("backbone"), "align": fm.spec.align,
            "flip_tta": embedder.flip, "images": len(pairs.images), "pairs_total": len(pairs),
            "model_fingerprint": embedder.fingerprint[:16], "images_embedded_now": embedder.calls}
    if fm.run is not None:
        meta["epochs"] = fm.run.epoch
    out = Path(out_dir) if out_dir else default_report_dir(fm, f"pairs_{Path(pairs_file).stem}")
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
