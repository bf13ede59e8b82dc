"""Input pipeline speed: images per second from JPEG files on disk to an augmented, normalised training batch.

Compared in one process, on the same files, one after the other in every round (so background load hits all alike;
medians over rounds are reported), all on ``--threads`` CPU threads (1 = per core) with no loader processes:

* ``baseline``: the plain loop of a course notebook -- ``PIL.Image.open(path).convert("RGB")``, then
  ``torchvision.transforms`` (v1, on PIL images): Resize to the input size, RandomResizedCrop, horizontal flip,
  ColorJitter, ToTensor, Normalize; batches stacked;
* ``facelab exact``: ``data.pipeline: exact`` (the default): the image gate's full decode, resize, per-image
  torchvision.transforms.v2 augmentation, through facelab's FaceDataset and a DataLoader;
* ``facelab fast``: ``data.pipeline: fast``: the gate decodes each JPEG at the smallest DCT scale that covers the
  input size, and the batch is augmented at once (facelab.data.batch_augment);
* ``facelab fast, cached``: the same with ``data.cache_images: true`` after the decoded-once uint8 cache is filled
  (every epoch after the first); the fill itself is timed as ``cache fill``.

Every variant applies the same augmentation (crop scale, ratio, flip, jitter strength, normalisation). A second table
times decoders alone (file -> uint8 tensor at the input size): the gate at full size, the gate with its size hint,
the gate's tensor reader (torchvision.io for these JPEGs), ``torchvision.io.decode_jpeg`` alone + tensor resize,
and plain PIL.

    nice -n 10 .venv/bin/python benchmarks/bench_input_pipeline.py --images ../shared/data/lfw_deepfunneled \\
        --out docs/bench_input_pipeline
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from machine import cpu_name
from torch.utils.data import DataLoader

from facelab.config import load_config
from facelab.data.batch_augment import BatchAugment, BatchCollate
from facelab.data.dataset import FaceDataset
from facelab.data.sampler import RandomBatchSampler
from facelab.data.transforms import base_transform, train_transform
from facelab.images import list_images, read_image, read_image_tensor
from facelab.utils.io import write_json
from facelab.utils.plotting import plt, save_figure


def baseline_epoch(paths: list[Path], cfg: Any, batch: int, g: torch.Generator) -> int:
    """The plain loop (module docstring); returns the images produced."""
    import torchvision.transforms as T
    from PIL import Image  # the baseline is a plain PIL loop on purpose: it is what facelab is compared with

    d = cfg.data
    s = d.input_size
    tf = T.Compose([T.Resize((s, s)), T.RandomResizedCrop((s, s), scale=tuple(d.crop_scale), ratio=(0.9, 1.1)),
                    T.RandomHorizontalFlip(), T.ColorJitter(d.color_jitter, d.color_jitter, d.color_jitter),
                    T.ToTensor(), T.Normalize(list(d.mean), list(d.std))])
    order = torch.randperm(len(paths), generator=g).tolist()
    n = 0
    for i in range(0, len(order) - batch + 1, batch):
        x = torch.stack([tf(Image.open(paths[j]).convert("RGB")) for j in order[i:i + batch]])
        n += x.shape[0]
    return n


def loader_epoch(loader: DataLoader) -> int:
    return sum(b[0].shape[0] for b in loader)


def facelab_loader(root: Path, items: list[tuple[str, int]], cfg: Any, batch: int, fast: bool, cache: bool,
                   g: torch.Generator) -> DataLoader:
    d = cfg.data
    collate = BatchCollate(BatchAugment(d)) if fast else None
    ds = FaceDataset(root, items, d.input_size, None if fast else train_transform(d), cache=cache, fast_decode=fast)
    return DataLoader(ds, batch_sampler=RandomBatchSampler(len(ds), batch, g), num_workers=0, collate_fn=collate)


def decoders(paths: list[Path], size: int) -> dict[str, Callable[[Path], torch.Tensor]]:
    import numpy as np
    from PIL import Image  # plain PIL, as a reference decoder
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms import v2

    base = base_transform(size)
    resize = v2.Resize((size, size), antialias=True)

    def tvio(p: Path) -> torch.Tensor:
        data = torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8)
        return resize(decode_jpeg(data, mode=ImageReadMode.RGB))

    def pil(p: Path) -> torch.Tensor:
        im = Image.open(p).convert("RGB")
        return resize(torch.from_numpy(np.array(im)).permute(2, 0, 1))

    return {"gate, full decode": lambda p: base(read_image(p)),
            "gate, size hint (Pillow draft)": lambda p: base(read_image(p, size_hint=size)),
            "gate, read_image_tensor (data.pipeline fast)": lambda p: base(read_image_tensor(p, size_hint=size)),
            "torchvision.io.decode_jpeg": tvio,
            "plain PIL": pil}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", required=True, help="identity folder of JPEGs (LFW deep-funneled)")
    ap.add_argument("--count", type=int, default=1024, help="images per pass (default 1024)")
    ap.add_argument("--size", type=int, default=112, help="input size (default 112)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 = per core)")
    ap.add_argument("--out", required=True, help="output stem: writes STEM.json and STEM.png")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.images)
    files = list_images(root, verify=False).images
    step = max(1, len(files) // args.count)
    rels = files[::step][: args.count]
    items = [(r, 0) for r in rels]
    paths = [root / r for r in rels]
    cfg = load_config(None, [f"data.input_size={args.size}"])
    g = torch.Generator().manual_seed(0)
    cached = facelab_loader(root, items, cfg, args.batch, fast=True, cache=False, g=g)
    load0 = os.getloadavg()

    variants: dict[str, Callable[[], int]] = {
        "baseline (PIL + torchvision.transforms)": lambda: baseline_epoch(paths, cfg, args.batch, g),
        "facelab exact": lambda: loader_epoch(facelab_loader(root, items, cfg, args.batch, False, False, g)),
        "facelab fast": lambda: loader_epoch(facelab_loader(root, items, cfg, args.batch, True, False, g)),
        "facelab fast, cached": lambda: loader_epoch(cached),
    }
    rates: dict[str, list[float]] = {k: [] for k in [*variants, "cache fill"]}
    decode = decoders(paths, args.size)
    decode_rates: dict[str, list[float]] = {k: [] for k in decode}
    sub = paths[: max(64, args.count // 4)]
    for r in range(args.rounds):
        t0 = time.perf_counter()
        cached = facelab_loader(root, items, cfg, args.batch, fast=True, cache=True, g=g)  # fills the cache
        rates["cache fill"].append(len(items) / (time.perf_counter() - t0))
        for name, run in variants.items():
            t0 = time.perf_counter()
            n = run()
            rates[name].append(n / (time.perf_counter() - t0))
        for name, fn in decode.items():
            t0 = time.perf_counter()
            for p in sub:
                fn(p)
            decode_rates[name].append(len(sub) / (time.perf_counter() - t0))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items()))
    med = {k: statistics.median(v) for k, v in rates.items()}
    base = med["baseline (PIL + torchvision.transforms)"]
    dmed = {k: statistics.median(v) for k, v in decode_rates.items()}
    doc = {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": args.threads,
                    "load_average_start": load0, "load_average_end": os.getloadavg()},
        "setup": {"images": len(items), "input_size": args.size, "batch": args.batch, "rounds": args.rounds,
                  "source": str(root), "augmentation": {"crop_scale": list(cfg.data.crop_scale), "ratio": [0.9, 1.1],
                                                        "hflip": True, "color_jitter": cfg.data.color_jitter}},
        "images_per_s": {k: {"median": med[k], "rounds": rates[k]} for k in rates},
        "ratio_to_baseline": {k: med[k] / base for k in rates},
        "decode_images_per_s": {k: {"median": dmed[k], "rounds": decode_rates[k]} for k in decode_rates},
    }
    out = Path(args.out)
    write_json(out.with_suffix(".json"), doc)
    names = list(variants)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [3, 2]})
    ax.barh(names[::-1], [med[k] for k in names[::-1]], color=["tab:green", "tab:green", "tab:blue", "grey"])
    for i, k in enumerate(names[::-1]):
        ax.text(med[k], i, f" {med[k]:.0f}/s ({med[k] / base:.1f}x)", va="center", fontsize=8)
    ax.set_xlabel(f"images/s, disk -> augmented batch ({args.threads} thread)")
    ax.set_xlim(0, max(med[k] for k in names) * 1.35)
    ax.set_title(f"{len(items)} LFW JPEGs -> {args.size}x{args.size}, batch {args.batch}", fontsize=9)
    dn = list(dmed)
    bx.barh(dn[::-1], [dmed[k] for k in dn[::-1]], color="tab:purple")
    for i, k in enumerate(dn[::-1]):
        bx.text(dmed[k], i, f" {dmed[k]:.0f}/s", va="center", fontsize=8)
    bx.set_xlim(0, max(dmed.values()) * 1.3)
    bx.set_xlabel(f"images/s, decode + resize to {args.size}")
    bx.set_title("decoders alone", fontsize=9)
    fig.suptitle(f"{cpu_name()}, {args.threads} thread, median of {args.rounds} interleaved rounds", fontsize=8)
    fig.tight_layout()
    save_figure(fig, out.with_suffix(".png"))
    print("| variant | images/s | x baseline |\n|---|---:|---:|")
    for k in rates:
        print(f"| {k} | {med[k]:.0f} | {med[k] / base:.2f} |")
    print("| decoder | images/s |\n|---|---:|")
    for k in dmed:
        print(f"| {k} | {dmed[k]:.0f} |")


if __name__ == "__main__":
    main()
