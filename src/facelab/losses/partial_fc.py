"""Partial FC (An et al., 2022): the class-weight matrix of a margin softmax split row-wise over the processes,
with an optional random subset of negative classes per step.

With millions of identities the classifier, its gradient and its optimizer state outgrow one GPU, and so do the
``batch x classes`` logits. Here rank ``r`` owns the rows ``shard_range(C, r, W)``; the embeddings of the whole
global batch are all-gathered (with gradient), every rank scores them against its rows only, and the softmax
denominator and target logit are summed across ranks. With ``sample_rate < 1`` a rank scores all of its positive
classes plus random negatives, ``ceil(sample_rate * rows)`` classes in all.

Gradient convention: like data-parallel training, each rank's loss is the mean over *its* images and DDP averages
the backbone gradients; the sharded rows are not averaged by DDP, so their gradient is divided by the world size
here. With ``sample_rate = 1`` the result equals single-process training on the global batch (tested).

In one process (evaluation, or training without torchrun) it is an ordinary margin head over all classes, so a
merged checkpoint loads with ``facelab eval`` unchanged. Registered as loss ``partial_fc``; the margin comes from
the named head (``arcface`` by default, any cosine head whose margin lives in ``target_logit``)::

    loss: {name: partial_fc, options: {margin: arcface, sample_rate: 0.3, scale: 64, margin_options: {margin: 0.5}}}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

import facelab.losses  # noqa: F401  (registers the margin heads)
from facelab.config import LossConfig
from facelab.losses.base import FaceLoss, LossOutput, at_least_fp32, build_loss, check_option, register_loss
from facelab.losses.classification import CosineClassifier, resolve_scale
from facelab.utils.distributed import shard_range

#: optimizer state tensors per parameter, by optimizer name (for the memory estimate)
OPTIMIZER_SLOTS = {"sgd": 1, "adamw": 2}


@dataclass
class PartialFCOutput(LossOutput):
    #: predicted global class of each local image (argmax over the scored classes of every rank)
    predictions: torch.Tensor | None = None


class _ScaleGrad(torch.autograd.Function):
    """Identity forward, gradient times ``factor`` backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


class _AllGather(torch.autograd.Function):
    """Concatenate every rank's rows; backward: sum the gradient over ranks, keep this rank's rows.

    (``torch.distributed.nn.functional`` does the same but is deprecated for a private module.)
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows, ctx.rank = x.shape[0], dist.get_rank()
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; each rank's loss uses the sum, so the gradient of every copy is summed back."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _shard(n: int, rank: int, world: int) -> tuple[int, int]:
    return shard_range(n, rank, world)


def memory_estimate(num_classes: int, embedding_dim: int, world: int, sample_rate: float, global_batch: int,
                    optimizer: str = "sgd") -> dict[str, float]:
    """Bytes per rank for the class weights (+ gradient + optimizer state) and for the float32 logit buffers."""
    rows = math.ceil(num_classes / world)
    weights = rows * embedding_dim * 4
    scored = max(1, math.ceil(sample_rate * rows))
    return {
        "rows_per_rank": rows,
        "weights": weights,
        "weights_grad_optimizer": weights * (2 + OPTIMIZER_SLOTS.get(optimizer, 2)),
        # cosine, margin logits and exp (+ their gradients) for the global batch against the scored classes
        "logits": 6 * global_batch * scored * 4,
    }


def format_memory(est: dict[str, float]) -> str:
    gib = 1024**3
    total = est["weights_grad_optimizer"] + est["logits"]
    return (f"{est['rows_per_rank']:,} classes per process: weights {est['weights'] / gib:.3f} GiB, with gradient "
            f"and optimizer state {est['weights_grad_optimizer'] / gib:.3f} GiB, logits {est['logits'] / gib:.3f} "
            f"GiB; about {total / gib:.3f} GiB per process")


class PartialFC(FaceLoss):
    def __init__(self, embedding_dim: int, num_classes: int, margin: str = "arcface", sample_rate: float = 1.0,
                 scale: float | str = 64.0, margin_options: dict[str, Any] | None = None,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        check_option(0.0 < sample_rate <= 1.0, "sample_rate", "must be in (0, 1]", sample_rate)
        check_option(margin != "partial_fc", "margin", "must name a margin head, not partial_fc itself", margin)
        self.rank, self.world = _world()
        self.num_classes = num_classes
        self.sample_rate = float(sample_rate)
        self.start, self.end = _shard(num_classes, self.rank, self.world)
        seed = int(torch.randint(0, 2**62, ()).item())  # before the head draws its (shard-sized) default init
        options = {"scale": scale, "label_smoothing": label_smoothing, **(margin_options or {})}
        if options["scale"] == "auto":  # from all the classes, not this process' shard of them
            options["scale"] = resolve_scale("auto", num_classes)
        head = build_loss(LossConfig(margin, options), embedding_dim, self.end - self.start)
        check_option(isinstance(head, CosineClassifier) and type(head).forward is CosineClassifier.forward,
                     "margin", "must be a cosine margin head without state of its own (e.g. arcface, cosface, "
                     "combined, normface)", margin)
        self.head: CosineClassifier = head  # type: ignore[assignment]
        self._init_rows(seed)

    @torch.no_grad()
    def _init_rows(self, seed: int, std: float = 0.01, chunk: int = 1 << 16) -> None:
        """Draw the full matrix chunk by chunk from one seed and keep this rank's rows: the initial weights do not
        depend on the world size, and no two ranks start with identical class vectors."""
        gen = torch.Generator().manual_seed(seed)
        dim = self.head.weight.shape[1]
        for lo in range(0, self.end, chunk):
            block = torch.randn(min(chunk, self.num_classes - lo), dim, generator=gen) * std
            a, b = max(lo, self.start), min(lo + block.shape[0], self.end)
            if a < b:
                self.head.weight[a - self.start:b - self.start] = block[a - lo:b - lo]

    def sharded_parameters(self) -> dict[str, torch.nn.Parameter]:
        """Parameters (by ``state_dict`` name) holding only this rank's rows ``[start, end)``."""
        return {"head.weight": self.head.weight}

    def memory_summary(self, global_batch: int, optimizer: str) -> str:
        est = memory_estimate(self.num_classes, self.head.weight.shape[1], self.world, self.sample_rate,
                              global_batch, optimizer)
        return f"partial_fc over {self.world} process(es), sample_rate {self.sample_rate:g}: {format_memory(est)}"

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor | None:
        """Margin-free scores over all classes; only defined when this process holds every class."""
        return self.head.logits(embeddings) if self.world == 1 else None

    def _select(self, labels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Rows to score and, per image, the index of its class among them (-1: another rank's class).

        All positive classes of the shard are kept; random negatives fill up to ``ceil(sample_rate * rows)``.
        """
        rows = self.end - self.start
        local = labels - self.start
        owned = (local >= 0) & (local < rows)
        if self.sample_rate >= 1.0 or not self.training:
            return None, torch.where(owned, local, -1)
        positives = torch.unique(local[owned])
        keep = max(1, math.ceil(self.sample_rate * rows), positives.numel())
        priority = torch.rand(rows, device=labels.device)
        priority[positives] = 2.0  # positives first
        index = torch.topk(priority, keep, sorted=False).indices.sort().values
        position = torch.full((rows,), -1, dtype=torch.long, device=labels.device)
        position[index] = torch.arange(keep, device=labels.device)
        return index, torch.where(owned, position[local.clamp(0, rows - 1)], -1)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> PartialFCOutput:
        labels = labels.long()
        local_n = embeddings.shape[0]
        if self.world > 1:
            feats = _AllGather.apply(embeddings)
            every = [torch.empty_like(labels) for _ in range(self.world)]
            dist.all_gather(every, labels)
            all_labels = torch.cat(every)
        else:
            feats, all_labels = embeddings, labels
        weight = self.head.weight
        if self.world > 1:
            weight = _ScaleGrad.apply(weight, 1.0 / self.world)
        index, target = self._select(all_labels)
        if index is not None:
            weight = weight[index]
        with torch.autocast(device_type=feats.device.type, enabled=False):
            x = at_least_fp32(feats)
            cos = F.normalize(x, dim=1) @ F.normalize(weight.to(x.dtype), dim=1).t()
        cos = cos.clamp(-1 + self.head.eps, 1 - self.head.eps)
        scale = self.head.logit_scale(feats)
        has = target >= 0
        rows = has.nonzero().squeeze(1)
        adjusted = cos.index_put((rows, target[rows]), self.head.target_logit(cos[rows, target[rows]]))
        logits = scale * adjusted

        # softmax over the classes of every rank: shared max for stability, then summed exp / target / logit sums
        peak = logits.detach().max(dim=1).values
        scored = torch.tensor(float(logits.shape[1]), device=logits.device)
        if self.world > 1:
            dist.all_reduce(peak, op=dist.ReduceOp.MAX)
            dist.all_reduce(scored)
        mine_target = torch.zeros_like(peak).index_put((rows,), logits[rows, target[rows]])
        sums = torch.stack([(logits - peak[:, None]).exp().sum(1), mine_target, logits.sum(1)])
        if self.world > 1:
            sums = _AllReduceSum.apply(sums)
        log_z = sums[0].log() + peak
        per_image = log_z - sums[1]
        eps = self.head.label_smoothing
        if eps > 0:
            per_image = (1 - eps) * per_image + eps * (log_z - sums[2] / scored)
        first = self.rank * local_n if self.world > 1 else 0
        loss = per_image[first:first + local_n].mean()
        predictions = self._predict(scale * cos.detach(), index, first, local_n)
        return PartialFCOutput(loss, None, predictions=predictions)

    def _predict(self, scores: torch.Tensor, index: torch.Tensor | None, first: int, n: int) -> torch.Tensor:
        best, arg = scores.max(dim=1)
        cls = (arg if index is None else index[arg]) + self.start
        if self.world > 1:
            bests = [torch.empty_like(best) for _ in range(self.world)]
            classes = [torch.empty_like(cls) for _ in range(self.world)]
            dist.all_gather(bests, best)
            dist.all_gather(classes, cls)
            winner = torch.stack(bests).argmax(dim=0)
            cls = torch.stack(classes).gather(0, winner[None]).squeeze(0)
        return cls[first:first + n]


register_loss("partial_fc", PartialFC)
