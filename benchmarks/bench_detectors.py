"""Both face detectors side by side in one run: median milliseconds per image and faces found, on the same decoded
images, interleaved image by image (so load from other processes hits both alike).

Each backend is timed twice per image: the bare network (``Detector.detect`` on the image as it is) and the whole
facelab path (``faces_in``: resize into the detection range, context border when a face touches the edge,
equalised retry, alignment of the kept face). onnxruntime (RetinaFace) runs with spinning off and one intra-op
thread; OpenCV (YuNet) with one thread.

    nice -n 10 .venv/bin/python benchmarks/bench_detectors.py --images ../shared/data/lfw_deepfunneled --n 500 \\
        --out /tmp/bench_detectors

Writes OUT/bench_detectors.json and .md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from machine import cpu_name
from tqdm import tqdm

from facelab.faces.detectors import get_detector, set_default_threads
from facelab.faces.pipeline import AlignOptions, faces_in
from facelab.images import list_images, read_image
from facelab.utils.io import write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, required=True, help="folder of photos (LFW)")
    ap.add_argument("--n", type=int, default=500, help="images, spread evenly over the folder")
    ap.add_argument("--detectors", default="yunet,retinaface")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    import cv2

    cv2.setNumThreads(1)
    set_default_threads(1)
    names = args.detectors.split(",")
    files = list_images(args.images, verify=False).images
    pick = [files[i] for i in np.linspace(0, len(files) - 1, min(args.n, len(files))).round().astype(int)]
    rgbs = [np.asarray(read_image(args.images / p)) for p in pick]
    opts = AlignOptions()
    dets = {n: get_detector(n) for n in names}
    for n in names:  # warm-up: first-call allocations are not what a user waits for on every image
        dets[n].detect(rgbs[0])
        faces_in(rgbs[0], n, 112, opts)
    bare = {n: [] for n in names}
    full = {n: [] for n in names}
    found = dict.fromkeys(names, 0)
    for rgb in tqdm(rgbs, desc="detect", unit="img"):
        for n in names:
            t = time.perf_counter()
            faces = dets[n].detect(rgb)
            bare[n].append(time.perf_counter() - t)
            found[n] += bool(faces)
            t = time.perf_counter()
            faces_in(rgb, n, 112, AlignOptions(undetected="crop"))
            full[n].append(time.perf_counter() - t)
    shape = sorted({r.shape[:2] for r in rgbs})
    rows = [{"detector": n, "median_ms_bare": float(np.median(bare[n]) * 1e3),
             "median_ms_facelab": float(np.median(full[n]) * 1e3), "p90_ms_facelab": float(np.percentile(full[n],
                                                                                                      90) * 1e3),
             "faces_found": found[n], "images": len(rgbs)} for n in names]
    doc = {"cpu": cpu_name(), "threads": 1, "images": str(args.images), "n": len(rgbs),
           "sizes": [list(s) for s in shape[:5]], "results": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "bench_detectors.json", doc)
    lines = [f"{len(rgbs)} images of {args.images.name} ({'x'.join(map(str, shape[0][::-1]))}"
             f"{' and others' if len(shape) > 1 else ''}), one thread each, {cpu_name()}:", "",
             "| detector | median ms/img, network | median ms/img, facelab path (detect + align) | p90 | faces "
             "found |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['detector']} | {r['median_ms_bare']:.2f} | {r['median_ms_facelab']:.2f} | "
                     f"{r['p90_ms_facelab']:.2f} | {r['faces_found']}/{r['images']} |")
    (args.out / "bench_detectors.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
