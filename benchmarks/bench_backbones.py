"""Forward + backward throughput (images/s) of every backbone on CPU, beside torchvision's model of the same name.

Each pair is timed in the same run with the iterations interleaved (ours, theirs, ours, ...), so load from other
processes hits both sides alike and the ratio stays meaningful on a shared machine. The loss is the mean square of
the output (an embedding for ours, 1000 logits for torchvision's), enough to exercise the full backward pass.
Torchvision models are built with ``weights=None`` (nothing is downloaded); GoogLeNet without its auxiliary heads,
as ours has none. Same-name models are not always the same architecture; the params/MACs columns show where not.

    .venv/bin/python benchmarks/bench_backbones.py --input-size 112 --batch 8 --iters 3 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn

from facelab.config import ModelConfig
from facelab.models import BACKBONES, build_backbone, count_parameters
from facelab.models.summary import backbone_names, count_macs

#: our name -> torchvision constructor of the model with that name
TORCHVISION: dict[str, Callable[[], nn.Module]] = {
    "alexnet": lambda: torchvision.models.alexnet(weights=None),
    "vgg16": lambda: torchvision.models.vgg16(weights=None),
    "vgg19": lambda: torchvision.models.vgg19(weights=None),
    "resnet18": lambda: torchvision.models.resnet18(weights=None),
    "resnet34": lambda: torchvision.models.resnet34(weights=None),
    "resnet50": lambda: torchvision.models.resnet50(weights=None),
    "resnet101": lambda: torchvision.models.resnet101(weights=None),
    "resnet152": lambda: torchvision.models.resnet152(weights=None),
    "inception": lambda: torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(weights=None),
}
TORCHVISION_NAME = {"inception": "googlenet"}


def step_time(model: nn.Module, x: torch.Tensor) -> float:
    model.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    model(x).float().square().mean().backward()
    return time.perf_counter() - t0


def bench(models: list[nn.Module], x: torch.Tensor, warmup: int, iters: int, min_seconds: float) -> list[float]:
    """Median images/s of each model, timing them in turn within every iteration; at least ``iters`` iterations and
    more until every model has run ``min_seconds``, so fast models are not judged on a few 10 ms steps."""
    for m in models:
        m.train()
        for _ in range(warmup):
            step_time(m, x)
    times: list[list[float]] = [[] for _ in models]
    while len(times[0]) < iters or min(sum(t) for t in times) < min_seconds:
        for m, t in zip(models, times, strict=True):
            t.append(step_time(m, x))
    return [x.shape[0] / statistics.median(t) for t in times]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input-size", type=int, default=112)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--min-seconds", type=float, default=5.0, help="keep iterating until each model ran this long")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--embedding-dim", type=int, default=512)
    p.add_argument("--backbones", nargs="+", choices=BACKBONES.names(), metavar="NAME")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = args.input_size
    x = torch.randn(args.batch, 3, size, size)
    print(f"CPU, {args.threads} thread(s), batch {args.batch}, {size}x{size}, ours at width {args.width} "
          f"and embedding {args.embedding_dim}; fwd+bwd images/s, median of >= {args.iters} steps "
          f"and >= {args.min_seconds:g} s per model\n")
    print("| backbone | params | MACs | img/s | torchvision | params | MACs | img/s | ours / tv |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|")
    for name in args.backbones or backbone_names():
        ours = build_backbone(ModelConfig(backbone=name, width=args.width, embedding_dim=args.embedding_dim), size)
        models = [ours] + ([TORCHVISION[name]()] if name in TORCHVISION else [])
        speeds = bench(models, x, args.warmup, args.iters, args.min_seconds)
        cells = [f"{count_parameters(m) / 1e6:.2f}M | {count_macs(m, size) / 1e9:.2f}G | {s:.1f}"
                 for m, s in zip(models, speeds, strict=True)]
        theirs = (f"{TORCHVISION_NAME.get(name, name)} | {cells[1]} | {speeds[0] / speeds[1]:.2f}"
                  if len(models) > 1 else "- | | | | ")
        print(f"| {name} | {cells[0]} | {theirs} |", flush=True)


if __name__ == "__main__":
    main()
