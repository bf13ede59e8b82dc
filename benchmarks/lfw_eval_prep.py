"""Prepare the LFW pairs.txt benchmark for a facelab-trained model (see docs/evaluation.md).

LFW's View 2 folds are person-disjoint, and almost every LFW identity with several images appears in pairs.txt, so
there is no large disjoint training set. This script therefore

1. writes a centre crop of every deep-funneled image (the face fills the middle of the 250x250 frame; the rest is
   background a 64-pixel model would waste its pixels on) to ``OUT/crops/<identity>/<image>``;
2. builds two training trees of linked files, ``OUT/train_folds_1-5`` and ``OUT/train_folds_6-10``, holding the
   identities (with at least ``--min-images`` images) of one half of the folds in people.txt.

3. writes ``OUT/pairs_folds_1-5.csv`` and ``OUT/pairs_folds_6-10.csv``: the official pairs of each half as
   ``img1,img2,label,fold`` (paths relative to ``OUT/crops``, folds numbered as in pairs.txt), and all 6000 in
   ``OUT/pairs_folds_1-10.csv`` (what benchmarks/lfw_eval.py scores).

A model trained on folds 6-10 then scores the pairs of folds 1-5 and vice versa, so no test identity was trained on.

With ``--crops-from DIR`` step 1 is skipped and the crops are those of ``facelab align LFW DIR`` (detected and
aligned onto the ArcFace template; PNG files named like the JPEGs), so the same recipe can be compared on aligned
and centre-cropped faces (docs/faces.md).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from PIL import Image

from facelab.evaluation.pairs import read_pairs


def read_people(path: Path) -> list[dict[str, int]]:
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    folds, i = [], 1
    for _ in range(int(lines[0])):
        k = int(lines[i])
        folds.append({ln.split()[0]: int(ln.split()[1]) for ln in lines[i + 1 : i + 1 + k]})
        i += 1 + k
    return folds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lfw", type=Path, required=True, help="lfw_deepfunneled folder (with people.txt)")
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--crop", type=int, default=120, help="side of the centre crop in pixels")
    ap.add_argument("--min-images", type=int, default=4, help="training identities need this many images")
    ap.add_argument("--crops-from", type=Path, help="use the aligned crops of `facelab align` in this folder")
    args = ap.parse_args()
    crops = args.out / "crops"
    lo = (250 - args.crop) // 2
    if args.crops_from is not None and not crops.exists():
        args.out.mkdir(parents=True, exist_ok=True)
        os.symlink(args.crops_from.resolve(), crops)
    for ident in sorted(p for p in args.lfw.iterdir() if p.is_dir() and args.crops_from is None):
        (crops / ident.name).mkdir(parents=True, exist_ok=True)
        for img in sorted(ident.iterdir()):
            dst = crops / ident.name / img.name
            if not dst.exists():
                with Image.open(img) as im:
                    im.crop((lo, lo, lo + args.crop, lo + args.crop)).save(dst, quality=95)
    folds = read_people(args.lfw / "people.txt")
    for name, half in (("train_folds_1-5", range(0, 5)), ("train_folds_6-10", range(5, 10))):
        tree = args.out / name
        tree.mkdir(parents=True, exist_ok=True)
        people = {k: v for f in half for k, v in folds[f].items() if v >= args.min_images}
        for person in people:  # real folders of linked files: folder scans do not follow linked folders
            (tree / person).mkdir(exist_ok=True)
            for img in sorted((crops / person).iterdir()):
                link = tree / person / img.name
                if not link.exists():
                    os.symlink(img.resolve(), link)
        print(f"{tree}: {len(people)} identities, {sum(people.values())} images")
    pairs = read_pairs(args.lfw / "pairs.txt", crops)
    rel = [Path(str(p)).relative_to(crops).as_posix() for p in pairs.images]
    if args.crops_from is not None:  # facelab align writes <name>.png
        rel = [Path(r).with_suffix(".png").as_posix() for r in rel]
    for name, half in (("pairs_folds_1-5.csv", range(0, 5)), ("pairs_folds_6-10.csv", range(5, 10)),
                       ("pairs_folds_1-10.csv", range(0, 10))):
        keep = [i for i in range(len(pairs)) if pairs.folds[i] in half]
        lines = ["img1,img2,label,fold"] + [f"{rel[pairs.first[i]]},{rel[pairs.second[i]]},{int(pairs.labels[i])},"
                                            f"{pairs.folds[i] + 1}" for i in keep]
        (args.out / name).write_text("\n".join(lines) + "\n")
        print(f"{args.out / name}: {len(keep)} pairs")


if __name__ == "__main__":
    main()
