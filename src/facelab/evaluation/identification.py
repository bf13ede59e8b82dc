"""1:N identification: closed-set rank-k (CMC) and open-set metrics as ISO/IEC 19795-1 and NIST FRVT 1:N define
them, computed from searches, not from pairs.

* A search compares one probe with every gallery identity (an identity's score is its best image's score) and
  returns the identities ranked by score.
* Mated search: the probe's identity is enrolled. FNIR(T, R) = fraction of mated searches whose mate is not
  returned at rank <= R with score >= T; DIR(T, R) = 1 - FNIR(T, R) (the detection and identification rate).
* Non-mated search: the probe's identity is not enrolled. FPIR(T) = fraction of non-mated searches whose *top*
  score is >= T (any candidate returned is a false alarm). This is the "FAR" of DIR@FAR in 19795-1's open-set
  terms; it is not the pair-wise FAR of 1:1 verification.
* Open-set accuracy at T: a mated search is right when its top candidate is the mate with score >= T, a non-mated
  search when its top score is < T.

Ranks are pessimistic under ties: an impostor identity scoring exactly the mate's score ranks above it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from facelab.data import scan_folder
from facelab.errors import FacelabError
from facelab.evaluation.metrics import DEFAULT_FAR_TARGETS, score_type
from facelab.evaluation.report import default_report_dir, write_identification_report
from facelab.inference.embedder import Embedder
from facelab.inference.model import FaceModel, load_model
from facelab.runs import calibrated_threshold


@dataclass
class Searches:
    identities: list[str]  # gallery identities, the columns of ``scores``
    scores: np.ndarray  # (probes, identities) oriented scores, an identity's best gallery image
    mate: np.ndarray  # (probes,) column of the probe's identity, -1 for a non-mated search

    @property
    def mated(self) -> np.ndarray:
        return self.mate >= 0

    @property
    def top_score(self) -> np.ndarray:
        return self.scores.max(1)

    @property
    def top_identity(self) -> np.ndarray:
        return self.scores.argmax(1)

    def mate_score(self) -> np.ndarray:
        m = self.mated
        return self.scores[np.nonzero(m)[0], self.mate[m]]

    def mate_rank(self) -> np.ndarray:
        """1-based rank of the mate in each mated search."""
        m = self.mated
        return (self.scores[m] >= self.mate_score()[:, None]).sum(1)


def search(probe_emb: np.ndarray, probe_labels: list[str], gallery_emb: np.ndarray, gallery_labels: list[str],
           score: str = "cosine") -> Searches:
    """Score every probe against every gallery identity (best image of several)."""
    if len(gallery_labels) == 0:
        raise FacelabError("the gallery is empty")
    identities = sorted(set(gallery_labels))
    col = {name: i for i, name in enumerate(identities)}
    per_image = score_type(score).matrix(probe_emb, gallery_emb)
    scores = np.full((len(probe_labels), len(identities)), -np.inf)
    gl = np.array([col[g] for g in gallery_labels])
    for c in range(len(identities)):
        scores[:, c] = per_image[:, gl == c].max(1)
    mate = np.array([col.get(p, -1) for p in probe_labels], dtype=int)
    return Searches(identities, scores, mate)


def cmc(s: Searches, max_rank: int = 20) -> np.ndarray:
    """Rank-1 .. rank-``max_rank`` identification rate of the mated searches (closed set, no threshold)."""
    ranks = s.mate_rank()
    if ranks.size == 0:
        raise FacelabError("CMC needs mated probes (probe identities that are in the gallery)")
    k = np.arange(1, min(max_rank, len(s.identities)) + 1)
    return (ranks[None, :] <= k[:, None]).mean(1)


def fpir(s: Searches, threshold: float) -> float:
    nm = s.top_score[~s.mated]
    return float(np.mean(nm >= threshold)) if nm.size else float("nan")


def fnir(s: Searches, threshold: float, rank: int = 1) -> float:
    if not s.mated.any():
        return float("nan")
    hit = (s.mate_rank() <= rank) & (s.mate_score() >= threshold)
    return float(1.0 - hit.mean())


def open_set_accuracy(s: Searches, threshold: float) -> float:
    top, who = s.top_score, s.top_identity
    right = np.where(s.mated, (who == s.mate) & (top >= threshold), top < threshold)
    return float(right.mean())


@dataclass
class OpenSetPoint:
    fpir_target: float
    threshold: float  # oriented; the lowest threshold whose FPIR does not exceed the target
    fpir: float  # achieved
    fnir: float
    dir: float
    #: False when there are fewer than 1 / target non-mated searches to measure this FPIR
    reliable: bool


#: how far above the highest stranger score it must reject a calibrated 1:N threshold is set (at most half the gap
#: to the next higher one): re-embedding the same photo in another batch moves its score by ~1e-6, which must not
#: turn a rejected stranger into an alarm (measured: an ORL stranger at exactly the threshold was named by
#: `facelab identify` after `facelab fit` calibrated 1 alarm in 100)
CALIBRATION_MARGIN = 1e-4


def threshold_at_fpir(s: Searches, target: float, margin: float = 0.0) -> float:
    """Lowest threshold T with FPIR(T) <= target: just above the (k+1)-th highest non-mated top score, where k is
    the number of false alarms the target allows (ISO/IEC 19795-1 FPIR). ``margin`` > 0 (calibration) puts T that
    far above that score, but never more than half-way to the next higher one, so FPIR(T) <= target still holds.

    Raises:
        FacelabError: no non-mated searches.
    """
    nm = np.sort(s.top_score[~s.mated])[::-1]
    if nm.size == 0:
        raise FacelabError("FPIR needs non-mated probes (probe identities that are not in the gallery)")
    k = int(np.floor(target * nm.size + 1e-9))
    if k >= nm.size:
        return -np.inf
    t = float(np.nextafter(nm[k], np.inf))
    if margin > 0:
        room = (nm[k - 1] - nm[k]) / 2 if k > 0 else margin
        t = max(t, float(nm[k] + min(margin, room)))
    return t


def _subset(s: Searches, rows: np.ndarray) -> Searches:
    """The searches of ``rows`` only."""
    return Searches(s.identities, s.scores[rows], s.mate[rows])


def held_out_fpir(s: Searches, stranger_names: list[str], target: float) -> float | None:
    """FPIR on strangers the threshold was not calibrated on: the stranger identities (``stranger_names``, one per
    non-mated search, in row order) are split in two halves; the calibrated threshold at ``target`` (with
    :data:`CALIBRATION_MARGIN`) is chosen on one half's non-mated searches plus all mated ones and its FPIR measured
    on the other half's, both ways; the alarms of both halves over all non-mated searches. None with fewer than 2
    stranger identities."""
    names = sorted(set(stranger_names))
    if len(names) < 2:
        return None
    halves = [set(names[0::2]), set(names[1::2])]
    non = np.nonzero(~s.mated)[0]
    label = np.array(stranger_names)
    rates = []
    for cal, test in ((halves[0], halves[1]), (halves[1], halves[0])):
        cal_rows = np.r_[np.nonzero(s.mated)[0], non[np.isin(label, list(cal))]]
        test_rows = non[np.isin(label, list(test))]
        thr = threshold_at_fpir(_subset(s, cal_rows), target, CALIBRATION_MARGIN)
        rates.append(fpir(_subset(s, test_rows), thr) * len(test_rows))
    return float(sum(rates) / len(non))


def dir_at_fpir(s: Searches, target: float, rank: int = 1) -> OpenSetPoint:
    thr = threshold_at_fpir(s, target)
    miss = fnir(s, thr, rank)
    return OpenSetPoint(target, thr, fpir(s, thr), miss, 1.0 - miss, reliable=bool((~s.mated).sum() * target >= 1))


def best_open_set_accuracy(s: Searches) -> tuple[float, float]:
    """Best open-set accuracy over thresholds (optimistic on the same searches) and the lowest such threshold."""
    cands = np.unique(np.r_[s.top_score, np.inf])
    accs = np.array([open_set_accuracy(s, t) for t in cands])
    i = int(np.argmax(accs))
    return float(accs[i]), float(cands[i])


def det_curve(s: Searches, rank: int = 1) -> dict[str, list[float]]:
    """FNIR against FPIR at every distinct non-mated top score (the open-set DET), oriented thresholds."""
    nm = np.sort(s.top_score[~s.mated])
    hit = np.where(s.mate_rank() <= rank, s.mate_score(), -np.inf)
    hit.sort()
    thr = np.unique(nm)[::-1]
    at_least = lambda xs, t: xs.size - np.searchsorted(xs, t, side="left")  # noqa: E731  count of xs >= t
    return {"threshold": thr.tolist(), "fpir": (at_least(nm, thr) / max(nm.size, 1)).tolist(),
            "fnir": (1.0 - at_least(hit, thr) / max(hit.size, 1)).tolist()}


def identification_report(s: Searches, score: str = "cosine", fpir_targets: tuple[float, ...] = DEFAULT_FAR_TARGETS,
                          max_rank: int = 20, threshold: float | None = None) -> dict:
    """Everything measurable from these searches; thresholds in the score's own unit. ``threshold`` (native unit)
    adds open-set accuracy at a fixed, e.g. calibrated, threshold."""
    st = score_type(score)
    mated, non = int(s.mated.sum()), int((~s.mated).sum())
    out: dict = {"score": score, "accept": st.accept, "gallery_identities": len(s.identities),
                 "mated_searches": mated, "non_mated_searches": non}
    if mated:
        curve = cmc(s, max_rank)
        out["cmc"] = curve.tolist()
        out.update({f"rank{k}": float(curve[k - 1]) for k in (1, 5, 10) if k <= len(curve)})
    if mated and non:
        points = []
        for t in fpir_targets:
            p = asdict(dir_at_fpir(s, t))
            p["threshold"] = st.native(p["threshold"])
            points.append(p)
        out["dir_at_fpir"] = points
        acc, thr = best_open_set_accuracy(s)
        out["best_open_set_accuracy"] = acc
        out["best_open_set_accuracy_threshold"] = st.native(thr)
    if threshold is not None:
        t = st.oriented(threshold)
        out["at_threshold"] = {"threshold": threshold, "open_set_accuracy": open_set_accuracy(s, t),
                               "fpir": fpir(s, t), "fnir": fnir(s, t)}
    return out


def folder_items(root: str | Path) -> tuple[list[Path], list[str]]:
    """Image paths and identity names of ``ROOT/<identity>/<image>``."""
    folder = scan_folder(root, verify=False)
    paths, labels = [], []
    for ident, rels in folder.identities.items():
        paths.extend(Path(root) / r for r in rels)
        labels.extend([ident] * len(rels))
    return paths, labels


def evaluate_searches(s: Searches, meta: dict, out: Path, score: str = "cosine",
                      fpir_targets: tuple[float, ...] = DEFAULT_FAR_TARGETS, max_rank: int = 20,
                      threshold: float | None = None) -> dict:
    """Report, DET (thresholds in the score's unit) and files for a set of searches."""
    report = identification_report(s, score, fpir_targets, max_rank, threshold)
    det = None
    if s.mated.any() and not s.mated.all():
        det = det_curve(s)
        det["threshold"] = [score_type(score).native(t) for t in det["threshold"]]
    doc = write_identification_report(out, meta, report, det)
    doc["out_dir"] = str(out)
    return doc


def open_set_threshold(fm: FaceModel, embedder: Embedder, score: str, threshold: float | None = None
                       ) -> tuple[float | None, str]:
    """(threshold, where it came from) for open-set figures: ``threshold`` if given; else the model's calibrated
    1:N threshold for this score and embedding procedure -- a run's thresholds.json (any score), a bundle's or
    pretrained model's cosine one; else (None, "none")."""
    if threshold is not None:
        return threshold, "given"
    if fm.run is not None:
        value = calibrated_threshold(fm.run.path, "identification", score, embedder.fingerprint)
        if value is not None:
            return value, "thresholds.json"
    elif score == "cosine" and fm.thresholds.identification is not None and embedder.fingerprint == fm.fingerprint:
        return fm.thresholds.identification.value, "the model's calibrated 1:N threshold"
    return None, "none"


def evaluate_gallery_probes(model: str | Path | FaceModel, gallery: str | Path, probes: str | Path,
                            score: str = "cosine", threshold: float | None = None,
                            fpir_targets: tuple[float, ...] = DEFAULT_FAR_TARGETS, max_rank: int = 20,
                            out_dir: str | Path | None = None, device: str | None = None, flip: bool | None = None,
                            cache: bool = True, quiet: bool = False) -> dict:
    """``facelab identify-eval``: gallery and probe identity folders; probes whose identity has no gallery folder
    are non-mated searches. Open-set accuracy is also reported at ``threshold`` or, failing that, at the model's
    calibrated identification threshold when it was calibrated with the same score (cosine for bundles and
    pretrained models; thresholds.json of a run for any score)."""
    fm = load_model(model, device=device)
    embedder = fm.embedder(progress=not quiet, cache=cache, flip=flip)
    g_paths, g_labels = folder_items(gallery)
    p_paths, p_labels = folder_items(probes)
    emb = embedder.embed_all(g_paths + p_paths, desc="embed gallery + probes")
    s = search(emb[len(g_paths):], p_labels, emb[: len(g_paths)], g_labels, score)
    threshold, source = open_set_threshold(fm, embedder, score, threshold)
    meta = {"model": fm.ref or fm.source, "gallery": str(gallery), "probes": str(probes),
            "gallery_images": len(g_paths), "probe_images": len(p_paths), "flip_tta": embedder.flip,
            "model_fingerprint": embedder.fingerprint[:16],
            "threshold_source": source}
    out = Path(out_dir) if out_dir else default_report_dir(fm, "identify")
    return evaluate_searches(s, meta, out, score, fpir_targets, max_rank, threshold)


def format_identification(doc: dict) -> str:
    r = doc["identification"]
    rows = [f"gallery {r['gallery_identities']} identities; {r['mated_searches']} mated and "
            f"{r['non_mated_searches']} non-mated searches; score {r['score']}; reports in {doc.get('out_dir', '')}"]
    rows += [f"  rank-{k}: {r[f'rank{k}']:.4f}" for k in (1, 5, 10) if f"rank{k}" in r]
    for p in r.get("dir_at_fpir", []):
        note = "" if p["reliable"] else " (too few non-mated searches)"
        rows.append(f"  DIR @ FPIR={p['fpir_target']:g}: {p['dir']:.4f} (FNIR {p['fnir']:.4f}, threshold "
                    f"{p['threshold']:.4f}){note}")
    if "at_threshold" in r:
        a = r["at_threshold"]
        rows.append(f"  open-set accuracy at {a['threshold']:.4f}: {a['open_set_accuracy']:.4f}")
    return "\n".join(rows)
