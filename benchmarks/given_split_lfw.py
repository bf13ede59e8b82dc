"""A given split with per-epoch validation, best.pt and early stopping, measured on LFW: builds DEST/train and
DEST/val (the identities with the most photos, centre-cropped face crops, a few photos of each held out for
validation), trains with `facelab train --train --val --patience`, and writes the training curves and a JSON of
every epoch's figures next to the run.

    nice -n 10 .venv/bin/python benchmarks/given_split_lfw.py --lfw ../shared/data/lfw_deepfunneled \\
        --dest /tmp/lfw_given --out docs/given_split_lfw
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from facelab.cli import main as facelab
from facelab.images import list_images, read_image
from facelab.runs import load_checkpoint
from facelab.utils.io import write_json


def build(lfw: Path, dest: Path, identities: int, most: int, val: int, crop: int) -> dict[str, int]:
    """DEST/train/<id>/ and DEST/val/<id>/ (JPEG crops); returns the image counts."""
    people = [p for p in sorted(lfw.iterdir()) if p.is_dir()]
    counts = sorted(((len(list_images(p, verify=False).images), p) for p in people), key=lambda t: (-t[0], t[1]))
    chosen = [p for _, p in counts[:identities]]
    n = {"train": 0, "val": 0}
    for person in chosen:
        files = sorted(list_images(person, verify=False).images)[:most]
        for k, rel in enumerate(files):
            part = "val" if k < val else "train"
            out = dest / part / person.name / Path(rel).with_suffix(".jpg").name
            if not out.exists():
                out.parent.mkdir(parents=True, exist_ok=True)
                im = read_image(person / rel)
                w, h = im.size
                im.crop(((w - crop) // 2, (h - crop) // 2, (w + crop) // 2, (h + crop) // 2)).save(out, quality=95)
            n[part] += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lfw", required=True)
    ap.add_argument("--dest", required=True, help="where the train/ and val/ trees are built")
    ap.add_argument("--out", required=True, help="report stem: STEM.json and STEM.png")
    ap.add_argument("--run", help="run folder (default DEST/run)")
    ap.add_argument("--identities", type=int, default=20)
    ap.add_argument("--most", type=int, default=30, help="photos per identity at most")
    ap.add_argument("--val", type=int, default=4, help="photos per identity held out for validation")
    ap.add_argument("--crop", type=int, default=120)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--patience", type=int, default=5)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    dest = Path(args.dest)
    counts = build(Path(args.lfw), dest, args.identities, args.most, args.val, args.crop)
    run = Path(args.run) if args.run else dest / "run"
    if run.exists():
        shutil.rmtree(run)
    sets = ["data.cache_images=true", "data.pipeline=fast", *args.overrides]
    code = facelab(["train", "--train", str(dest / "train"), "--val", str(dest / "val"), "--init", "none",
                    "--epochs", str(args.epochs), "--patience", str(args.patience), "--out", str(run), "--quiet",
                    *[x for kv in sets for x in ("--set", kv)]])
    assert code == 0
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best = load_checkpoint(run / "best.pt")
    doc = {"images": counts, "identities": args.identities, "epochs_asked": args.epochs, "patience": args.patience,
           "epochs_run": len(history), "best_epoch": best["epoch"], "best": best["best"],
           "stopped_early": best["best"]["stopped"] or len(history) < args.epochs, "overrides": sets,
           "history": history}
    out = Path(args.out)
    write_json(out.with_suffix(".json"), doc)
    shutil.copy(run / "training_curves.png", out.with_suffix(".png"))
    print(f"{counts} images; {len(history)} of {args.epochs} epochs; best.pt = epoch {best['epoch']} "
          f"(val_acc {best['best']['value']:.3f})")
    for h in history:
        print(f"epoch {h['epoch']:2d} loss {h['loss']:.3f} train_acc {h['train_acc'] or 0:.3f} "
              f"val_acc {h['val_acc']:.3f} val_loss {h['val_loss']:.3f} best {h['best_epoch']}")


if __name__ == "__main__":
    main()
