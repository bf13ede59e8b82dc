"""Reports of a verification or identification run: one JSON with every number, PNGs of the curves, and a short
Markdown summary that says which score type and which threshold each number belongs to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from facelab.evaluation.metrics import Roc, roc_curve
from facelab.evaluation.plots import plot_cmc, plot_det, plot_histogram, plot_roc, score_histogram
from facelab.utils.io import atomic_open, write_json


def default_report_dir(model: Any, name: str) -> Path:
    """Where a report goes when ``--out`` is not given: inside a run folder, beside a model file, or under
    ``facelab_reports/`` in the working folder for a pretrained model name."""
    if model.run is not None:
        return Path(model.run.path) / name
    ref = Path(model.ref or model.source)
    if ref.is_file():
        return ref.parent / f"{ref.name.split('.')[0]}_{name}"
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(model.ref or model.kind))
    return Path("facelab_reports") / f"{safe}_{name}"


def curve_json(roc: Roc, max_points: int = 2000) -> dict[str, list]:
    """A ROC thinned to at most ``max_points`` (JSON stays small for millions of pairs)."""
    keep = np.unique(np.linspace(0, len(roc.fpr) - 1, min(len(roc.fpr), max_points)).astype(int))
    return {"fpr": roc.fpr[keep].tolist(), "tpr": roc.tpr[keep].tolist(),
            "thresholds": [float(t) if np.isfinite(t) else None for t in roc.thresholds[keep]]}


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _write_md(path: Path, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text.rstrip() + "\n")


def write_verification_report(out: str | Path, meta: dict[str, Any], results: dict[str, dict[str, Any]],
                              prefix: str = "pairs") -> dict[str, Any]:
    """``results``: scorer name -> {"scorer", "scores" (oriented), "labels", "report", "kfold"}. Writes
    PREFIX.json, PREFIX.md, PREFIX_roc.png, PREFIX_det.png and PREFIX_hist.png (first scorer) into ``out``."""
    out = Path(out)
    doc: dict[str, Any] = {**meta, "scorers": {}}
    det = {}
    for i, (name, r) in enumerate(results.items()):
        scorer, labels = r["scorer"], np.asarray(r["labels"], bool)
        roc = roc_curve(r["scores"], labels)
        kf = {k: v for k, v in r["kfold"].items() if k != "scores"} if r.get("kfold") else None
        doc["scorers"][name] = {"accept": scorer.accept, "verification": r["report"], "kfold": kf,
                                "roc": curve_json(roc)}
        det[f"{name} (EER {r['report']['eer']:.3f})"] = (roc.fpr, 1.0 - roc.tpr)
        if i == 0:
            plot_roc(roc, r["report"], out / f"{prefix}_roc.png", title=f"{meta.get('name', 'pairs')}: ROC, {name}")
            hist = score_histogram(np.array([scorer.native(x) for x in r["scores"]]), labels)
            marks = {"EER": r["report"]["eer_threshold"]}
            if kf:
                marks["k-fold mean"] = float(np.mean([p["threshold"] for p in kf["per_fold"]]))
            doc["scorers"][name]["histogram"] = {**hist, "thresholds": marks}
            plot_histogram(hist, marks, out / f"{prefix}_hist.png", title=f"genuine / impostor scores ({name})",
                           xlabel=name)
    plot_det(det, out / f"{prefix}_det.png", title=f"{meta.get('name', 'pairs')}: DET")
    write_json(out / f"{prefix}.json", doc)
    _write_md(out / f"{prefix}.md", verification_markdown(doc, prefix))
    return doc


def verification_markdown(doc: dict[str, Any], prefix: str = "pairs") -> str:
    lines = [f"# Verification: {doc.get('name', '')}", ""]
    lines += [f"- {k}: {v}" for k, v in doc.items() if k not in ("scorers", "name") and not isinstance(v, dict)]
    rows = []
    for name, s in doc["scorers"].items():
        v, kf = s["verification"], s["kfold"]
        acc = f"{kf['accuracy_mean']:.4f} ± {kf['accuracy_std']:.4f} ({kf['folds']} folds)" if kf else "n/a"
        rows.append([name, acc, v["roc_auc"], v["eer"], v["best_accuracy"]])
    header = ["score", "k-fold accuracy (mean ± std)", "ROC AUC", "EER", "best accuracy (pooled, optimistic)"]
    lines += ["", md_table(header, rows), ""]
    for name, s in doc["scorers"].items():
        ops = s["verification"]["tar_at_far"]
        lines += [f"## TAR at FAR, {name} (accept if {s['accept']})", ""]
        lines += [md_table(["FAR target", "TAR", "achieved FAR", "threshold", "measurable"],
                           [[f"{o['far_target']:g}", o["tar"], o["far"], o["threshold"],
                             "yes" if o["reliable"] else "no (too few impostor pairs)"] for o in ops]), ""]
    lines += [f"Figures: {prefix}_roc.png, {prefix}_det.png, {prefix}_hist.png; all numbers: {prefix}.json."]
    return "\n".join(lines)


def write_identification_report(out: str | Path, meta: dict[str, Any], report: dict[str, Any],
                                det: dict[str, list[float]] | None, prefix: str = "identify") -> dict[str, Any]:
    """PREFIX.json, PREFIX.md, PREFIX_cmc.png and (open set) PREFIX_det.png (FNIR against FPIR)."""
    out = Path(out)
    doc = {**meta, "identification": report, "det": det}
    if "cmc" in report:
        plot_cmc(report["cmc"], out / f"{prefix}_cmc.png")
    if det and det["fpir"]:
        plot_det({"rank 1": (np.asarray(det["fpir"]), np.asarray(det["fnir"]))}, out / f"{prefix}_det.png",
                 title="open-set identification DET", xlabel="FPIR (non-mated searches)",
                 ylabel="FNIR (mated searches)")
    write_json(out / f"{prefix}.json", doc)
    _write_md(out / f"{prefix}.md", identification_markdown(doc, prefix))
    return doc


def identification_markdown(doc: dict[str, Any], prefix: str = "identify") -> str:
    r = doc["identification"]
    lines = ["# Identification (1:N)", ""]
    lines += [f"- {k}: {v}" for k, v in doc.items() if k not in ("identification", "det") and not isinstance(v, dict)]
    lines += [f"- score: {r['score']} (accept if {r['accept']})",
              f"- gallery identities: {r['gallery_identities']}; mated searches: {r['mated_searches']}; "
              f"non-mated searches: {r['non_mated_searches']}", ""]
    ranks = [[f"rank-{k}", r[f"rank{k}"]] for k in (1, 5, 10) if f"rank{k}" in r]
    if ranks:
        lines += [md_table(["closed set", "identification rate"], ranks), ""]
    if "dir_at_fpir" in r:
        lines += ["Open set (ISO/IEC 19795-1): FPIR from non-mated searches' top score; DIR = 1 - FNIR at rank 1.", ""]
        lines += [md_table(["FPIR target", "DIR", "FNIR", "achieved FPIR", "threshold", "measurable"],
                           [[f"{p['fpir_target']:g}", p["dir"], p["fnir"], p["fpir"], p["threshold"],
                             "yes" if p["reliable"] else "no (too few non-mated searches)"]
                            for p in r["dir_at_fpir"]]), ""]
        lines += [f"Best open-set accuracy {r['best_open_set_accuracy']:.4f} at threshold "
                  f"{r['best_open_set_accuracy_threshold']:.4f} (chosen on these searches: optimistic).", ""]
    if "at_threshold" in r:
        a = r["at_threshold"]
        lines += [f"At threshold {a['threshold']:.4f}: open-set accuracy {a['open_set_accuracy']:.4f}, "
                  f"FPIR {a['fpir']:.4f}, FNIR {a['fnir']:.4f}.", ""]
    lines += [f"Figures: {prefix}_cmc.png, {prefix}_det.png; all numbers: {prefix}.json."]
    return "\n".join(lines)
