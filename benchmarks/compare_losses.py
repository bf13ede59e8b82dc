"""Train every loss recipe in configs/losses/ on the same backbone and budget, evaluate, and tabulate.

Each recipe (loss + the sampler it needs) is merged over one base config (default: the demo recipe -- ResNet-18 width
32, 64 px input, 40 epochs, batch 32, 10 unseen identities, 2 held-out images per seen identity), so only the loss
differs between rows. Writes ``<out>/compare_losses.json`` and ``<out>/compare_losses.md``.

    .venv/bin/python benchmarks/compare_losses.py --data ../shared/data/att_faces --seeds 0 1 --set threads=1

A finished run (``<out>/seed<k>/<recipe>/bench.json``) is reused, so an interrupted comparison continues where it
stopped and the table can be rebuilt without training.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from facelab.config import load_config, load_yaml
from facelab.demo import bundled_faces, demo_config_path
from facelab.engine import train
from facelab.evaluation.protocol import evaluate

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "configs" / "losses"
COLUMNS = ("loss", "closed-set top-1", "open-set AUC", "EER", "TAR@FAR=1e-2", "rank-1 (open)", "train s")


def _tar_at(report: dict[str, Any], far: float) -> float | None:
    for op in report["tar_at_far"]:
        if abs(op["far_target"] - far) < 1e-12:
            return op["tar"] if op["reliable"] else None
    return None


def summarise(name: str, metrics: dict[str, Any], seconds: float) -> dict[str, Any]:
    verification = metrics["open_set"]["verification"]
    return {
        "recipe": name,
        "closed_top1": metrics["closed_set"]["top1"],
        "open_auc": verification["roc_auc"],
        "eer": verification["eer"],
        "tar_far_1e-2": _tar_at(verification, 1e-2),
        "open_rank1": metrics["open_set"]["identification"]["rank1"],
        "train_seconds": seconds,
    }


def run_one(recipe: Path, base: dict[str, Any], data: str, run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    done = run_dir / "bench.json"
    if done.is_file():
        return json.loads(done.read_text())
    if run_dir.exists():  # an unfinished run: start it again so the timing column covers a whole run
        shutil.rmtree(run_dir)
    cfg = load_config(recipe, [f"data.root={data}", f"out_dir={run_dir}", *overrides], base=base)
    t0 = time.perf_counter()
    train(cfg, quiet=True)
    seconds = time.perf_counter() - t0
    row = summarise(recipe.stem, evaluate(run_dir, quiet=True), seconds)
    row["loss_config"] = {"name": cfg.loss.name, "options": cfg.loss.options}
    row["sampler"] = cfg.data.sampler
    done.write_text(json.dumps(row, indent=2))
    return row


def _cell(values: list[float | None], digits: int = 4) -> str:
    """Mean over seeds, with +- half the range when there are several (the spread between seeds)."""
    if any(v is None for v in values):
        return "n/a"
    mean = sum(values) / len(values)  # type: ignore[arg-type]
    spread = (max(values) - min(values)) / 2  # type: ignore[type-var, operator]
    return f"{mean:.{digits}f}" + (f" ±{spread:.{digits}f}" if len(values) > 1 else "")


def markdown(runs: dict[str, list[dict[str, Any]]]) -> str:
    keys = ("closed_top1", "open_auc", "eer", "tar_far_1e-2", "open_rank1")
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for name, rows in runs.items():
        cells = [name, *(_cell([r[k] for r in rows]) for k in keys), _cell([r["train_seconds"] for r in rows], 0)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(bundled_faces()), help="identity folder (default: bundled ORL)")
    parser.add_argument("--base", default=str(demo_config_path()), help="base config the recipes are merged over")
    parser.add_argument("--recipes", default=str(RECIPES), help="folder of loss recipes (*.yaml)")
    parser.add_argument("--only", nargs="*", default=None, help="recipe names to run (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="training seeds (the split stays data.split.seed); the table shows mean ± half-range")
    parser.add_argument("--out", default="runs/compare_losses", help="folder for the runs and the tables")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override applied to every run, e.g. threads=1 or optim.epochs=20")
    args = parser.parse_args(argv)
    recipes = sorted(Path(args.recipes).glob("*.yaml"))
    if args.only:
        recipes = [r for r in recipes if r.stem in args.only]
    base = load_yaml(args.base)
    base.pop("loss", None)  # the recipe's loss replaces the base's outright (options must not merge across losses)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {r.stem: [] for r in recipes}
    for seed in args.seeds:
        for recipe in recipes:
            print(f"[compare_losses] seed {seed}: {recipe.stem} ...", file=sys.stderr, flush=True)
            row = run_one(recipe, base, args.data, out / f"seed{seed}" / recipe.stem, [*args.overrides, f"seed={seed}"])
            runs[recipe.stem].append({**row, "seed": seed})
            print(f"[compare_losses] {json.dumps(runs[recipe.stem][-1])}", file=sys.stderr, flush=True)
    meta = {"data": args.data, "base": args.base, "overrides": args.overrides, "seeds": args.seeds,
            "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "threads": torch.get_num_threads()}
    (out / "compare_losses.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=2))
    table = markdown(runs)
    (out / "compare_losses.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
