"""A PNG grid of augmented training samples: each row one photo, the first column as the model sees it without
augmentation (resized to data.input_size), the others draws of the configured augmentation (data.augment, or the
default crop/flip/jitter). Writes PNG + JSON (the config's steps, the files, the seed).

    .venv/bin/python benchmarks/augment_grid.py --config configs/augment_strong.yaml \\
        --images ../shared/data/lfw_deepfunneled --out docs/augment_grid.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from facelab.config import load_config, to_dict
from facelab.data.transforms import augmentation_steps, base_transform
from facelab.images import list_images, read_image
from facelab.utils.io import write_json
from facelab.utils.plotting import plt, save_figure


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="YAML config whose data section is shown (default: facelab's defaults)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--images", required=True, help="identity folder (or a folder of images) to draw photos from")
    ap.add_argument("--rows", type=int, default=4, help="photos (rows)")
    ap.add_argument("--samples", type=int, default=7, help="augmented draws per photo")
    ap.add_argument("--crop", type=int, default=0, help="centre crop this many pixels first (LFW: 120)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="PNG path (the JSON is written beside it)")
    args = ap.parse_args()

    cfg = load_config(args.config, args.overrides)
    files = list_images(args.images, verify=False).images
    step = max(1, len(files) // args.rows)
    chosen = [Path(args.images) / files[i * step] for i in range(min(args.rows, len(files)))]
    base = base_transform(cfg.data.input_size)
    augment = torch.nn.Sequential(*augmentation_steps(cfg.data))
    torch.manual_seed(args.seed)
    fig, axes = plt.subplots(len(chosen), args.samples + 1, figsize=(1.3 * (args.samples + 1), 1.3 * len(chosen)),
                             squeeze=False)
    for r, path in enumerate(chosen):
        img = read_image(path)
        if args.crop:
            w, h = img.size
            c = args.crop
            img = img.crop(((w - c) // 2, (h - c) // 2, (w + c) // 2, (h + c) // 2))
        x = base(img)
        for c in range(args.samples + 1):
            y = x if c == 0 else augment(x)
            axes[r][c].imshow(y.permute(1, 2, 0).numpy())
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
        axes[r][0].set_ylabel(path.parent.name[:14], fontsize=6)
    axes[0][0].set_title("input", fontsize=7)
    for c in range(1, args.samples + 1):
        axes[0][c].set_title(f"draw {c}", fontsize=7)
    fig.suptitle(f"augmentation: {', '.join(type(t).__name__ for t in augment) or 'none'}", fontsize=7)
    fig.tight_layout()
    save_figure(fig, args.out)
    write_json(Path(args.out).with_suffix(".json"), {
        "augment": to_dict(cfg.data)["augment"] or {k: to_dict(cfg.data)[k] for k in ("crop_scale", "hflip",
                                                                                       "color_jitter")},
        "steps": [repr(t) for t in augment], "input_size": cfg.data.input_size, "seed": args.seed,
        "crop": args.crop, "images": [str(p) for p in chosen]})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
