"""Optimizers and learning-rate schedules, chosen by name.

Every schedule is a multiplier of the peak ``optim.lr`` as a function of the optimizer step, wrapped in one
``LambdaLR``: its state (the step count) is the same whatever the schedule or the number of processes, so a
checkpoint resumes under any world size.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from facelab.config import OptimConfig
from facelab.errors import FacelabError
from facelab.registry import Registry

OPTIMIZERS: Registry[torch.optim.Optimizer] = Registry("optimizer")

#: ``fn(total_steps, warmup_steps, cfg, steps_per_epoch, **options) -> (step -> lr multiplier)``
SCHEDULERS: Registry[Callable[[int], float]] = Registry("scheduler")

#: modules whose affine parameters are exempt from weight decay with ``optim.no_decay_norm_bias``
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
    nn.InstanceNorm3d, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.RMSNorm,
)


@OPTIMIZERS.register("sgd")
def _sgd(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)


@OPTIMIZERS.register("adamw")
def _adamw(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def no_decay_names(module: nn.Module) -> set[str]:
    """Names of the parameters of normalisation layers and of every bias: decaying them only fights the scale
    invariance that normalisation provides (and shifts biases towards 0 for no regularising benefit)."""
    names = set()
    for mod_name, mod in module.named_modules():
        for p_name, _ in mod.named_parameters(recurse=False):
            if isinstance(mod, NORM_TYPES) or p_name == "bias":
                names.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    return names


def param_groups(backbone: nn.Module, loss: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Backbone and loss parameters (class weights, centres) in separate groups.

    A loss may define ``optimizer_groups(cfg) -> list[dict]`` (e.g. centre loss: its own learning rate); otherwise
    all its parameters form one group with the optimizer's defaults. With ``cfg.no_decay_norm_bias`` the backbone's
    norm weights and biases move to a ``backbone.no_decay`` group with zero weight decay.
    """
    trainable = [(n, p) for n, p in backbone.named_parameters() if p.requires_grad]
    if cfg.no_decay_norm_bias:
        exempt = no_decay_names(backbone)
        groups = [{"params": [p for n, p in trainable if n not in exempt], "name": "backbone"},
                  {"params": [p for n, p in trainable if n in exempt], "name": "backbone.no_decay",
                   "weight_decay": 0.0}]
    else:
        groups = [{"params": [p for _, p in trainable], "name": "backbone"}]
    custom = getattr(loss, "optimizer_groups", None)
    if custom is not None:
        groups.extend(custom(cfg))
    else:
        loss_params = [p for p in loss.parameters() if p.requires_grad]
        if loss_params:
            groups.append({"params": loss_params, "name": "loss"})
    return groups


def build_optimizer(backbone: nn.Module, loss: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    return OPTIMIZERS.build(cfg.name, groups=param_groups(backbone, loss, cfg), cfg=cfg)


def _with_warmup(warmup_steps: int, after: Callable[[int], float]) -> Callable[[int], float]:
    """Linear warmup from ~0 to 1 over ``warmup_steps``, then ``after(step - warmup_steps)``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return after(step - warmup_steps)

    return factor


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> Callable[[int], float]:
    """Multiplier for LambdaLR: linear warmup from ~0 to 1, then cosine decay to ``min_ratio``."""
    span = max(1, total_steps - warmup_steps)
    return _with_warmup(warmup_steps, lambda t: min_ratio + (1 - min_ratio) * 0.5 *
                        (1 + math.cos(math.pi * min(t / span, 1.0))))


@SCHEDULERS.register("cosine")
def _cosine(total_steps: int, warmup_steps: int, cfg: OptimConfig, steps_per_epoch: int) -> Callable[[int], float]:
    return warmup_cosine(total_steps, warmup_steps, cfg.min_lr_ratio)


@SCHEDULERS.register("step")
def _step(total_steps: int, warmup_steps: int, cfg: OptimConfig, steps_per_epoch: int,
          milestones: Sequence[float] = (), gamma: float = 0.1) -> Callable[[int], float]:
    """Multiply by ``gamma`` at each milestone (in epochs, counted from the start of training)."""
    if gamma <= 0:
        raise FacelabError(f"optim.scheduler_options.gamma must be positive, got {gamma!r}")
    bounds = sorted(round(float(m) * steps_per_epoch) for m in milestones)
    return _with_warmup(warmup_steps, lambda t: gamma ** bisect.bisect_right(bounds, t + warmup_steps))


@SCHEDULERS.register("poly")
def _poly(total_steps: int, warmup_steps: int, cfg: OptimConfig, steps_per_epoch: int,
          power: float = 1.0) -> Callable[[int], float]:
    """Polynomial decay ``(1 - progress) ** power`` down to ``min_lr_ratio``."""
    if power <= 0:
        raise FacelabError(f"optim.scheduler_options.power must be positive, got {power!r}")
    span, lo = max(1, total_steps - warmup_steps), cfg.min_lr_ratio
    return _with_warmup(warmup_steps, lambda t: lo + (1 - lo) * (1 - min(t / span, 1.0)) ** power)


@SCHEDULERS.register("onecycle")
def _onecycle(total_steps: int, warmup_steps: int, cfg: OptimConfig, steps_per_epoch: int,
              pct_start: float = 0.3, div_factor: float = 25.0, final_div_factor: float = 1e4
              ) -> Callable[[int], float]:
    """Smith's one-cycle: cosine from ``1/div_factor`` up to 1 over ``pct_start`` of training, then cosine down to
    ``1/(div_factor * final_div_factor)``; ``warmup_epochs`` is ignored (the rise is the warmup)."""
    if not 0 < pct_start < 1 or div_factor <= 0 or final_div_factor <= 0:
        raise FacelabError("optim.scheduler_options for onecycle need 0 < pct_start < 1 and positive div factors")
    up = max(1, round(pct_start * total_steps))
    down = max(1, total_steps - up)
    start, end = 1 / div_factor, 1 / (div_factor * final_div_factor)

    def cos_between(a: float, b: float, frac: float) -> float:
        return b + (a - b) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))

    return lambda t: cos_between(start, 1.0, t / up) if t < up else cos_between(1.0, end, (t - up) / down)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """``steps_per_epoch`` counts optimizer steps (micro-batches / ``accumulate``)."""
    total = cfg.epochs * steps_per_epoch
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total)
    make = SCHEDULERS.get(cfg.scheduler)
    try:
        factor = make(total, warmup, cfg, steps_per_epoch, **cfg.scheduler_options)
    except TypeError as exc:
        raise FacelabError(f"bad optim.scheduler_options for scheduler '{cfg.scheduler}': {exc}") from None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
