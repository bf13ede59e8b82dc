"""``facelab cluster DIR --model MODEL --out OUT``: embed every face under a folder, cluster the embeddings
(:mod:`facelab.evaluation.clustering`) and write what a person needs to look at the groups.

Output (every file written atomically; the cluster folders are built beside and swapped in whole)::

    OUT/clusters.csv        path,cluster -- one row per embedded image (path relative to DIR; -1 = noise)
    OUT/clusters.json       method, threshold and its source, model, counts, cluster sizes, every unusable file
                            with its reason, and the scores against the identity folders when DIR has them
    OUT/clusters/           cluster_0000/ (largest first) ... and noise/: symlinks to the images, or copies
                            (``link="copy"``), named by their path with "/" -> "__"; none with ``link="none"``
    OUT/contact_sheet.png   one line per cluster (largest first), up to ``sheet_faces`` faces each; with identity
                            folders a face is framed green when it has its cluster's majority identity, else red

When every image lies in a subfolder and there are at least two, the first folder level is taken as the identity
and the clustering is scored (pairwise and BCubed precision / recall / F, NMI).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facelab.errors import FacelabError
from facelab.evaluation.clustering import NOISE, ClusterScores, cluster_embeddings, score_clustering
from facelab.faces.folder import Cell, tile_sheet
from facelab.images import FileTally, list_images
from facelab.inference.model import FaceModel, unit
from facelab.inference.thresholds import VERIFICATION
from facelab.utils.io import atomic_open, write_json

CSV, JSON, FOLDERS, SHEET = "clusters.csv", "clusters.json", "clusters", "contact_sheet.png"
LINKS = ("symlink", "copy", "none")
GREEN, RED, GREY = (40, 180, 80), (220, 50, 40), (128, 128, 128)


@dataclass
class ClusterReport:
    """What :func:`cluster_folder` did: ``paths`` (relative to the folder) with their ``labels`` (cluster ids,
    -1 noise), the threshold used, the scores (None without identity folders) and the file tally."""

    root: Path
    out: Path
    method: str
    paths: list[str]
    labels: np.ndarray
    threshold: float | None
    threshold_source: str
    tally: FileTally
    scores: ClusterScores | None = None
    identities: list[str] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def sizes(self) -> list[int]:
        return [int((self.labels == k).sum()) for k in range(int(self.labels.max(initial=-1)) + 1)]

    def summary(self) -> str:
        sizes, noise = self.sizes, int((self.labels == NOISE).sum())
        singles = sum(1 for s in sizes if s == 1)
        t = f" at threshold {self.threshold:.4f} ({self.threshold_source})" if self.threshold is not None else ""
        lines = [f"{len(self.paths)} faces -> {len(sizes)} clusters ({len(sizes) - singles} with 2+ faces, "
                 f"{singles} singletons{f', {noise} noise' if noise else ''}) by {self.method}{t}"]
        if self.scores is not None:
            s = self.scores
            lines.append(f"against {s.classes} identity folders: pairwise P {s.pairwise_precision:.4f} "
                         f"R {s.pairwise_recall:.4f} F {s.pairwise_f:.4f}; BCubed P {s.bcubed_precision:.4f} "
                         f"R {s.bcubed_recall:.4f} F {s.bcubed_f:.4f}; NMI {s.nmi:.4f}")
        lines += self.notes
        lines.append(f"-> {self.out / CSV}, {self.out / JSON}, {self.out / SHEET}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"root": str(self.root), "method": self.method, "threshold": self.threshold,
                "threshold_source": self.threshold_source, "faces": len(self.paths),
                "clusters": len(self.sizes), "cluster_sizes": self.sizes,
                "noise": int((self.labels == NOISE).sum()), "files": self.tally.counts(),
                "unusable": [{"path": p, "reason": r} for p, r in self.tally.failed],
                "scores": self.scores.to_dict() if self.scores is not None else None,
                "notes": self.notes}


def identities_of(paths: list[str]) -> list[str] | None:
    """The first folder level of every path, when every path has one and there are at least two; else None."""
    if not paths or any("/" not in p for p in paths):
        return None
    ids = [p.split("/", 1)[0] for p in paths]
    return ids if len(set(ids)) >= 2 else None


def _check_out(root: Path, out: Path) -> None:
    r, o = root.resolve(), out.resolve()
    if o == r or r in o.parents:
        raise FacelabError(f"--out {out} is inside the folder being clustered ({root}): its copies would be "
                           "clustered next time; choose a folder outside it")


@dataclass
class EmbeddedFolder:
    """Every image under ``root`` embedded once: ``paths`` (relative) with unit ``embeddings`` (N, D) float32, the
    file ``tally`` (unusable files with reasons) and how many faces were used without detection."""

    root: Path
    paths: list[str]
    embeddings: np.ndarray
    tally: FileTally
    undetected: int


def embed_folder(root: str | Path, model: FaceModel, *, batch_size: int | None = None,
                 progress: bool = True) -> EmbeddedFolder:
    """One face per image under ``root`` through the model's :class:`~facelab.inference.embedder.Embedder`.

    Raises:
        FacelabError: a missing folder, or one without a usable image.
    """
    root = Path(root)
    tally = list_images(root, verify=False)  # decoded once, when embedding
    candidates = sorted(tally.images + [p for p, _ in tally.failed])
    if not candidates:
        raise FacelabError(f"no images under {root} ({tally.summary(0)})")
    res = model.embedder(batch_size=batch_size, progress=progress).embed(
        [root / p for p in candidates], desc="embed", strict=False, names=candidates)
    paths = [candidates[i] for i in res.done]
    failed = dict(tally.failed)
    failed.update({candidates[i]: r for i, r in res.failed})
    tally.images, tally.failed = paths, sorted(failed.items())
    if not paths:
        raise FacelabError(f"no usable face under {root} ({tally.summary(0)})")
    return EmbeddedFolder(root, paths, unit(res.embeddings), tally, res.counts().get("undetected", 0))


def cluster_folder(root: str | Path, model: FaceModel, out: str | Path, *, method: str = "agglomerative",
                   threshold: float | None = None, target_far: float | None = None, min_samples: int = 2,
                   link: str = "symlink", sheet_clusters: int = 20, sheet_faces: int = 10,
                   batch_size: int | None = None, progress: bool = True,
                   embedded: EmbeddedFolder | None = None) -> ClusterReport:
    """Embed, cluster and write (see the module docstring). ``threshold`` (a cosine score) overrides the model's
    calibrated 1:1 threshold, ``target_far`` re-targets it; HDBSCAN uses neither. ``embedded``: the folder already
    embedded by :func:`embed_folder` with this model (to cluster it several ways).

    Raises:
        FacelabError: a missing folder or one without a usable image, OUT inside DIR, an unknown method or link
        mode, no threshold where one is needed, or scikit-learn missing (naming the ``cluster`` extra).
    """
    root, out = Path(root), Path(out)
    if link not in LINKS:
        raise FacelabError(f"--link must be one of {', '.join(LINKS)}, got '{link}'")
    _check_out(root, out)
    if method == "hdbscan":
        value, source = None, "not used by hdbscan"
        if threshold is not None or target_far is not None:
            raise FacelabError("hdbscan takes no threshold (it finds its own density levels); drop --threshold")
    else:
        t = model.threshold(VERIFICATION, threshold, target_far)
        value, source = t.value, t.source
    if embedded is None:
        embedded = embed_folder(root, model, batch_size=batch_size, progress=progress)
    paths = embedded.paths
    labels = cluster_embeddings(embedded.embeddings, method, value, min_samples)
    report = ClusterReport(root, out, method, paths, labels, value, source, embedded.tally)
    report.identities = identities_of(paths)
    if report.identities is not None:
        report.scores = score_clustering(labels, report.identities)
    else:
        report.notes.append("not scored: the images are not all in identity subfolders (at least two)")
    if embedded.undetected:
        report.notes.append(f"{embedded.undetected} image(s) used without detection (no face found)")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(out / CSV, "w") as fh:
        fh.write("path,cluster\n")
        for p, k in zip(paths, labels.tolist(), strict=True):
            fh.write(f"{_csv_field(p)},{k}\n")
    _write_folders(report, link)
    _write_sheet(report, sheet_clusters, sheet_faces)
    write_json(out / JSON, {**report.to_dict(), "model": model.source, "fingerprint": model.fingerprint,
                            "link": link, "min_samples": min_samples})
    return report


def _csv_field(value: str) -> str:
    return '"' + value.replace('"', '""') + '"' if any(c in value for c in ',"\n') else value


def _write_folders(report: ClusterReport, link: str) -> None:
    """Build OUT/clusters in a temporary folder beside it, then swap it in (the old one is removed only then)."""
    final = report.out / FOLDERS
    if link == "none":
        return
    tmp = Path(tempfile.mkdtemp(prefix=".clusters-", dir=report.out))
    try:
        for p, k in zip(report.paths, report.labels.tolist(), strict=True):
            folder = tmp / ("noise" if k == NOISE else f"cluster_{k:04d}")
            folder.mkdir(exist_ok=True)
            src = (report.root / p).resolve()
            dst = folder / p.replace("/", "__")
            if link == "symlink":
                os.symlink(src, dst)
            else:
                shutil.copy2(src, dst)
        if final.exists():
            old = final.rename(report.out / f".clusters-old-{os.getpid()}")
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FacelabError(f"cannot write {final}: {exc}") from None


def _write_sheet(report: ClusterReport, n_clusters: int, n_faces: int) -> None:
    rows: list[list[Cell]] = []
    ids = report.identities
    for k in range(min(n_clusters, len(report.sizes))):
        members = [i for i, lab in enumerate(report.labels.tolist()) if lab == k]
        majority = Counter(ids[i] for i in members).most_common(1)[0][0] if ids is not None else None
        rows.append([(report.root / report.paths[i],
                      GREY if ids is None else GREEN if ids[i] == majority else RED) for i in members[:n_faces]])
    tile_sheet(rows, report.out / SHEET, tile=80)
