"""PNG reports a person would rather look at than a table: ROC with operating points, score histograms, DET and CMC
curves. Each figure has a JSON of the same numbers beside it (written by the caller)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facelab.evaluation.metrics import Roc
from facelab.utils.plotting import plt, save_figure


def plot_roc(roc: Roc, report: dict, path: str | Path, title: str = "ROC (open set, unseen identities)") -> None:
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    floor = 0.5 / roc.negatives
    ax.plot(np.maximum(roc.fpr, floor), roc.tpr, lw=2, label=f"AUC {report['roc_auc']:.4f}")
    for op in report["tar_at_far"]:
        if op["reliable"]:
            ax.plot(max(op["far"], floor), op["tar"], "o", ms=5)
            ax.annotate(f"TAR {op['tar']:.3f} @ FAR {op['far_target']:g}", (max(op["far"], floor), op["tar"]),
                        textcoords="offset points", xytext=(6, -12), fontsize=8)
    ax.axvline(report["eer"], color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlim(floor, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate (log)")
    ax.set_ylabel("true accept rate")
    ax.set_title(f"{title}\nEER {report['eer']:.4f}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    save_figure(fig, path)


def score_histogram(scores: np.ndarray, labels: np.ndarray, bins: int = 50) -> dict:
    edges = np.linspace(min(-1.0, float(scores.min())), max(1.0, float(scores.max())), bins + 1)
    return {
        "edges": edges.tolist(),
        "genuine": np.histogram(scores[labels], edges)[0].tolist(),
        "impostor": np.histogram(scores[~labels], edges)[0].tolist(),
    }


def plot_histogram(hist: dict, thresholds: dict[str, float], path: str | Path,
                   title: str = "cosine scores of unseen-identity pairs", xlabel: str = "cosine similarity") -> None:
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    edges = np.asarray(hist["edges"])
    width = np.diff(edges)
    for key, colour in (("impostor", "tab:red"), ("genuine", "tab:green")):
        counts = np.asarray(hist[key], dtype=float)
        dens = counts / max(counts.sum(), 1) / width
        ax.bar(edges[:-1], dens, width=width, align="edge", alpha=0.5, color=colour,
               label=f"{key} ({int(counts.sum())})")
    for name, thr in thresholds.items():
        if np.isfinite(thr):
            ax.axvline(thr, ls="--", lw=1, color="black")
            ax.annotate(name, (thr, ax.get_ylim()[1] * 0.9), rotation=90, fontsize=8, ha="right")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend()
    save_figure(fig, path)


def plot_det(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str,
             xlabel: str = "false match rate (FMR)", ylabel: str = "false non-match rate (FNMR)") -> None:
    """Detection error trade-off on log-log axes: one (false positive rate, false negative rate) curve per name.
    Zero rates are drawn at half the smallest measurable rate so the curve does not vanish off the axis."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    lo = 1.0
    for name, (fp, fn) in curves.items():
        fp, fn = np.asarray(fp, float), np.asarray(fn, float)
        floor = 0.5 * min([v for v in (*fp[fp > 0], *fn[fn > 0])] or [1e-3])
        lo = min(lo, floor)
        ax.plot(np.maximum(fp, floor), np.maximum(fn, floor), lw=2, label=name)
    ax.plot([lo, 1], [lo, 1], color="grey", ls=":", lw=1, label="EER line")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, 1)
    ax.set_ylim(lo, 1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    save_figure(fig, path)


def plot_cmc(cmc: list[float], path: str | Path, title: str = "CMC (closed-set identification)") -> None:
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    ranks = np.arange(1, len(cmc) + 1)
    ax.plot(ranks, cmc, "o-", lw=2, ms=4)
    ax.annotate(f"rank-1 {cmc[0]:.3f}", (1, cmc[0]), textcoords="offset points", xytext=(8, -12), fontsize=8)
    ax.set_xlabel("rank")
    ax.set_ylabel("identification rate")
    ax.set_ylim(0, 1.01)
    ax.set_xlim(0.5, len(cmc) + 0.5)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    save_figure(fig, path)
