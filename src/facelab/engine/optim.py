"""Optimizers and learning-rate schedules, chosen by name."""

from __future__ import annotations

import math

import torch
from torch import nn

from facelab.config import OptimConfig
from facelab.registry import Registry

OPTIMIZERS: Registry[torch.optim.Optimizer] = Registry("optimizer")


@OPTIMIZERS.register("sgd")
def _sgd(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)


@OPTIMIZERS.register("adamw")
def _adamw(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def param_groups(backbone: nn.Module, loss: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Backbone and loss parameters (class weights, centres) in separate groups.

    A loss may define ``optimizer_groups(cfg) -> list[dict]`` (e.g. centre loss: its own learning rate); otherwise
    all its parameters form one group with the optimizer's defaults.
    """
    groups = [{"params": [p for p in backbone.parameters() if p.requires_grad], "name": "backbone"}]
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


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float = 0.0):
    """Multiplier for LambdaLR: linear warmup from ~0 to 1, then cosine decay to ``min_ratio``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    total = cfg.epochs * steps_per_epoch
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, warmup, cfg.min_lr_ratio))
