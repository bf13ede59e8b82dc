"""Does ``facelab train --data DIR`` (nothing else) learn from scratch? The old and the new defaults, side by side.

Datasets (built once under ``--work`` from ``../shared/data``; nothing is downloaded):

* ``orl``: the bundled ORL faces, 40 identities x 10 greyscale images (the demo's folder, default split);
* ``lfw40``: the 40 LFW (deep-funneled) identities with the most images, at most 60 each (seeded sample), centre
  120-pixel crop of the 250x250 frame (the face; the rest is background), colour JPEG;
* ``lfw38x10``: 38 other LFW identities with at least 10 images, 10 each, same crop, greyscale -- a few hundred
  face crops, like the Extended Yale B folder a user tried.

Recipes: ``old`` pins the defaults before this change (ResNet-18 width 64 at 112 px, 512-d, ArcFace s=64 m=0.5 from
the first step, SGD lr 0.1, batch 64, 20 epochs); ``new`` passes nothing but the data folder, so it measures the
library's current defaults. ``--candidate NAME "key=value key=value"`` adds a recipe (used to choose the defaults).

Every run is the default split (a quarter of the identities unseen, up to 2 images of each other identity held out),
then ``facelab eval``'s protocol. Writes ``<out>/default_recipe.json``, ``.md`` and ``.png`` (closed-set top-1 and
open-set AUC per dataset and recipe); a finished run
(``<out>/<dataset>/<recipe>/bench.json``) is reused, so the comparison can be stopped and continued.

    nice -n 10 .venv/bin/python benchmarks/default_recipe.py --out runs/default_recipe --set threads=2

``--speed`` instead times one training step (forward, backward, SGD) of each recipe's network and loss on the same
random batch, alternating the recipes so both see the same machine load, and prints the ratio.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from facelab.config import load_config
from facelab.demo import bundled_faces
from facelab.engine import train
from facelab.evaluation.protocol import evaluate
from facelab.images import read_image

REPO = Path(__file__).resolve().parents[1]
#: ../shared beside the repo (as in CI), or two levels up from a worktree
LFW = next((p / "shared" / "data" / "lfw_deepfunneled" for p in (REPO.parent, REPO.parent.parent)
            if (p / "shared" / "data" / "lfw_deepfunneled").is_dir()), REPO.parent / "shared" / "data" / "lfw")

OLD = ["data.input_size=112", "data.batch_size=64", "model.backbone=resnet18", "model.width=64",
       "model.embedding_dim=512", "loss.name=arcface", "loss.options={scale: 64.0, margin: 0.5}", "optim.lr=0.1",
       "optim.epochs=20", "optim.warmup_epochs=1", "data.sampler=random"]
RECIPES: dict[str, list[str]] = {"old": OLD, "new": []}
CROP = 120


def _identities(lfw: Path) -> dict[str, list[Path]]:
    return {d.name: sorted(d.iterdir()) for d in sorted(lfw.iterdir()) if d.is_dir()}


def _write(src: Path, dst: Path, grey: bool) -> None:
    if dst.exists():
        return
    image = read_image(src)
    lo = (image.width - CROP) // 2, (image.height - CROP) // 2
    face = image.crop((lo[0], lo[1], lo[0] + CROP, lo[1] + CROP))
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    (face.convert("L") if grey else face).save(tmp, format="JPEG", quality=95)
    tmp.replace(dst)


def build_lfw(lfw: Path, work: Path) -> dict[str, Path]:
    """The two LFW folders (idempotent: existing files are kept)."""
    ids = _identities(lfw)
    ranked = sorted(ids, key=lambda n: (-len(ids[n]), n))
    rng = random.Random(0)
    top = ranked[:40]
    for name in top:
        images = ids[name] if len(ids[name]) <= 60 else sorted(rng.sample(ids[name], 60))
        for img in images:
            _write(img, work / "lfw40" / name / img.name, grey=False)
    others = sorted(n for n in ranked[40:] if len(ids[n]) >= 10)
    for name in sorted(rng.sample(others, 38)):
        for img in sorted(rng.sample(ids[name], 10)):
            _write(img, work / "lfw38x10" / name / img.name, grey=True)
    return {"lfw40": work / "lfw40", "lfw38x10": work / "lfw38x10"}


def _tar_at(report: dict[str, Any], far: float) -> float | None:
    for op in report["tar_at_far"]:
        if abs(op["far_target"] - far) < 1e-12:
            return op["tar"] if op["reliable"] else None
    return None


def run_one(data: Path, run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    done = run_dir / "bench.json"
    if done.is_file():
        return json.loads(done.read_text())
    if run_dir.exists():  # an unfinished run: start again so the time column covers a whole run
        shutil.rmtree(run_dir)
    cfg = load_config(None, [f"data.root={data}", f"out_dir={run_dir}", *overrides])
    t0 = time.perf_counter()
    result = train(cfg, quiet=True)
    seconds = time.perf_counter() - t0
    metrics = evaluate(run_dir, quiet=True)
    verification = metrics["open_set"]["verification"]
    row = {"closed_top1": metrics["closed_set"]["top1"], "open_auc": verification["roc_auc"],
           "eer": verification["eer"], "tar_far_1e-2": _tar_at(verification, 1e-2),
           "open_rank1": metrics["open_set"]["identification"]["rank1"], "train_seconds": seconds,
           "epochs": len(result.history), "final_loss": result.history[-1]["loss"],
           "final_train_acc": result.history[-1]["train_acc"], "overrides": overrides,
           "recipe": {"input_size": cfg.data.input_size, "batch_size": cfg.data.batch_size,
                      "width": cfg.model.width, "embedding_dim": cfg.model.embedding_dim, "loss": cfg.loss.name,
                      "loss_options": cfg.loss.options, "lr": cfg.optim.lr, "epochs": cfg.optim.epochs}}
    done.write_text(json.dumps(row, indent=2))
    return row


COLUMNS = ("dataset", "recipe", "closed-set top-1", "open-set AUC", "EER", "TAR@FAR=1e-2", "rank-1 (open)",
           "epochs", "train s")


def _fmt(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [r["dataset"], r["name"], _fmt(r["closed_top1"]), _fmt(r["open_auc"]), _fmt(r["eer"]),
                 _fmt(r["tar_far_1e-2"]), _fmt(r["open_rank1"]), str(r["epochs"]), f"{r['train_seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    from facelab.utils.plotting import plt, save_figure

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    recipes = list(dict.fromkeys(r["name"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    width = 0.8 / max(1, len(recipes))
    for ax, key, title in zip(axes, ("closed_top1", "open_auc"), ("closed-set top-1", "open-set ROC AUC"),
                              strict=True):
        for j, name in enumerate(recipes):
            values = [next((r[key] for r in rows if r["dataset"] == d and r["name"] == name), None)
                      for d in datasets]  # None: not run (no bar, no label)
            bars = ax.bar([i + j * width for i in range(len(datasets))],
                          [float("nan") if v is None else v for v in values], width, label=name)
            ax.bar_label(bars, labels=["" if v is None else f"{v:.2f}" for v in values], fontsize=8)
        ax.set_xticks([i + width * (len(recipes) - 1) / 2 for i in range(len(datasets))], datasets)
        ax.set_ylim(0, 1.08)
        ax.set_title(title)
    axes[0].legend(loc="lower left", fontsize=8)
    fig.suptitle("facelab train --data DIR: defaults before and after")
    save_figure(fig, path)


def step_speed(recipes: dict[str, list[str]], rounds: int, classes: int = 30) -> dict[str, float]:
    """Images per second of one optimizer step per recipe (median over ``rounds`` interleaved rounds)."""
    import statistics

    from facelab.engine.optim import build_optimizer
    from facelab.runs import build_model_and_loss

    nets = {}
    for name, overrides in recipes.items():
        cfg = load_config(None, list(overrides))
        torch.manual_seed(0)
        backbone, loss = build_model_and_loss(cfg, classes)
        images = torch.randn(cfg.data.batch_size, 3, cfg.data.input_size, cfg.data.input_size)
        labels = torch.arange(cfg.data.batch_size) % classes
        nets[name] = (backbone.train(), loss.train(), build_optimizer(backbone, loss, cfg.optim), images, labels)
    times: dict[str, list[float]] = {name: [] for name in nets}
    for r in range(rounds + 1):
        for name, (backbone, loss, optimizer, images, labels) in nets.items():
            t0 = time.perf_counter()
            loss(backbone(images), labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if r:  # round 0 warms up
                times[name].append(len(labels) / (time.perf_counter() - t0))
    return {name: statistics.median(v) for name, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/default_recipe", help="folder for the runs and the tables")
    parser.add_argument("--work", default=None, help="where the LFW folders are built (default: <out>/data)")
    parser.add_argument("--lfw", default=str(LFW), help="lfw_deepfunneled folder")
    parser.add_argument("--datasets", nargs="+", default=["orl", "lfw38x10", "lfw40"])
    parser.add_argument("--recipes", nargs="+", default=["old", "new"], help="recipes to run (old, new, candidates)")
    parser.add_argument("--candidate", nargs=2, action="append", default=[], metavar=("NAME", "OVERRIDES"),
                        help='extra recipe: a name and space-separated key=value overrides')
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override applied to every run, e.g. threads=2")
    parser.add_argument("--table", action="store_true", help="only tabulate the runs already finished (train nothing)")
    parser.add_argument("--speed", type=int, default=0, metavar="ROUNDS",
                        help="only time a training step of each recipe, interleaved, over ROUNDS rounds")
    args = parser.parse_args(argv)
    out = Path(args.out)
    recipes = dict(RECIPES)
    for name, text in args.candidate:
        recipes[name] = text.split()
    if args.speed:
        chosen = {n: [*recipes[n], *args.overrides] for n in args.recipes}
        if any(o.startswith("threads=") for o in args.overrides):
            torch.set_num_threads(int(next(o for o in args.overrides if o.startswith("threads=")).split("=")[1]))
        speed = step_speed(chosen, args.speed)
        for name, ips in speed.items():
            print(f"{name}: {ips:.1f} img/s per training step ({ips / speed[args.recipes[0]]:.2f}x "
                  f"{args.recipes[0]})")
        return 0
    folders = {"orl": bundled_faces()}
    if set(args.datasets) & {"lfw40", "lfw38x10"} and not args.table:
        folders.update(build_lfw(Path(args.lfw), Path(args.work) if args.work else out / "data"))
    rows = []
    for dataset in args.datasets:
        for name in args.recipes:
            if args.table and not (out / dataset / name / "bench.json").is_file():
                continue
            print(f"[default_recipe] {dataset}: {name} ...", file=sys.stderr, flush=True)
            row = run_one(folders.get(dataset, Path(dataset)), out / dataset / name,
                          [*recipes[name], *args.overrides])
            rows.append({"dataset": dataset, "name": name, **row})
            print(f"[default_recipe] {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    meta = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "processor": platform.processor(), "threads": torch.get_num_threads(), "overrides": args.overrides}
    (out / "default_recipe.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    table = markdown(rows)
    (out / "default_recipe.md").write_text(table + "\n")
    plot(rows, out / "default_recipe.png")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
