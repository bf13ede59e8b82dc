"""Multi-process training on ``torch.distributed``: process-group setup from torchrun's environment, per-rank batch
shards, and the few collectives the trainer needs (metric sums, a global gradient norm, gathering sharded rows).

``data.batch_size`` is the *global* batch: every step, the batch sampler draws the same batch on every rank and
each rank trains on its contiguous slice of ``batch_size / world_size`` images. The sequence of global batches,
the number of steps and the learning-rate schedule are therefore the same for any number of processes, which is
what lets a checkpoint resume on another world size.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from facelab.errors import FacelabError

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    #: this process created the process group, so it tears it down at the end
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    try:
        return default if raw is None else int(raw)
    except ValueError:
        raise FacelabError(f"environment variable {name}={raw!r} is not an integer") from None


def setup(device_type: str) -> DistContext:
    """Join the process group torchrun describes (RANK / WORLD_SIZE / LOCAL_RANK); a single process otherwise.

    NCCL for CUDA, gloo for CPU. An already initialised group (a test that spawned its own workers) is reused.
    """
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", dist.get_rank()))
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistContext()
    if not dist.is_available():
        raise FacelabError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "nccl" if device_type == "cuda" else "gloo"
    local_rank = _env_int("LOCAL_RANK", 0)
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=True)


def teardown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rows ``[start, end)`` of ``n`` owned by ``rank``: contiguous, sizes differing by at most one."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class ShardedBatchSampler(Sampler[list[int]]):
    """This rank's slice of every batch of ``base`` (drawn identically on every rank from the same seed).

    ``skip`` drops the first batches of the next pass only (resuming mid-epoch); slices are contiguous so P x K
    batches keep an identity's K images on one rank.
    """

    def __init__(self, base: Sampler[list[int]], rank: int = 0, world: int = 1) -> None:
        self.base, self.rank, self.world = base, rank, world
        self.skip = 0

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.skip = self.skip, 0
        for i, batch in enumerate(self.base):
            if i < skip:
                continue
            if len(batch) % self.world:
                raise FacelabError(f"a batch of {len(batch)} images cannot be split evenly over {self.world} "
                                   f"processes: make data.batch_size a multiple of the process count")
            size = len(batch) // self.world
            yield batch[self.rank * size:(self.rank + 1) * size]

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]


def run_on_main(ctx: DistContext, fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 and hand its result to every rank; a ``FacelabError`` there is raised on every rank
    (instead of the other ranks waiting forever at the next collective)."""
    if not ctx.enabled:
        return fn()
    box: list[Any] = [None]
    if ctx.is_main:
        try:
            box[0] = ("ok", fn())
        except FacelabError as exc:
            box[0] = ("error", str(exc))
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise FacelabError(value)
    return value


def all_reduce_sum(ctx: DistContext, values: Iterable[float], device: torch.device) -> list[float]:
    """Sums of per-rank numbers (loss totals, counts), float64 so image counts stay exact."""
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    if ctx.enabled:
        dist.all_reduce(t)
    return t.tolist()


def all_gather_objects(ctx: DistContext, obj: Any) -> list[Any]:
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


def clip_grad_norm(replicated: list[torch.Tensor], sharded: list[torch.Tensor], max_norm: float,
                   ctx: DistContext) -> torch.Tensor:
    """Clip by the norm of the *whole* gradient: replicated parameters (already averaged by DDP) counted once,
    row-sharded ones summed over ranks, so every rank scales by the same factor and replicas stay identical."""
    grads = [p.grad for p in replicated if p.grad is not None]
    shard_grads = [p.grad for p in sharded if p.grad is not None]
    if shard_grads:
        shard_sq = torch.nn.utils.get_total_norm(shard_grads).pow(2)
        if ctx.enabled:
            dist.all_reduce(shard_sq)
        total = (shard_sq + torch.nn.utils.get_total_norm(grads).pow(2).to(shard_sq.dtype)).sqrt() if grads \
            else shard_sq.sqrt()
    else:
        total = torch.nn.utils.get_total_norm(grads)  # exactly clip_grad_norm_'s norm, so 1-process runs match
    torch.nn.utils.clip_grads_with_norm_([*replicated, *sharded], max_norm, total)
    return total


def gather_rows(ctx: DistContext, local: torch.Tensor, total_rows: int) -> torch.Tensor | None:
    """Concatenate every rank's ``shard_range`` rows of a tensor on rank 0 (CPU); None on other ranks."""
    if not ctx.enabled:
        return local.detach().cpu()
    pad_rows = -(-total_rows // ctx.world)
    padded = local.new_zeros((pad_rows, *local.shape[1:]))
    padded[: local.shape[0]] = local.detach()
    parts = [torch.empty_like(padded) for _ in range(ctx.world)] if ctx.is_main else None
    dist.gather(padded, parts, dst=0)
    if parts is None:
        return None
    sizes = [end - start for start, end in (shard_range(total_rows, r, ctx.world) for r in range(ctx.world))]
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)]).cpu()


def agree_on_overflow(sharded: list[torch.Tensor], ctx: DistContext) -> None:
    """fp16 loss scaling skips a step when *its* gradients overflow; sharded gradients differ per rank, so an
    overflow on one rank is made visible on all (one poisoned element) and every rank skips the same steps."""
    grads = [p.grad for p in sharded if p.grad is not None]
    if not grads:
        return
    bad = torch.stack([~torch.isfinite(g).all() for g in grads]).any().float()
    if ctx.enabled:
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    if bad.item():
        grads[0].view(-1)[0] = float("inf")
