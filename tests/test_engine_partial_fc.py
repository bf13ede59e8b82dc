"""Partial FC: one process equals the plain margin head; two gloo processes with sample_rate 1 equal one process
(loss, backbone and class-weight gradients, merged checkpoint state after an SGD step)."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from facelab.config import LossConfig
from facelab.engine.state import load_module_state, merged_module_state, merged_optimizer_state
from facelab.errors import FacelabError
from facelab.losses import build_loss
from facelab.losses.partial_fc import PartialFC, memory_estimate
from facelab.utils.distributed import DistContext, shard_range

DIM, CLASSES, BATCH, IN = 8, 7, 6, 5  # 7 classes over 2 ranks: uneven shards (4 + 3)
OPTIONS = [{"scale": 8.0, "margin_options": {"margin": 0.3}},
           {"scale": 8.0, "margin": "cosface", "margin_options": {"margin": 0.2}, "label_smoothing": 0.1}]


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"x": torch.randn(BATCH, IN, generator=g, dtype=torch.float64),
            "y": torch.tensor([0, 6, 3, 3, 5, 1]),
            "w": torch.randn(CLASSES, DIM, generator=g, dtype=torch.float64),
            "lin": torch.randn(DIM, IN, generator=g, dtype=torch.float64)}


def _step(options: dict, rank: int, world: int) -> dict[str, object]:
    """Forward/backward of a linear 'backbone' + Partial FC on this rank's slice, then one SGD step."""
    data = _inputs()
    backbone = nn.Linear(IN, DIM, bias=False).double()
    backbone.weight.data.copy_(data["lin"])
    pfc = PartialFC(DIM, CLASSES, **options).double()
    load_module_state(pfc, {"head.weight": data["w"]})
    model = DistributedDataParallel(backbone) if world > 1 else backbone
    b = BATCH // world
    out = pfc(model(data["x"][rank * b:(rank + 1) * b]), data["y"][rank * b:(rank + 1) * b])
    out.loss.backward()
    loss = out.loss.detach().clone()
    if world > 1:
        dist.all_reduce(loss)
        loss /= world  # DDP's objective: the mean of the ranks' losses
    result = {"loss": loss, "backbone_grad": backbone.weight.grad.clone(), "predictions": out.predictions,
              "shard_grad": pfc.head.weight.grad.clone()}
    opt = torch.optim.SGD([*backbone.parameters(), *pfc.parameters()], lr=0.5, momentum=0.9)
    opt.step()
    ctx = DistContext(rank, world)
    result["merged"] = merged_module_state(pfc, ctx)
    result["opt"] = merged_optimizer_state(opt, pfc, ctx)
    return result


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save([_step(options, rank, world) for options in OPTIONS], Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for i, options in enumerate(OPTIONS):
        ref = _step(options, 0, 1)
        for r in range(2):
            got = ranks[r][i]
            torch.testing.assert_close(got["loss"], ref["loss"], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(got["backbone_grad"], ref["backbone_grad"], rtol=1e-10, atol=1e-12)
            start, end = shard_range(CLASSES, r, 2)
            torch.testing.assert_close(got["shard_grad"], ref["shard_grad"][start:end], rtol=1e-10, atol=1e-12)
            assert torch.equal(got["predictions"], ref["predictions"][r * 3:(r + 1) * 3])
        merged, opt = ranks[0][i]["merged"], ranks[0][i]["opt"]
        assert ranks[1][i]["merged"] is None and ranks[1][i]["opt"] is None  # only rank 0 holds the merged state
        torch.testing.assert_close(merged["head.weight"], ref["merged"]["head.weight"], rtol=1e-10, atol=1e-12)
        momentum = {k: v["momentum_buffer"] for k, v in opt["state"].items()}
        for k, v in ref["opt"]["state"].items():
            assert momentum[k].shape == v["momentum_buffer"].shape
            torch.testing.assert_close(momentum[k], v["momentum_buffer"], rtol=1e-10, atol=1e-12)


def test_one_process_equals_the_margin_head_it_wraps() -> None:
    torch.manual_seed(0)
    emb, labels = torch.randn(10, DIM, dtype=torch.float64), torch.randint(0, CLASSES, (10,))
    pfc = build_loss(LossConfig("partial_fc", {"scale": 16.0, "margin_options": {"margin": 0.4}}), DIM, CLASSES)
    arc = build_loss(LossConfig("arcface", {"scale": 16.0, "margin": 0.4}), DIM, CLASSES)
    pfc.double()
    arc.double()
    arc.weight.data.copy_(pfc.head.weight.data)
    a, b = pfc(emb, labels), arc(emb, labels)
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-12, atol=1e-12)
    assert torch.equal(a.predictions, b.logits.argmax(1))
    torch.testing.assert_close(pfc.logits(emb), arc.logits(emb))
    assert set(pfc.state_dict()) == {"head.weight"}


def test_sampling_keeps_every_positive_class_and_the_rate() -> None:
    torch.manual_seed(0)
    pfc = PartialFC(DIM, 100, sample_rate=0.1, scale=8.0)
    labels = torch.tensor([3, 3, 50, 97, 12, 13, 14, 15, 16, 17, 18, 19])
    index, target = pfc._select(labels)
    assert index is not None and len(index) == 11  # 11 distinct positives > ceil(0.1 * 100) = 10
    assert torch.equal(index[target], labels)
    index, target = pfc._select(labels[:3])
    assert len(index) == 10 and torch.equal(index[target], labels[:3])
    out = pfc(torch.randn(3, DIM), labels[:3])
    out.loss.backward()
    assert (pfc.head.weight.grad.abs().sum(1) > 0).sum() == 10  # only scored rows get a gradient


def test_init_does_not_depend_on_the_world_size(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(3)
    full = PartialFC(DIM, 9).head.weight.detach()
    monkeypatch.setattr("facelab.losses.partial_fc._world", lambda: (1, 2))  # built as rank 1 of 2
    torch.manual_seed(3)
    part = PartialFC(DIM, 9)
    assert (part.start, part.end) == shard_range(9, 1, 2) == (5, 9)
    assert torch.equal(part.head.weight.detach(), full[5:9])


def test_memory_estimate_and_bad_options() -> None:
    est = memory_estimate(1_000_000, 512, world=8, sample_rate=0.2, global_batch=1024, optimizer="sgd")
    assert est["rows_per_rank"] == 125_000
    assert est["weights"] == 125_000 * 512 * 4
    assert est["weights_grad_optimizer"] == 3 * est["weights"]
    assert est["logits"] == 6 * 1024 * math.ceil(0.2 * 125_000) * 4
    with pytest.raises(FacelabError, match=r"loss.options.sample_rate must be in \(0, 1\]"):
        PartialFC(DIM, CLASSES, sample_rate=0.0)
    with pytest.raises(FacelabError, match=r"loss\.options\.margin must be a cosine margin head"):
        PartialFC(DIM, CLASSES, margin="sphereface", scale=8.0)
