"""World-size-independent checkpoint state: sharded rows are merged on save and re-sliced on load.

A loss may hold row-sharded parameters (Partial FC's class weights): it declares them with
``sharded_parameters() -> {state_dict name: parameter}`` and its ``start``/``end``/``num_classes`` rows. Their
optimizer state (momentum, Adam moments) has the same rows and is merged/sliced the same way. Everything else is
replicated and saved as is, so a checkpoint written by N processes is the checkpoint one process would write.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import nn

from facelab.utils.distributed import DistContext, all_gather_objects, gather_rows


def sharded_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    fn = getattr(module, "sharded_parameters", None)
    return dict(fn()) if fn is not None else {}


def _rows(module: nn.Module) -> tuple[int, int, int]:
    return int(module.start), int(module.end), int(module.num_classes)  # type: ignore[arg-type]


def merged_module_state(module: nn.Module, ctx: DistContext) -> dict[str, torch.Tensor] | None:
    """``state_dict`` with sharded entries gathered to all rows; a collective, the result only on rank 0."""
    state = module.state_dict()
    sharded = sharded_parameters(module)
    if not sharded:
        return state if ctx.is_main else None
    total = _rows(module)[2]
    for name in sharded:
        full = gather_rows(ctx, state[name], total)
        if full is not None:
            state[name] = full
    return state if ctx.is_main else None


def load_module_state(module: nn.Module, full: dict[str, torch.Tensor]) -> None:
    """Load a merged ``state_dict``, keeping only this rank's rows of the sharded entries."""
    sharded = sharded_parameters(module)
    if sharded:
        start, end, _ = _rows(module)
        full = {k: v[start:end] if k in sharded else v for k, v in full.items()}
    module.load_state_dict(full)


def _sharded_slots(optimizer: torch.optim.Optimizer, module: nn.Module) -> dict[int, torch.Size]:
    """Optimizer ``state_dict`` indices of the sharded parameters -> their local shape."""
    wanted = {id(p): p.shape for p in sharded_parameters(module).values()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return {i: wanted[id(p)] for i, p in enumerate(params) if id(p) in wanted}


def merged_optimizer_state(optimizer: torch.optim.Optimizer, module: nn.Module, ctx: DistContext
                           ) -> dict[str, Any] | None:
    state = optimizer.state_dict()
    slots = _sharded_slots(optimizer, module)
    if slots:
        total = _rows(module)[2]
        merged = {}
        for idx, per_param in state["state"].items():
            if idx in slots:
                per_param = dict(per_param)
                for key, value in sorted(per_param.items()):
                    if torch.is_tensor(value) and value.shape == slots[idx]:
                        per_param[key] = gather_rows(ctx, value, total)
            merged[idx] = per_param
        state = {**state, "state": merged}
    return state if ctx.is_main else None


def load_optimizer_state(optimizer: torch.optim.Optimizer, module: nn.Module, full: dict[str, Any]) -> None:
    slots = _sharded_slots(optimizer, module)
    if slots:
        start, end, total = _rows(module)
        state = {idx: {k: v[start:end] if idx in slots and torch.is_tensor(v) and v.dim() > 0
                       and v.shape[0] == total else v for k, v in per_param.items()}
                 for idx, per_param in full["state"].items()}
        full = {**full, "state": state}
    optimizer.load_state_dict(full)


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process' random state as plain Python values: they pickle across ranks and load ``weights_only``."""
    name, keys, *rest = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), *(float(v) if isinstance(v, float) else int(v) for v in rest)],
        "torch": torch.get_rng_state().tolist(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device).tolist()
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8), device)


def gather_rng_states(ctx: DistContext, device: torch.device) -> list[dict[str, Any]]:
    return all_gather_objects(ctx, rng_state(device))
