"""Pick an accept threshold on a dev split and save it with the model (``thresholds.json`` beside the checkpoint).

"Which threshold?" has no model-independent answer: it depends on the score type and on the error rate the
application tolerates. Calibration makes that choice explicit -- a target FAR (1:1) or FPIR (1:N), or the best
accuracy -- records what was achieved on how much data, and ties it to the model's fingerprint so a threshold is
never applied to a different model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from facelab.errors import FacelabError
from facelab.evaluation.identification import (
    CALIBRATION_MARGIN,
    Searches,
    best_open_set_accuracy,
    fnir,
    folder_items,
    fpir,
    open_set_accuracy,
    search,
    threshold_at_fpir,
)
from facelab.evaluation.metrics import best_accuracy, eer, roc_curve, score_type, tar_at_far
from facelab.evaluation.pairs import read_pairs
from facelab.inference.embedder import Embedder
from facelab.inference.model import FaceModel, load_model
from facelab.inference.thresholds import Threshold, operating_curve
from facelab.registry import Registry
from facelab.runs import save_thresholds

#: objective -> ``fn(scores, labels, target) -> oriented threshold`` for 1:1 verification
VERIFICATION_OBJECTIVES: Registry[float] = Registry("verification calibration objective")
#: objective -> ``fn(searches, target) -> oriented threshold`` for open-set 1:N identification
IDENTIFICATION_OBJECTIVES: Registry[float] = Registry("identification calibration objective")


def _need_target(objective: str, target: float | None) -> float:
    if target is None or not 0 < target < 1:
        raise FacelabError(f"calibration objective '{objective}' needs a target rate in (0, 1), got {target}")
    return float(target)


VERIFICATION_OBJECTIVES.register("far")(
    lambda scores, labels, target: tar_at_far(roc_curve(scores, labels), _need_target("far", target)).threshold)
VERIFICATION_OBJECTIVES.register("accuracy")(lambda scores, labels, target: best_accuracy(roc_curve(scores, labels))[1])
VERIFICATION_OBJECTIVES.register("eer")(lambda scores, labels, target: eer(roc_curve(scores, labels))[1])
IDENTIFICATION_OBJECTIVES.register("fpir")(
    lambda s, target: threshold_at_fpir(s, _need_target("fpir", target), CALIBRATION_MARGIN))
IDENTIFICATION_OBJECTIVES.register("open_set_accuracy")(lambda s, target: best_open_set_accuracy(s)[1])


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def calibrate_threshold(scores: np.ndarray, labels: np.ndarray, objective: str = "far", target: float | None = 1e-3,
                        score: str = "cosine") -> dict[str, Any]:
    """1:1 threshold from dev pairs (oriented ``scores``, higher = alike). The result states the score type, the
    rule, the threshold in the score's own unit and the FAR/TAR/accuracy it achieved on these pairs."""
    fn: Callable[..., float] = VERIFICATION_OBJECTIVES.get(objective)
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    thr = fn(scores, labels, target)
    st = score_type(score)
    accept = scores >= thr
    genuine, impostor = int(labels.sum()), int((~labels).sum())
    far = float(accept[~labels].mean())
    return {
        "task": "verification", "score": score, "accept": st.accept, "objective": objective,
        "target": target if objective == "far" else None, "threshold": _finite(st.native(thr)),
        "achieved": {"far": far, "tar": float(accept[labels].mean()), "accuracy": float((accept == labels).mean())},
        "pairs": {"genuine": genuine, "impostor": impostor},
        "reliable": objective != "far" or impostor * float(target or 0) >= 1,
        "curve": operating_curve(scores[~labels]) if score == "cosine" else None,
    }


def calibrate_open_set(searches: Searches, objective: str = "fpir", target: float | None = 1e-2,
                       score: str = "cosine") -> dict[str, Any]:
    """Open-set 1:N threshold from dev searches: a target FPIR, or the best open-set accuracy."""
    fn: Callable[..., float] = IDENTIFICATION_OBJECTIVES.get(objective)
    if not searches.mated.any() or searches.mated.all():
        raise FacelabError("open-set calibration needs both mated and non-mated dev probes")
    thr = fn(searches, target)
    st = score_type(score)
    miss = fnir(searches, thr)
    non = int((~searches.mated).sum())
    return {
        "task": "identification", "score": score, "accept": st.accept, "objective": objective,
        "target": target if objective == "fpir" else None, "threshold": _finite(st.native(thr)),
        "achieved": {"fpir": fpir(searches, thr), "fnir": miss, "dir": 1 - miss,
                     "open_set_accuracy": open_set_accuracy(searches, thr)},
        "searches": {"mated": int(searches.mated.sum()), "non_mated": non},
        "reliable": objective != "fpir" or non * float(target or 0) >= 1,
        "curve": operating_curve(searches.top_score[~searches.mated]) if score == "cosine" else None,
    }


def dev_searches_from_identities(emb: np.ndarray, labels: list[str], score: str = "cosine") -> Searches:
    """Open-set dev searches from images of identities: every other identity (sorted) is enrolled with its first
    image and searched with the rest (mated); the other identities' images are all non-mated searches."""
    names = sorted(set(labels))
    enrolled = set(names[::2])
    gallery_idx: list[int] = []
    probe_idx: list[int] = []
    seen: set[str] = set()
    for i, name in enumerate(labels):
        if name in enrolled and name not in seen:
            seen.add(name)
            gallery_idx.append(i)
        else:
            probe_idx.append(i)
    return search(emb[probe_idx], [labels[i] for i in probe_idx], emb[gallery_idx], [labels[i] for i in gallery_idx],
                  score)


def gallery_searches(fm: FaceModel, embedder: Embedder, root: Path, score: str = "cosine") -> Searches:
    """Open-set dev searches shaped like the deployment ``facelab fit`` builds: the run's training identities are
    enrolled (their training images), their held-out closed-set images are mated searches and every image of the
    unseen identities is a non-mated search (a stranger)."""
    m = fm.run.manifest  # type: ignore[union-attr]
    if not m.closed_test or not m.open_test:
        raise FacelabError("gallery-shaped calibration needs held-out images of training identities and unseen "
                           "identities in the run's split")
    items = m.train + m.closed_test + m.open_test
    emb = embedder.embed_all([root / p for p, _ in items], desc="embed gallery + dev searches")
    n_train = len(m.train)
    g = [m.classes[y] for _, y in m.train]
    p = [m.classes[y] for _, y in m.closed_test] + [f"unseen:{m.open_identities[y]}" for _, y in m.open_test]
    return search(emb[n_train:], p, emb[:n_train], g, score)


#: how a run's own data becomes open-set dev searches when no --gallery/--probes are given
OPEN_DEV_MODES = ("gallery", "unseen")


def calibrate(model: str | Path | FaceModel, *, pairs: str | Path | None = None, data: str | Path | None = None,
              gallery: str | Path | None = None, probes: str | Path | None = None, objective: str = "far",
              target: float | None = 1e-3, open_objective: str = "fpir", open_target: float | None = 1e-2,
              open_dev: str = "gallery", score: str = "cosine", device: str | None = None, flip: bool | None = None,
              out: str | Path | None = None, quiet: bool = False) -> dict[str, Any]:
    """``facelab calibrate``: the 1:1 threshold (from ``pairs``, else all pairs of a run's unseen identities) and
    the open-set 1:N threshold (from ``gallery``/``probes`` folders, else from the run's own split: ``open_dev=
    "gallery"`` enrolls the training identities and searches with their held-out images and the unseen identities,
    as the deployment of ``facelab fit`` does; ``"unseen"`` enrolls every other unseen identity).

    A run's thresholds are saved in ``RUN/thresholds.json`` (tied to the model fingerprint); any other model (bundle,
    pretrained) is written as a new bundle ``out`` carrying them. Calibrate on data the reported test figures do not
    come from where you can: the run's own split is convenient, not independent.
    """
    fm = load_model(model, device=device)
    if open_dev not in OPEN_DEV_MODES:
        raise FacelabError(f"open-set dev mode must be one of {', '.join(OPEN_DEV_MODES)}, got {open_dev!r}")
    if fm.run is None and out is None:
        raise FacelabError(f"{fm.ref or fm.source} is not a run: give --out FILE.safetensors for the calibrated bundle")
    if fm.run is None and pairs is None and gallery is None:
        raise FacelabError("a model without a training run needs dev data: --pairs and/or --gallery with --probes")
    if (gallery is None) != (probes is None):
        raise FacelabError("pass both --gallery and --probes, or neither")
    embedder = fm.embedder(progress=not quiet, cache=True, flip=flip)
    st = score_type(score)
    lr = fm.run
    root = Path(data or (lr.cfg.data.root if lr is not None else "."))
    own: tuple[np.ndarray, list[str]] | None = None

    def own_split() -> tuple[np.ndarray, list[str]]:
        nonlocal own
        if own is None:
            if lr is None or not lr.manifest.open_test:
                raise FacelabError(f"{fm.ref}: no unseen identities to calibrate on; pass --pairs or "
                                   f"--gallery/--probes")
            own = (embedder.embed_all([root / p for p, _ in lr.manifest.open_test], desc="embed dev identities"),
                   [lr.manifest.open_identities[y] for _, y in lr.manifest.open_test])
        return own

    entries: list[dict[str, Any]] = []
    if pairs is not None:
        pl = read_pairs(pairs, data)
        if pl.labels is None:
            raise FacelabError(f"{pairs}: calibration needs labelled pairs")
        emb = embedder.embed_all(pl.images, desc="embed dev pairs")
        entries.append({**calibrate_threshold(st.pairwise(emb[pl.first], emb[pl.second]), pl.labels, objective,
                                              target, score), "dev": str(pairs)})
    elif lr is not None:
        emb, names = own_split()
        i, j = np.triu_indices(len(names), k=1)
        lab = np.asarray(names)
        entries.append({**calibrate_threshold(st.pairwise(emb[i], emb[j]), lab[i] == lab[j], objective, target,
                                              score), "dev": "run's unseen identities (all pairs)"})
    s: Searches | None = None
    if gallery is not None and probes is not None:
        g_paths, g_labels = folder_items(gallery)
        p_paths, p_labels = folder_items(probes)
        e = embedder.embed_all(g_paths + p_paths, desc="embed dev gallery + probes")
        s, i_dev = search(e[len(g_paths):], p_labels, e[: len(g_paths)], g_labels, score), f"{gallery} + {probes}"
    elif lr is not None and lr.manifest.open_test:
        if open_dev == "gallery" and lr.manifest.closed_test:
            s = gallery_searches(fm, embedder, root, score)
            i_dev = "run's training identities enrolled; held-out images and unseen identities searched"
        else:
            s = dev_searches_from_identities(*own_split(), score)
            i_dev = "run's unseen identities (alternate identities enrolled)"
    if s is not None and s.mated.any() and not s.mated.all():
        entries.append({**calibrate_open_set(s, open_objective, open_target, score), "dev": i_dev})
    if not entries:
        raise FacelabError("no dev data to calibrate on")
    if lr is not None:
        path = save_thresholds(lr.path, entries, embedder.fingerprint)
    else:
        thresholds = fm.thresholds
        for e in entries:
            t = Threshold.from_calibration(e)
            if t is not None:
                thresholds = thresholds.replace(e["task"], t)
        path = fm.with_thresholds(thresholds).save_bundle(out)  # type: ignore[arg-type]
    return {"path": str(path), "entries": entries}


def format_calibration(result: dict[str, Any]) -> str:
    rows = [f"saved {result['path']}"]
    for e in result["entries"]:
        target = f" {e['target']:g}" if e["target"] is not None else ""
        note = "" if e["reliable"] else " (too little dev data for this target)"
        achieved = ", ".join(f"{k} {v:.4f}" for k, v in e["achieved"].items())
        rows.append(f"  {e['task']}: {e['objective']}{target} -> threshold {e['threshold']} ({e['accept']}); "
                    f"on dev: {achieved}{note}")
    return "\n".join(rows)
