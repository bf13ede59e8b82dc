"""CMU 11-785 HW2P2 layouts: classification test folder, known/unknown open-set verification, and the older pair
list scored by ROC AUC.

Accepted inputs (documented in docs/evaluation.md):

* classification: a flat folder of test images -> CSV ``id,label`` (file name, predicted class folder name, or the
  class index in sorted-folder order with ``index_labels``);
* known/unknown: ``ROOT/known/<identity>/<images>``, ``ROOT/unknown_dev/<images>`` and ``ROOT/verification_dev.csv``
  with a header naming an image column (``unknown_dev``, ``id`` or ``image``) and an identity column (``known``,
  ``label`` or ``identity``); ``n000000`` marks an image whose identity is not in ``known/``. Optional
  ``ROOT/unknown_test/`` gets the submission; without it the submission covers ``unknown_dev/``;
* pair list: whitespace-separated ``img1 img2 [label]`` lines (reader ``hw2p2``); with labels it is scored by ROC
  AUC, and a submission ``Id,Category`` (``"img1 img2"``, cosine score) is always written.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facelab.data.given import image_folder_classes
from facelab.errors import FacelabError
from facelab.evaluation.identification import (
    best_open_set_accuracy,
    evaluate_searches,
    folder_items,
    open_set_accuracy,
    open_set_threshold,
    search,
)
from facelab.evaluation.metrics import DEFAULT_FAR_TARGETS, normalize, score_type
from facelab.evaluation.pairs import read_hw2p2_pairs, read_pairs, score_pairs  # noqa: F401 (re-exported)
from facelab.evaluation.report import default_report_dir, write_verification_report
from facelab.images import list_images as _list_files
from facelab.inference.model import FaceModel, load_model
from facelab.runs import LoadedRun
from facelab.utils.io import atomic_open
from facelab.utils.textfile import TextFileError, path_component, read_csv, relative_path

UNKNOWN = "n000000"
IMAGE_COLUMNS = ("unknown_dev", "id", "image")
IDENTITY_COLUMNS = ("known", "label", "identity")


def list_images(folder: str | Path) -> list[Path]:
    """The images of a flat folder, chosen by content (sorted). A folder holding no image but exactly one
    sub-folder (``test/<any>/``, the wrapping ImageFolder-based loaders need) is read through it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FacelabError(f"image folder not found: {folder}")
    found = [folder / p for p in _list_files(folder, recursive=False, verify=False).images]
    subs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if not found and len(subs) == 1:
        return list_images(subs[0])
    return found


def grader_classes(run: LoadedRun, data_root: str | Path | None = None) -> list[str]:
    """The class list a grader numbers classes by: torchvision ImageFolder's sorted list of every class folder of
    the training folder. A run trained on a given split (``--train``) stores it; a seeded split trained on some of
    the folder's identities only, so the folder (``data_root``, default the run's ``data.root``) is listed again.

    Raises:
        FacelabError: the training folder is gone, or the run's classes are not all in it.
    """
    manifest = run.manifest
    if manifest.report.get("given"):
        return list(manifest.classes)
    root = Path(data_root or run.cfg.data.root)
    if not root.is_dir():
        raise FacelabError(f"class indices follow ImageFolder's order over the training folder {root}, which is not "
                           f"there: pass --data with the folder the run was trained on")
    classes = image_folder_classes(root)
    stray = [c for c in manifest.classes if c not in set(classes)]
    if stray:
        raise FacelabError(f"{root} is not the folder the run was trained on: it has no class folder {stray[0]} "
                           f"(pass --data)")
    return classes


def write_csv(path: str | Path, header: list[str], rows: list[list[Any]]) -> None:
    with atomic_open(path, "w") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def _model(model: str | Path | FaceModel, device: str | None) -> FaceModel:
    return load_model(model, device=device)


# ------------------------------------------------------------------------------------------------- classification

@torch.no_grad()
def classify_folder(run: str | Path | FaceModel, test_dir: str | Path, out_csv: str | Path,
                    data_root: str | Path | None = None, index_labels: bool = False, device: str | None = None,
                    quiet: bool = False) -> dict[str, Any]:
    """Predict a training identity for every image of ``test_dir``: the loss's class scores, or for metric losses
    the nearest class centre of the training embeddings (which needs the training data, ``data_root``).

    Writes ``id,label`` rows (file name; the class folder name, or with ``index_labels`` its index in ImageFolder's
    order over every class folder of the training folder, :func:`grader_classes` -- the numbering a grader using
    ``torchvision.datasets.ImageFolder`` expects, whatever the run held out). Returns counts; ``never_predicted``
    counts the grader's classes the run did not train on (held out as unseen identities, or without images).
    """
    fm = _model(run, device)
    if fm.run is None:
        raise FacelabError(f"classification needs a training run (its classes and loss); {fm.ref} is a {fm.kind}")
    lr = fm.run
    embedder = fm.embedder(progress=not quiet, cache=True)
    images = list_images(test_dir)
    if not images:
        raise FacelabError(f"no images in {test_dir}")
    emb = embedder.embed_all(images, desc="embed test images")
    logits = lr.loss.logits(torch.from_numpy(emb).to(lr.device))
    if logits is not None:
        scores = logits.float().cpu().numpy()
    else:
        root = Path(data_root or lr.cfg.data.root)
        train = embedder.embed_all([root / p for p, _ in lr.manifest.train], desc="embed class centres")
        y = np.array([c for _, c in lr.manifest.train])
        centres = normalize(np.stack([normalize(train)[y == c].mean(0) for c in range(lr.manifest.num_classes)]))
        scores = normalize(emb) @ centres.T
    pred = scores.argmax(1)
    names = [lr.manifest.classes[c] for c in pred]
    doc: dict[str, Any] = {"images": len(images), "classes": lr.manifest.num_classes, "csv": str(out_csv)}
    if index_labels:
        order = grader_classes(lr, data_root)
        index = {name: i for i, name in enumerate(order)}
        labels: list[Any] = [index[n] for n in names]
        doc["grader_classes"] = len(order)
        doc["never_predicted"] = len(order) - lr.manifest.num_classes  # held out, dropped or empty: not trained
    else:
        labels = names
    write_csv(out_csv, ["id", "label"], [[p.name, lab] for p, lab in zip(images, labels, strict=True)])
    return doc


# ------------------------------------------------------------------------------------------ known / unknown (open set)

def read_verification_csv(path: str | Path) -> dict[str, str]:
    """image file name -> identity (``n000000`` when not in known/). Malformed input (encoding, missing columns,
    short rows, paths outside the folder) is an error naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise FacelabError(f"verification CSV not found: {path}")
    table = read_csv(path, "verification CSV")
    img_col = next((i for c in IMAGE_COLUMNS if (i := table.column(c)) is not None), None)
    id_col = next((i for c in IDENTITY_COLUMNS if (i := table.column(c)) is not None), None)
    if img_col is None or id_col is None:
        raise TextFileError(f"{path}:1: header must name an image column ({', '.join(IMAGE_COLUMNS)}) and an "
                            f"identity column ({', '.join(IDENTITY_COLUMNS)}); got {', '.join(table.header)[:80]}")
    out: dict[str, str] = {}
    for row in table.rows:
        image = relative_path(table.field(row, img_col, "image"), path, row[0])
        out[Path(image).name] = path_component(table.field(row, id_col, "identity"), path, row[0], "identity")
    return out


def verify_known_unknown(run: str | Path | FaceModel, root: str | Path, dev_csv: str | Path | None = None,
                         threshold: float | None = None, score: str = "cosine", out_dir: str | Path | None = None,
                         test_dir: str | Path | None = None, device: str | None = None,
                         quiet: bool = False) -> dict[str, Any]:
    """Open-set identification of ``unknown_dev`` against ``known``: dev accuracy at a threshold (given, else the
    run's calibrated one, else the best on dev -- flagged optimistic), the ISO open-set metrics, and submission /
    dev-prediction CSVs where a top score below the threshold answers ``n000000``."""
    fm = _model(run, device)
    root = Path(root)
    truth = read_verification_csv(dev_csv or root / "verification_dev.csv")
    embedder = fm.embedder(progress=not quiet, cache=True)
    g_paths, g_labels = folder_items(root / "known")
    dev_images = list_images(root / "unknown_dev")
    missing = [p.name for p in dev_images if p.name not in truth]
    if missing:
        raise FacelabError(f"verification CSV has no row for unknown_dev/{missing[0]} ({len(missing)} in all)")
    enrolled = set(g_labels)
    stray = sorted({v for v in truth.values() if v != UNKNOWN and v not in enrolled})
    if stray:
        raise FacelabError(f"verification CSV names identity {stray[0]} which has no folder in {root / 'known'}")
    dev_labels = [truth[p.name] for p in dev_images]
    emb = embedder.embed_all(g_paths + dev_images, desc="embed known + unknown_dev")
    s = search(emb[len(g_paths):], dev_labels, emb[: len(g_paths)], g_labels, score)
    st = score_type(score)
    threshold, source = open_set_threshold(fm, embedder, score, threshold)
    if threshold is None:
        threshold, source = st.native(best_open_set_accuracy(s)[1]), "best on dev (optimistic)"
    out = Path(out_dir) if out_dir else default_report_dir(fm, "hw2p2")
    meta = {"model": fm.ref or fm.source, "layout": str(root), "threshold": threshold, "threshold_source": source,
            "known_images": len(g_paths), "unknown_dev_images": len(dev_images)}
    doc = evaluate_searches(s, meta, out, score, DEFAULT_FAR_TARGETS, threshold=threshold, max_rank=20)
    doc["dev_accuracy"] = open_set_accuracy(s, st.oriented(threshold))

    def predict(e: np.ndarray) -> list[str]:
        t = search(e, [UNKNOWN] * len(e), emb[: len(g_paths)], g_labels, score)
        return [t.identities[i] if sc >= st.oriented(threshold) else UNKNOWN
                for i, sc in zip(t.top_identity, t.top_score, strict=True)]

    dev_emb = emb[len(g_paths):]
    write_csv(out / "dev_predictions.csv", ["id", "label", "truth"],
              [[p.name, y, truth[p.name]] for p, y in zip(dev_images, predict(dev_emb), strict=True)])
    test = Path(test_dir) if test_dir else root / "unknown_test"
    sub_images, sub_emb = dev_images, dev_emb
    if test.is_dir():
        sub_images = list_images(test)
        sub_emb = embedder.embed_all(sub_images, desc="embed unknown_test")
    write_csv(out / "submission.csv", ["id", "label"],
              [[p.name, y] for p, y in zip(sub_images, predict(sub_emb), strict=True)])
    doc["submission"] = str(out / "submission.csv")
    doc["submission_images"] = len(sub_images)
    return doc


# -------------------------------------------------------------------------------------------- older pair-list layout

def score_pair_file(run: str | Path | FaceModel, pair_file: str | Path, data_root: str | Path | None = None,
                    out_dir: str | Path | None = None, device: str | None = None,
                    quiet: bool = False) -> dict[str, Any]:
    """Cosine score of every pair; ROC AUC (with the full verification report) when the file has labels; always a
    submission ``Id,Category``."""
    pairs = read_pairs(pair_file, data_root, "hw2p2")
    pairs.require_images()
    fm = _model(run, device)
    embedder = fm.embedder(progress=not quiet, cache=True)
    emb = embedder.embed_all(pairs.images, desc=f"embed {Path(pair_file).name}")
    scores = score_type("cosine").pairwise(emb[pairs.first], emb[pairs.second])
    out = Path(out_dir) if out_dir else default_report_dir(fm, "hw2p2")
    base = Path(data_root or Path(pair_file).parent)
    rel = [Path(str(p)).relative_to(base).as_posix() for p in pairs.images]
    write_csv(out / "pairs_submission.csv", ["Id", "Category"],
              [[f"{rel[a]} {rel[b]}", f"{sc:.6f}"] for a, b, sc in zip(pairs.first, pairs.second, scores,
                                                                          strict=True)])
    doc: dict[str, Any] = {"pairs": len(pairs), "submission": str(out / "pairs_submission.csv"), "auc": None}
    if pairs.has_labels:
        results = score_pairs(emb, pairs, ("cosine",))
        rep = write_verification_report(out, {"name": Path(pair_file).name, "model": fm.ref or fm.source}, results,
                                        prefix="pairs")
        doc["auc"] = rep["scorers"]["cosine"]["verification"]["roc_auc"]
        doc["report"] = rep
    return doc
