"""Exponential moving average of model weights: a smoother model to evaluate than the last SGD iterate."""

from __future__ import annotations

import torch
from torch import nn


class ModelEMA:
    """``shadow = d * shadow + (1 - d) * weight`` after every optimizer step, buffers (BatchNorm statistics) copied.

    With ``warmup`` the decay is ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the random initial
    weights do not linger for ~1 / (1 - decay) steps. The shadow is float32 whatever precision the model trains in.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay, self.warmup = decay, warmup
        self.updates = 0
        self.shadow = {k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
                       for k, v in model.state_dict().items()}

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        params = dict(model.named_parameters())
        for k, v in model.state_dict().items():
            avg = self.shadow[k]
            if k in params and v.is_floating_point():
                avg.lerp_(v.detach().float(), 1.0 - d)
            else:
                avg.copy_(v)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights, in the model's own ``state_dict`` layout (loadable with ``load_state_dict``)."""
        return dict(self.shadow)

    def load(self, shadow: dict[str, torch.Tensor], updates: int) -> None:
        for k, v in shadow.items():
            self.shadow[k].copy_(v)
        self.updates = updates
