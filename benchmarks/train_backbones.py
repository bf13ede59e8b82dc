"""Train every backbone with the demo protocol and tabulate closed-set top-1, open-set AUC, cost and time.

The demo protocol (src/facelab/configs/demo.yaml): ORL faces, 30 identities trained on 8 images each, 2 held-out
images each for closed-set top-1, 10 never-seen identities for open-set verification; 64x64 input, width 32
(half the papers' channels), ArcFace, 40 epochs, seed 0. Only ``model.backbone`` (and, where listed in WIDTHS,
``model.width``) changes between rows.

    .venv/bin/python benchmarks/train_backbones.py --data ../shared/data/att_faces --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from facelab.config import ModelConfig, load_config
from facelab.demo import demo_config_path
from facelab.engine import train
from facelab.evaluation.protocol import evaluate
from facelab.models import BACKBONES
from facelab.models.summary import backbone_cost, backbone_names

#: backbones trained at a narrower width than the demo's 32 to keep the CPU time of the sweep modest
WIDTHS = {"resnet34": 16, "resnet50": 16, "resnet100": 16, "vgg16": 16}


def final_train_acc(run_dir: Path) -> float:
    """Last epoch's training accuracy as the trainer logs it (augmented batches): underfitting vs overfitting."""
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["train_acc"]


def run_one(name: str, data: str, out_dir: Path, threads: int, epochs: int | None, extra: list[str]) -> dict:
    overrides = [f"model.backbone={name}", f"threads={threads}"]
    if name in WIDTHS:
        overrides.append(f"model.width={WIDTHS[name]}")
    if epochs is not None:
        overrides.append(f"optim.epochs={epochs}")
    key = row_key(name, extra)
    cfg = load_config(demo_config_path(), [*overrides, *extra],
                      base={"data": {"root": data}, "out_dir": str(out_dir / key.replace(" ", "_"))})
    m: ModelConfig = cfg.model
    cost = backbone_cost(name, cfg.data.input_size, m.embedding_dim, m.width, m.options)
    t0 = time.perf_counter()
    result = train(cfg, quiet=True)
    seconds = time.perf_counter() - t0
    metrics = evaluate(result.out_dir, quiet=True)
    return {
        "backbone": key, "width": m.width, "params": cost.params, "macs": cost.macs,
        "top1": metrics["closed_set"]["top1"], "auc": metrics["open_set"]["verification"]["roc_auc"],
        "eer": metrics["open_set"]["verification"].get("eer"), "train_seconds": seconds,
        "epochs": cfg.optim.epochs, "train_acc": final_train_acc(Path(result.out_dir)),
    }


def row_key(name: str, extra: list[str]) -> str:
    """Rows run with extra overrides are kept apart from the protocol's own rows."""
    return " ".join([name, *extra])


def markdown(rows: list[dict]) -> str:
    lines = ["| backbone | width | params | MACs (64x64) | final train acc | closed-set top-1 | open-set AUC | EER "
             "| train time |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        eer = f"{r['eer']:.3f}" if r.get("eer") is not None else "-"
        lines.append(f"| {r['backbone']} | {r['width']} | {r['params'] / 1e6:.2f}M | {r['macs'] / 1e6:.0f}M | "
                     f"{r['train_acc']:.3f} | {r['top1']:.3f} | {r['auc']:.4f} | {eer} | {r['train_seconds']:.0f} s |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/att_faces"))
    parser.add_argument("--out", default="runs/backbones", help="one run folder per backbone, plus results.json")
    parser.add_argument("--backbones", nargs="+", default=None, choices=BACKBONES.names(), metavar="NAME")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=None, help="override the demo's epochs (for a quick look)")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override, e.g. optim.lr=0.01; such rows are named after it")
    args = parser.parse_args()
    out = Path(args.out)
    results_file = out / "results.json"
    done = {r["backbone"]: r for r in json.loads(results_file.read_text())} if results_file.exists() else {}
    for key, r in done.items():  # rows written before the column existed
        r.setdefault("train_acc", final_train_acc(out / key.replace(" ", "_")))
    rows = []
    for name in args.backbones or backbone_names():
        key = row_key(name, args.extra)
        row = done.get(key) or run_one(name, args.data, out, args.threads, args.epochs, args.extra)
        rows.append(row)
        done[key] = row
        results_file.parent.mkdir(parents=True, exist_ok=True)
        results_file.write_text(json.dumps(list(done.values()), indent=1))
        print(markdown([row]).splitlines()[-1], flush=True)
    print(markdown(rows))


if __name__ == "__main__":
    main()
