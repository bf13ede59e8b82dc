"""Schedules against closed-form values, weight-decay groups, EMA arithmetic."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from facelab.config import ModelConfig, OptimConfig
from facelab.engine.ema import ModelEMA
from facelab.engine.optim import SCHEDULERS, build_optimizer, build_scheduler, param_groups
from facelab.errors import FacelabError
from facelab.models import build_backbone


def lrs(cfg: OptimConfig, steps_per_epoch: int) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = build_scheduler(opt, cfg, steps_per_epoch)
    out = []
    for _ in range(cfg.epochs * steps_per_epoch):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_with_warmup() -> None:
    got = lrs(OptimConfig(lr=0.2, epochs=5, warmup_epochs=1, min_lr_ratio=0.1), 4)  # 20 steps, 4 of warmup
    assert got[:4] == pytest.approx([0.05, 0.1, 0.15, 0.2])
    for t in range(4, 20):
        assert got[t] == pytest.approx(0.2 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (t - 4) / 16))))


def test_step_schedule() -> None:
    cfg = OptimConfig(lr=1.0, epochs=6, warmup_epochs=0, scheduler="step",
                      scheduler_options={"milestones": [2, 4.5], "gamma": 0.5})
    got = lrs(cfg, 2)  # milestones at steps 4 and 9
    assert got == pytest.approx([1.0] * 4 + [0.5] * 5 + [0.25] * 3)


def test_poly_schedule() -> None:
    cfg = OptimConfig(lr=1.0, epochs=2, warmup_epochs=0.5, scheduler="poly", scheduler_options={"power": 2.0})
    got = lrs(cfg, 4)  # 8 steps, 2 of warmup
    assert got[:2] == pytest.approx([0.5, 1.0])
    assert got[2:] == pytest.approx([(1 - t / 6) ** 2 for t in range(6)])


def test_onecycle_schedule() -> None:
    cfg = OptimConfig(lr=1.0, epochs=1, scheduler="onecycle",
                      scheduler_options={"pct_start": 0.25, "div_factor": 10.0, "final_div_factor": 100.0})
    got = lrs(cfg, 20)  # 5 steps up, 15 down
    assert got[0] == pytest.approx(0.1) and got[5] == pytest.approx(1.0) and max(got) == pytest.approx(1.0)
    assert got[2] == pytest.approx(1.0 + (0.1 - 1.0) * 0.5 * (1 + math.cos(math.pi * 2 / 5)))
    end = 1 / 1000
    assert got[12] == pytest.approx(end + (1 - end) * 0.5 * (1 + math.cos(math.pi * 7 / 15)))
    assert all(a >= b for a, b in itertools.pairwise(got[5:]))


def test_bad_schedule_options_are_one_line_errors() -> None:
    with pytest.raises(FacelabError, match="unknown scheduler 'cosin' \\(did you mean 'cosine'\\?\\)"):
        lrs(OptimConfig(scheduler="cosin"), 2)
    with pytest.raises(FacelabError, match=r"bad optim\.scheduler_options for scheduler 'step'"):
        lrs(OptimConfig(scheduler="step", scheduler_options={"milestone": [1]}), 2)
    assert {"cosine", "step", "poly", "onecycle"} <= set(SCHEDULERS.names())


@pytest.mark.parametrize("backbone", ["resnet18", "mobilefacenet"])
def test_no_decay_group_holds_exactly_norms_and_biases(backbone: str) -> None:
    model = build_backbone(ModelConfig(backbone=backbone, width=8, embedding_dim=16), 64)
    loss = nn.Linear(16, 3)
    groups = {g["name"]: g for g in param_groups(model, loss, OptimConfig(no_decay_norm_bias=True))}
    exempt = {id(p) for p in groups["backbone.no_decay"]["params"]}
    assert groups["backbone.no_decay"]["weight_decay"] == 0.0 and "weight_decay" not in groups["backbone"]
    expected = set()
    for mod in model.modules():
        is_norm = type(mod).__name__.endswith("Norm") or "Norm" in type(mod).__name__
        for name, p in mod.named_parameters(recurse=False):
            if is_norm or name == "bias":
                expected.add(id(p))
    assert expected and exempt == expected
    all_params = {id(p) for p in model.parameters()}
    assert {id(p) for p in groups["backbone"]["params"]} == all_params - expected
    prelu = [m.weight for m in model.modules() if isinstance(m, nn.PReLU)]
    assert all(id(w) not in exempt for w in prelu)  # 1-d but neither a norm nor a bias: decayed
    # the loss's class weights are untouched and the switch is off by default
    assert len(param_groups(model, loss, OptimConfig())) == 2
    opt = build_optimizer(model, loss, OptimConfig(no_decay_norm_bias=True, weight_decay=0.1))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0, 0.1]


def test_ema_arithmetic() -> None:
    model = nn.BatchNorm1d(2)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = ModelEMA(model, decay=0.9, warmup=False)
    values = [3.0, 5.0]
    for v in values:
        with torch.no_grad():
            model.weight.fill_(v)
            model.running_mean.fill_(v)
        ema.update(model)
    expected = 0.9 * 0.9 * 1.0 + 0.9 * 0.1 * 3.0 + 0.1 * 5.0
    assert torch.allclose(ema.state_dict()["weight"], torch.full((2,), expected))
    assert torch.equal(ema.state_dict()["running_mean"], torch.full((2,), 5.0))  # buffers are copied, not averaged
    assert int(ema.state_dict()["num_batches_tracked"]) == int(model.num_batches_tracked)

    warm = ModelEMA(model, decay=0.999)
    assert warm.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    warm.update(model)
    assert warm.current_decay() == pytest.approx(2 / 11)
    warm.updates = 10_000
    assert warm.current_decay() == 0.999
