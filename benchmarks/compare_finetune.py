"""Zero-shot pretrained vs fine-tuned vs from scratch on one identity folder, same split, side by side.

    .venv/bin/python benchmarks/compare_finetune.py --data ../shared/data/att_faces --out bench/finetune_orl \\
        --scratch-config src/facelab/configs/demo.yaml [--lfw-crops /tmp/facelab_bench_pretrained/lfw_crops_112.npz \\
        --pairs ../shared/data/lfw_deepfunneled/pairs.txt --data-lfw ../shared/data/lfw_deepfunneled]

1. fine-tuned: ``facelab train --data DATA --out OUT/finetuned`` exactly as the README writes it (the default:
   fine-tune SFace with configs/finetune.yaml), then ``facelab eval OUT/finetuned --compare-init``, which also scores
   the pretrained model zero-shot on the same split and crops (closed set by nearest class centre);
2. from scratch: ``facelab train --init none --config SCRATCH`` on the same folder and split seed, then eval;
3. forgetting (optional): LFW pairs.txt 10-fold accuracy of the pretrained and the fine-tuned model on the aligned
   crops cached by ``bench_pretrained.py lfw`` (the same crops for both).

``--relight`` first writes a copy of DATA with harsh synthetic lighting (a per-image directional gradient and gamma,
seeded by the file name): a stand-in for folders such as Extended Yale B where the pretrained model is weaker.
Writes OUT/compare.json, OUT/compare.md and OUT/compare.png. Alignment: facelab.faces (YuNet, 5-point template).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from facelab.cli import main as cli
from facelab.images import list_images, read_image
from facelab.utils.io import atomic_open, write_json
from facelab.utils.plotting import plt, save_figure


def cpu_seconds() -> float:
    """User + system CPU time of this process so far: on a shared machine, a load-independent measure of the work
    (divided by the cores it could use, about the wall time on an idle machine)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def relight(src: Path, dst: Path) -> Path:
    """A copy of ``src`` with harsh lighting: brightness x (1 - s * (ramp along a random direction)), then gamma."""
    from PIL import Image

    for ident in sorted(p for p in src.iterdir() if p.is_dir()):
        for f in list_images(ident).images:
            out = dst / ident.name / (Path(f).stem + ".png")
            if out.exists():
                continue
            seed = int(hashlib.sha1(f"{ident.name}/{Path(f).name}".encode()).hexdigest()[:8], 16)
            rng = np.random.default_rng(seed)
            img = np.asarray(read_image(ident / f).convert("L"), np.float32) / 255
            h, w = img.shape
            angle = rng.uniform(0, 2 * np.pi)
            yy, xx = np.mgrid[0:h, 0:w]
            ramp = ((xx / w - 0.5) * np.cos(angle) + (yy / h - 0.5) * np.sin(angle)) + 0.5  # 0..1 across the face
            strength = rng.uniform(0.3, 0.95)
            lit = img * (1 - strength * np.clip(ramp, 0, 1)) ** 1.5
            lit = np.clip(lit, 0, 1) ** rng.uniform(0.6, 2.2)
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((lit * 255).astype(np.uint8)).save(out)
    return dst


def figures(metrics: dict[str, Any]) -> dict[str, float]:
    v = metrics.get("open_set", {}).get("verification", {})
    tar = {f"tar@{op['far_target']:g}": op["tar"] for op in v.get("tar_at_far", [])}
    rank1 = metrics.get("open_set", {}).get("identification", {}).get("rank1")
    return {"closed_top1": metrics.get("closed_set", {}).get("top1"), "open_auc": v.get("roc_auc"),
            "open_eer": v.get("eer"), **tar, "rank1": rank1}


def lfw_accuracy(run: Path | None, crops_file: Path, pairs_file: str, data: str, folds: int = 0,
                 flip: bool = True) -> dict[str, float]:
    """LFW k-fold accuracy of the pretrained model (run None) or a run's model on cached aligned crops; ``folds``
    > 0 keeps only the pairs of the first ``folds`` folds (a cheaper, noisier check)."""
    import bench_pretrained

    from facelab.evaluation.pairs import PairList, read_pairs, score_pairs
    from facelab.inference.model import load_model

    model = load_model(str(run) if run is not None else "sface", device="cpu")
    pairs = read_pairs(pairs_file, data)
    with np.load(crops_file, allow_pickle=False) as z:
        assert bench_pretrained.same_sources(z["keys"], pairs.images), f"{crops_file} holds crops of another pair list"
        crops = z["crops"]
    if folds:
        keep = pairs.folds < folds
        used = np.unique(np.r_[pairs.first[keep], pairs.second[keep]])
        remap = np.full(len(pairs.images), -1)
        remap[used] = np.arange(len(used))
        crops = crops[used]
        pairs = PairList(pairs.source, [pairs.images[i] for i in used], remap[pairs.first[keep]],
                         remap[pairs.second[keep]], pairs.labels[keep], pairs.folds[keep])  # type: ignore[index]
    emb = bench_pretrained.embed(model.backbone.eval(), crops, model.spec, 64, flip)
    r = score_pairs(emb, pairs, ("cosine",))["cosine"]
    return {"accuracy": r["kfold"]["accuracy_mean"], "std": r["kfold"]["accuracy_std"], "pairs": len(pairs),
            "flip": flip}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--scratch-config", help="YAML of the from-scratch recipe (default: facelab's defaults)")
    p.add_argument("--skip-scratch", action="store_true")
    p.add_argument("--relight", action="store_true")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="extra --set for the fine-tune")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lfw-crops")
    p.add_argument("--pairs")
    p.add_argument("--data-lfw")
    p.add_argument("--lfw-folds", type=int, default=0, help="forgetting check on the first N folds only")
    p.add_argument("--lfw-no-flip", action="store_true")
    p.add_argument("--forgetting-only", metavar="RUN", help="only the LFW check, for an existing fine-tuned run")
    args = p.parse_args()
    from facelab.utils.allocator import tune_allocator

    tune_allocator("batch")  # what every facelab command but serve does; the LFW check embeds in this process
    pipeline = "facelab.faces (YuNet, 5-point ArcFace template)"
    out = Path(args.out)
    if args.forgetting_only:
        flip = not args.lfw_no_flip
        doc = {"run": args.forgetting_only, "folds": args.lfw_folds or 10,
               "zero_shot": lfw_accuracy(None, Path(args.lfw_crops), args.pairs, args.data_lfw, args.lfw_folds, flip),
               "finetuned": lfw_accuracy(Path(args.forgetting_only), Path(args.lfw_crops), args.pairs, args.data_lfw,
                                         args.lfw_folds, flip)}
        doc["change_points"] = 100 * (doc["finetuned"]["accuracy"] - doc["zero_shot"]["accuracy"])
        write_json(out / "forgetting.json", doc)
        print(json.dumps(doc, indent=1))
        return
    data = Path(args.data)
    if args.relight:
        data = relight(data, out / "data_relit")
    rows: dict[str, Any] = {"data": str(data), "alignment": pipeline}
    threads = f"threads={args.threads}"

    t0, c0 = time.perf_counter(), cpu_seconds()
    ft = out / "finetuned"
    if not (ft / "metrics.json").is_file():
        sets = [x for o in args.overrides for x in ("--set", o)]
        assert cli(["train", "--data", str(data), "--out", str(ft), "--set", threads, *sets, "--quiet"]) == 0
        t_train, c_train = time.perf_counter() - t0, cpu_seconds() - c0
        assert cli(["eval", str(ft), "--quiet"]) == 0  # what the README runs
        rows["finetune_seconds"] = {"train_wall": t_train, "train_cpu": c_train,
                                    "train_and_eval_wall": time.perf_counter() - t0,
                                    "train_and_eval_cpu": cpu_seconds() - c0}
        assert cli(["eval", str(ft), "--compare-init", "--quiet"]) == 0
    m = json.loads((ft / "metrics.json").read_text())
    rows["zero_shot"] = figures(m["init_model"])
    rows["finetuned"] = figures(m)
    if not args.skip_scratch:
        sc = out / "scratch"
        if not (sc / "metrics.json").is_file():
            cfg = ["--config", args.scratch_config] if args.scratch_config else []
            assert cli(["train", "--data", str(data), "--out", str(sc), "--init", "none", *cfg, "--set", threads,
                        "--quiet"]) == 0
            assert cli(["eval", str(sc), "--quiet"]) == 0
        rows["scratch"] = figures(json.loads((sc / "metrics.json").read_text()))
    if args.lfw_crops:
        rows["lfw_zero_shot"] = lfw_accuracy(None, Path(args.lfw_crops), args.pairs, args.data_lfw, args.lfw_folds,
                                             not args.lfw_no_flip)
        rows["lfw_finetuned"] = lfw_accuracy(ft, Path(args.lfw_crops), args.pairs, args.data_lfw, args.lfw_folds,
                                             not args.lfw_no_flip)
        rows["lfw_change_points"] = 100 * (rows["lfw_finetuned"]["accuracy"] - rows["lfw_zero_shot"]["accuracy"])
    write_json(out / "compare.json", rows)
    models = [k for k in ("zero_shot", "finetuned", "scratch") if k in rows]
    keys = list(rows["finetuned"])
    lines = ["| model | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for k in models:
        lines.append(f"| {k} | " + " | ".join("" if rows[k][c] is None else f"{rows[k][c]:.4f}" for c in keys) + " |")
    if "lfw_change_points" in rows:
        lines.append(f"\nLFW pairs.txt 10-fold: zero-shot {100 * rows['lfw_zero_shot']['accuracy']:.2f}, "
                     f"fine-tuned {100 * rows['lfw_finetuned']['accuracy']:.2f} "
                     f"({rows['lfw_change_points']:+.2f} points)")
    with atomic_open(out / "compare.md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    show = [c for c in keys if c != "open_eer"]
    width = 0.8 / len(models)
    for i, k in enumerate(models):
        ax.bar(np.arange(len(show)) + i * width, [rows[k][c] or 0 for c in show], width, label=k)
    ax.set_xticks(np.arange(len(show)) + width * (len(models) - 1) / 2, show, rotation=20)
    ax.set_ylim(0, 1.02)
    ax.legend()
    ax.set_title(f"{Path(args.data).name}{' (relit)' if args.relight else ''}: same split")
    save_figure(fig, out / "compare.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
