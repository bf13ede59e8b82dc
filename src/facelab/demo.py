"""``facelab demo``: train and evaluate on the bundled ORL faces, end to end, in a few CPU minutes."""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from facelab.config import load_config
from facelab.engine import train
from facelab.evaluation.protocol import evaluate, format_table


def bundled_faces() -> Path:
    """The ORL database shipped inside the package (credit: Olivetti Research Laboratory; see its README)."""
    return Path(str(resources.files("facelab") / "assets" / "att_faces"))


def demo_config_path() -> Path:
    return Path(str(resources.files("facelab") / "configs" / "demo.yaml"))


def run_demo(out_dir: str | None = None, overrides: list[str] | None = None, quiet: bool = False) -> dict:
    out = out_dir or time.strftime("runs/demo-%Y%m%d-%H%M%S")
    base = {"data": {"root": str(bundled_faces())}, "out_dir": out}
    cfg = load_config(demo_config_path(), overrides, base=base)
    t0 = time.perf_counter()
    result = train(cfg, quiet=quiet)
    t_train = time.perf_counter() - t0
    metrics = evaluate(result.out_dir, quiet=quiet)
    metrics["train_seconds"] = t_train
    metrics["total_seconds"] = time.perf_counter() - t0
    return metrics


def summary(metrics: dict) -> str:
    return (
        "facelab demo: ORL faces (Olivetti Research Laboratory), 30 identities trained, 10 never seen\n"
        + format_table(metrics)
        + f"\ntime: {metrics['train_seconds']:.0f} s training, {metrics['total_seconds']:.0f} s in all"
        + f"\nreports: {Path(metrics['run'])}/ (metrics.json, roc.png, scores_hist.png, training_curves.png)"
    )
