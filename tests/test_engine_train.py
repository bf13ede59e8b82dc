"""The training loop at scale: accumulation, AMP, TensorBoard, mid-epoch resume, step-interval kill -9, and a
2-process torchrun run resumed on 1 process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from facelab.config import TrainConfig, load_config
from facelab.engine import train
from facelab.engine.trainer import _Run
from facelab.errors import FacelabError
from facelab.runs import load_checkpoint
from facelab.utils.distributed import DistContext

TINY = ["data.input_size=64", "data.batch_size=4", "data.cache_images=true", "model.width=8",
        "model.embedding_dim=32", "loss.options.scale=16", "optim.epochs=2", "threads=1",
        "data.split.open_identities=2"]


def tiny(root: Path, out: Path, *extra: str) -> TrainConfig:
    return load_config(None, [*TINY, f"data.root={root}", f"out_dir={out}", *extra])


def test_accumulating_micro_batches_equals_one_big_batch(small_faces: Path, tmp_path: Path) -> None:
    """Real trainer step code, float64, BatchNorm in eval mode (batch statistics would differ by design)."""
    params = []
    for name, batch, k in (("big", 8, 1), ("micro", 4, 2)):
        run = _Run(tiny(small_faces, tmp_path / name, f"data.batch_size={batch}", f"optim.accumulate={k}",
                        "optim.grad_clip=1.0"), DistContext(), False, True)
        run.backbone.double().eval()
        run.loss_fn.double()
        g = torch.Generator().manual_seed(1)
        images = torch.randn(8, 3, 64, 64, generator=g, dtype=torch.float64)
        labels = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1])
        for lo in range(0, 8, batch):
            run._forward_backward(images[lo:lo + batch], labels[lo:lo + batch], sync=lo + batch == 8, epoch=0,
                                  micro=lo // batch)
        run._optimizer_step()
        assert run.global_step == 1
        params.append([p.detach().clone() for g in run.optimizer.param_groups for p in g["params"]])
    big, micro = params
    for a, b in zip(big, micro, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_bf16_autocast_trains_on_cpu(small_faces: Path, tmp_path: Path) -> None:
    extra = ("optim.epochs=1", "data.batch_size=8")
    full = train(tiny(small_faces, tmp_path / "fp32", *extra), quiet=True).history[0]["loss"]
    half = train(tiny(small_faces, tmp_path / "bf16", *extra, "train.amp=bf16", "train.channels_last=true"),
                 quiet=True).history[0]["loss"]
    assert torch.isfinite(torch.tensor(half)) and half != full
    assert abs(half - full) < 0.2 * full  # rounding differs, the six steps learn about the same
    run = _Run(tiny(small_faces, tmp_path / "probe", "train.amp=bf16"), DistContext(), False, True)
    with run.precision.autocast(run.device):
        assert run.model(torch.randn(2, 3, 64, 64)).dtype == torch.bfloat16  # the backbone runs in bfloat16
    with pytest.raises(FacelabError, match=r"train\.amp=fp16 needs a CUDA device"):
        train(tiny(small_faces, tmp_path / "fp16", "train.amp=fp16"), quiet=True)
    with pytest.raises(FacelabError, match=r"unknown train\.amp mode 'bf61'"):
        train(tiny(small_faces, tmp_path / "x", "train.amp=bf61"), quiet=True)


def test_tensorboard_logs_and_missing_package(small_faces: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny(small_faces, tmp_path / "tb", "optim.epochs=1", "train.tensorboard=true", "train.log_every_steps=2",
               "data.batch_size=8")
    train(cfg, quiet=True)
    events = list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    steps = [json.loads(x) for x in (tmp_path / "tb" / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [2, 4, 6] and {"loss", "lr", "images_per_s"} <= set(steps[0])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from facelab.evaluation.protocol import evaluate

    metrics = evaluate(tmp_path / "tb", quiet=True)
    acc = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    acc.Reload()
    auc = acc.Scalars("eval/open_roc_auc")
    assert [(e.step, round(e.value, 6)) for e in auc] == [(1, round(metrics["open_set"]["verification"]["roc_auc"], 6))]
    assert acc.Scalars("eval/closed_top1")[0].value == pytest.approx(metrics["closed_set"]["top1"])
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(FacelabError, match=r"^train\.tensorboard needs the tensorboard package: pip install"):
        train(tiny(small_faces, tmp_path / "none", "train.tensorboard=true"), quiet=True)


def test_mid_epoch_resume_reproduces_an_uninterrupted_run(small_faces: Path, tmp_path: Path) -> None:
    """Step checkpoints keep the position in the epoch, the RNG state, the EMA and the accumulation phase."""
    extra = ("train.checkpoint_every_steps=2", "optim.accumulate=2", "optim.ema=0.9", "optim.scheduler=poly",
             "optim.no_decay_norm_bias=true", "train.log_every_steps=1")
    straight = train(tiny(small_faces, tmp_path / "a", *extra), quiet=True)
    cfg = tiny(small_faces, tmp_path / "b", *extra)
    train(cfg, quiet=True, stop_after_steps=9)  # 6 steps per epoch: stopped in epoch 2, after the step-8 checkpoint
    mid = load_checkpoint(tmp_path / "b")
    assert (mid["epoch"], mid["step"], mid["batches_done"]) == (1, 8, 4)
    resumed = train(cfg, resume=True, quiet=True)
    a, b = load_checkpoint(straight.checkpoint), load_checkpoint(resumed.checkpoint)
    assert a["step"] == b["step"] == 12 and b["batches_done"] == 0
    for part in ("model", "train_model"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    assert torch.equal(a["loss"]["weight"], b["loss"]["weight"])
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    assert any(not torch.equal(a["model"][k], a["train_model"][k]) for k in a["model"]
               if a["model"][k].is_floating_point())  # "model" is the EMA, "train_model" the raw weights
    logged = [json.loads(x)["step"] for x in (tmp_path / "b" / "steps.jsonl").read_text().splitlines()]
    assert logged == list(range(1, 13))  # the steps redone after the resume are logged once


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "facelab", *args]


@pytest.mark.slow
def test_kill_9_loses_at_most_one_step_interval(orl_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "killed"
    every = 3
    settings = [*TINY, "data.batch_size=8", f"train.checkpoint_every_steps={every}", "train.log_every_steps=1"]
    proc = subprocess.Popen(_cli("train", "--data", str(orl_root), "--out", str(run), "--quiet",
                                 *[x for kv in settings for x in ("--set", kv)]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = run / "steps.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 10:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    last_logged = json.loads(log.read_text().splitlines()[-1])["step"]
    state = load_checkpoint(run)
    assert state["epoch"] == 0, "killed in the first epoch (38 steps): only step checkpoints can exist"
    assert 0 <= last_logged - state["step"] <= every
    out = subprocess.run(_cli("train", "--resume", "--out", str(run), "--quiet"), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    final = load_checkpoint(run)
    assert (final["epoch"], final["step"]) == (2, 76)
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == list(range(1, 77))


@pytest.mark.slow
def test_torchrun_two_processes_then_resume_on_one(small_faces: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    settings = [*TINY, "data.batch_size=8", "loss.name=partial_fc", "loss.options.sample_rate=0.5",
                "train.log_every_steps=1", f"data.root={small_faces}", f"out_dir={run}"]
    code = ("from facelab.config import load_config; from facelab.engine import train; "
            f"train(load_config(None, {settings!r}), quiet=True, stop_after_epochs=1)")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    out = subprocess.run([*torchrun, "--no-python", sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    first = load_checkpoint(run)
    assert (first["epoch"], first["world_size"], first["step"]) == (1, 2, 6)
    assert first["loss"]["head.weight"].shape == (6, 32)  # merged: every class, not rank 0's shard
    shapes = [tuple(v["momentum_buffer"].shape) for v in first["optimizer"]["state"].values()]
    assert (6, 32) in shapes  # the class weights' momentum is merged too
    out = subprocess.run(_cli("train", "--resume", "--out", str(run), "--quiet"), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    final = load_checkpoint(run)
    assert (final["epoch"], final["world_size"], final["step"]) == (2, 1, 12)
    assert [h["epoch"] for h in final["history"]] == [1, 2]
    assert (run / "training_curves.png").stat().st_size > 0

    from facelab.evaluation.protocol import evaluate

    metrics = evaluate(run, quiet=True)  # the merged checkpoint loads in one process for evaluation
    assert metrics["closed_set"]["classes"] == 6


def test_joint_loss_terms_are_logged_per_epoch(small_faces: Path, tmp_path: Path) -> None:
    """Each component's unweighted epoch mean lands in history, metrics.jsonl and the curves; the weighted sum of
    the means is the logged total (both are image-weighted means of the same batches)."""
    components = "[{name: softmax, weight: 0.7}, {name: center, weight: 0.3}]"
    cfg = tiny(small_faces, tmp_path / "joint", "optim.epochs=1", "loss.name=joint", "loss.options={}",
               f"loss.options.components={components}", "train.log_every_steps=1")
    result = train(cfg, quiet=True)
    rec = result.history[0]
    assert {"loss.0.softmax", "loss.1.center"} <= set(rec)
    assert rec["loss.0.softmax"] > 0 and rec["loss.1.center"] > 0
    assert 0.7 * rec["loss.0.softmax"] + 0.3 * rec["loss.1.center"] == pytest.approx(rec["loss"], rel=1e-5)
    logged = [json.loads(line) for line in (tmp_path / "joint" / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["loss.1.center"] == pytest.approx(rec["loss.1.center"])
    single = train(tiny(small_faces, tmp_path / "single", "optim.epochs=1"), quiet=True).history[0]
    assert not any(k.startswith("loss.") for k in single)
