"""Train-step throughput: facelab's step vs a bare hand-written PyTorch loop, and DDP 2 processes vs 1 (gloo).

Both loops train the same backbone + ArcFace with SGD on the same in-memory batch (data loading excluded, it is
the same DataLoader either way), alternating in rounds so background load hits both alike; medians are reported.
The DDP part runs ``--ddp-steps`` steps of one *global* batch split over 1 and then 2 processes (``threads`` each).
With CUDA available the step comparison also runs on the GPU (fp32 and bf16 autocast).

    .venv/bin/python benchmarks/bench_train_step.py --data /work/shared/data/att_faces
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from facelab.config import TrainConfig, load_config
from facelab.engine.trainer import _Run
from facelab.utils import distributed as D


def config(args: argparse.Namespace, out: Path, device: str, *extra: str) -> TrainConfig:
    return load_config(None, [
        f"data.root={args.data}", f"out_dir={out}", f"data.input_size={args.input_size}",
        f"data.batch_size={args.batch}", "data.cache_images=false", f"model.width={args.width}",
        "model.embedding_dim=128", "loss.name=arcface", "loss.options.scale=16", f"threads={args.threads}",
        f"device={device}", "data.split.open_identities=10", *extra])


def make_run(cfg: TrainConfig, ctx: D.DistContext | None = None) -> _Run:
    return _Run(cfg, ctx or D.DistContext(), False, True)


def batch(run: _Run, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    size = run.cfg.data.input_size
    images = torch.randn(n, 3, size, size, generator=g).to(run.device)
    labels = torch.randint(0, run.manifest.num_classes, (n,), generator=g).to(run.device)
    return images, labels


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_facelab(run: _Run, images: torch.Tensor, labels: torch.Tensor, steps: int) -> float:
    run.backbone.train()
    sync(run.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        run._forward_backward(images, labels, sync=True, epoch=0, micro=0)
        run._optimizer_step()
    sync(run.device)
    return steps * images.shape[0] / (time.perf_counter() - t0)


def time_bare(run: _Run, images: torch.Tensor, labels: torch.Tensor, steps: int) -> float:
    """What one would write by hand: forward, loss, backward, clip, step, schedule -- same modules and optimizer."""
    model, loss_fn, opt, sched = run.backbone, run.loss_fn, run.optimizer, run.scheduler
    params = [p for g in opt.param_groups for p in g["params"]]
    autocast = run.precision.autocast(run.device)
    model.train()
    sync(run.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        with autocast:
            loss = loss_fn(model(images), labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, run.cfg.optim.grad_clip)
        opt.step()
        sched.step()
    sync(run.device)
    return steps * images.shape[0] / (time.perf_counter() - t0)


def compare_steps(args: argparse.Namespace, device: str, *extra: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        facelab_run = make_run(config(args, Path(tmp) / "f", device, *extra))
        bare_run = make_run(config(args, Path(tmp) / "b", device, *extra))
    images, labels = batch(facelab_run, args.batch)
    time_facelab(facelab_run, images, labels, 2)  # warm-up (allocator, autotuning)
    time_bare(bare_run, images, labels, 2)
    ours, bare = [], []
    for _ in range(args.repeats):
        ours.append(time_facelab(facelab_run, images, labels, args.steps))
        bare.append(time_bare(bare_run, images, labels, args.steps))
    f, b = statistics.median(ours), statistics.median(bare)
    return {"facelab_img_s": f, "bare_img_s": b, "ratio": f / b}


def _ddp_worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank))
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        run = make_run(config(args, Path(out) / f"w{world}", "cpu"), D.setup("cpu"))
        images, labels = batch(run, args.batch)
        images, labels = (t[rank * args.batch // world:(rank + 1) * args.batch // world] for t in (images, labels))
        time_facelab(run, images, labels, 2)
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(args.ddp_steps):
            run._forward_backward(images, labels, sync=True, epoch=0, micro=0)
            run._optimizer_step()
        dist.barrier()
        if rank == 0:
            Path(out, f"w{world}.json").write_text(json.dumps(args.ddp_steps * args.batch /
                                                              (time.perf_counter() - t0)))
    finally:
        dist.destroy_process_group()


def ddp_scaling(args: argparse.Namespace) -> dict[str, float]:
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for world in (1, 2):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            mp.spawn(_ddp_worker, args=(world, port, args, tmp), nprocs=world, join=True)
            result[f"{world}_process_img_s"] = json.loads(Path(tmp, f"w{world}.json").read_text())
    result["speedup"] = result["2_process_img_s"] / result["1_process_img_s"]
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="/work/shared/data/att_faces", help="identity folder (only its labels are used)")
    p.add_argument("--width", type=int, default=16, help="resnet18 width")
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32, help="global batch")
    p.add_argument("--steps", type=int, default=10, help="steps per timed round")
    p.add_argument("--repeats", type=int, default=5, help="alternating rounds per loop")
    p.add_argument("--ddp-steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--skip-ddp", action="store_true")
    p.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    report: dict[str, object] = {"settings": {k: v for k, v in vars(args).items() if k != "json"},
                                 "torch": torch.__version__}
    report["cpu_step"] = compare_steps(args, "cpu")
    print(f"cpu step  facelab {report['cpu_step']['facelab_img_s']:.1f} img/s | bare "
          f"{report['cpu_step']['bare_img_s']:.1f} img/s | ratio {report['cpu_step']['ratio']:.3f}")
    if torch.cuda.is_available():
        for name, extra in (("cuda_step", ()), ("cuda_step_bf16", ("train.amp=bf16", "train.channels_last=true"))):
            report[name] = compare_steps(args, "cuda", *extra)
            print(f"{name}  facelab {report[name]['facelab_img_s']:.1f} img/s | bare "
                  f"{report[name]['bare_img_s']:.1f} img/s | ratio {report[name]['ratio']:.3f}")
    if not args.skip_ddp:
        report["ddp_cpu_gloo"] = ddp_scaling(args)
        d = report["ddp_cpu_gloo"]
        print(f"ddp cpu   1 process {d['1_process_img_s']:.1f} img/s | 2 processes {d['2_process_img_s']:.1f} img/s "
              f"| speedup {d['speedup']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
