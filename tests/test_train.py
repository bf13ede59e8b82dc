"""Training end to end on real faces: checkpoints, exact resume, kill -9 recovery, clear failures."""

import argparse
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from facelab.config import TrainConfig, load_config
from facelab.engine import train
from facelab.errors import FacelabError
from facelab.evaluation.protocol import evaluate, format_table
from facelab.runs import load_checkpoint, save_checkpoint

TINY = [
    "data.input_size=64", "data.batch_size=16", "data.cache_images=true", "model.width=8",
    "model.embedding_dim=32", "loss.options.scale=16", "optim.epochs=3", "threads=1",
    "data.split.open_identities=2",
]


def tiny_config(root: Path, out: Path, *extra: str) -> TrainConfig:
    return load_config(None, [*TINY, f"data.root={root}", f"out_dir={out}", *extra])


def epochs_logged(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_reproduces_an_uninterrupted_run(small_faces: Path, tmp_path: Path) -> None:
    straight = train(tiny_config(small_faces, tmp_path / "a"), quiet=True)
    cfg = tiny_config(small_faces, tmp_path / "b")
    first = train(cfg, quiet=True, stop_after_epochs=1)
    assert [h["epoch"] for h in first.history] == [1]
    resumed = train(cfg, resume=True, quiet=True)
    assert epochs_logged(tmp_path / "b") == [1, 2, 3]
    a, b = load_checkpoint(straight.checkpoint), load_checkpoint(resumed.checkpoint)
    assert a["epoch"] == b["epoch"] == 3
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    assert (tmp_path / "b" / "training_curves.png").stat().st_size > 0


def test_refuses_to_overwrite_a_run(small_faces: Path, tmp_path: Path) -> None:
    cfg = tiny_config(small_faces, tmp_path / "r", "optim.epochs=1")
    train(cfg, quiet=True)
    with pytest.raises(FacelabError, match="already exists: pass --resume"):
        train(cfg, quiet=True)


def test_nan_loss_is_a_clear_error_and_writes_no_checkpoint(small_faces: Path, tmp_path: Path) -> None:
    cfg = tiny_config(small_faces, tmp_path / "nan", "optim.lr=1e30", "optim.grad_clip=0", "optim.warmup_epochs=0",
                      "loss.name=softmax", "loss.options={}")
    with pytest.raises(FacelabError, match=r"loss became (nan|inf) at epoch 1 step \d+"):
        train(cfg, quiet=True)
    leftovers = [p.name for p in (tmp_path / "nan").iterdir()]
    assert "checkpoint.pt" not in leftovers and not [n for n in leftovers if n.endswith(".tmp")]


def test_checkpoint_round_trip_and_unsafe_files(tmp_path: Path) -> None:
    state = {"epoch": 2, "config": {"a": [1, 2]}, "manifest": {}, "model": {"w": torch.randn(3, 2)}, "loss": {},
             "optimizer": {}, "scheduler": {}, "history": [{"epoch": 1, "loss": 0.5, "train_acc": None}]}
    save_checkpoint(tmp_path / "c.pt", state)
    back = load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(back["model"]["w"], state["model"]["w"]) and back["history"] == state["history"]
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "c.pt").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600

    class Evil:
        def __reduce__(self):  # would run a shell command if unpickled
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"format": "facelab-checkpoint", "x": Evil()}))
    torch.save({"format": "facelab-checkpoint", "x": Evil(), "w": torch.zeros(2)}, tmp_path / "evil_zip.pt")
    for name in ("evil.pt", "evil_zip.pt"):  # a bare pickle stream and a torch.save zip
        with pytest.raises(FacelabError) as info:
            load_checkpoint(tmp_path / name)
        msg = str(info.value)  # the real cause (the forbidden global), not torch's advice to unpickle anyway
        assert msg.startswith(f"cannot read checkpoint {tmp_path / name}: it holds Python objects that facelab will "
                              "not unpickle (posix.system)")
        assert "weights_only" not in msg and "\n" not in msg
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "junk.pt").write_bytes(b"hello, not a checkpoint")
    with pytest.raises(FacelabError, match=r"cannot read checkpoint .*junk\.pt: not a torch checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(FacelabError, match=r"cannot read checkpoint .*cut\.pt"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(FacelabError, match="not a facelab checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FacelabError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.pt")


def test_resume_may_lower_the_learning_rate_and_lengthen_the_run(small_faces: Path, tmp_path: Path) -> None:
    run = tmp_path / "r"
    train(tiny_config(small_faces, run, "optim.epochs=2", "optim.warmup_epochs=0"), quiet=True, stop_after_epochs=1)
    result = train(load_config(None, [f"out_dir={run}"]), resume=True, quiet=True,
                   resume_overrides=["optim.lr=0.01", "optim.epochs=3"])
    state = load_checkpoint(result.checkpoint)
    steps = state["step"] // 3
    # cosine without warm-up, lr(t) = peak * (1 + cos(pi * t / T)) / 2 after t of T steps: epoch 1 ran under the
    # old peak and length (0.1, 2 epochs); from epoch 2 on, the same step count under the new ones (0.01, 3 epochs)
    expected = [0.1 * (1 + math.cos(math.pi * 1 / 2)) / 2, 0.01 * (1 + math.cos(math.pi * 2 / 3)) / 2,
                0.01 * (1 + math.cos(math.pi)) / 2]
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert [h["lr"] for h in result.history] == pytest.approx(expected, abs=1e-12)
    assert state["config"]["optim"]["lr"] == 0.01 and state["config"]["optim"]["epochs"] == 3
    assert state["resumes"] == [{"epoch": 1, "step": steps, "changed": {"optim.lr": 0.01, "optim.epochs": 3}}]
    assert "lr: 0.01" in (run / "config.yaml").read_text()


def test_resume_refuses_to_change_what_the_run_learns(small_faces: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from facelab.cli import main

    run = tmp_path / "r"
    train(tiny_config(small_faces, run, "optim.epochs=2"), quiet=True)
    with pytest.raises(FacelabError, match=r"^--resume keeps the config the run was trained with; 'data.batch_size' "
                                           r"cannot change \(only optim.lr, optim.epochs, optim.grad_clip, "):
        train(load_config(None, [f"out_dir={run}"]), resume=True, quiet=True, resume_overrides=["data.batch_size=8"])
    with pytest.raises(FacelabError, match=r"config key 'optim\.epochs' cannot be 1: the run has already trained 2"):
        train(load_config(None, [f"out_dir={run}"]), resume=True, quiet=True, resume_overrides=["optim.epochs=1"])
    with pytest.raises(FacelabError, match=r"config key 'optim\.lr' must be a positive number"):
        train(load_config(None, [f"out_dir={run}"]), resume=True, quiet=True, resume_overrides=["optim.lr=-1"])
    assert main(["train", "--resume", "--out", str(run), "--loss", "softmax"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("facelab: error: --resume keeps the config the run was trained with; 'loss.name' cannot change "
                   "(only optim.lr, optim.epochs, optim.grad_clip, train.checkpoint_every_steps, "
                   "train.log_every_steps, device, threads can)")
    assert load_checkpoint(run)["config"]["data"]["batch_size"] == 16  # untouched


def test_nan_run_resumes_with_the_lower_learning_rate_its_error_advises(small_faces: Path, tmp_path: Path) -> None:
    from facelab.cli import main

    run = tmp_path / "nan"
    cfg = tiny_config(small_faces, run, "loss.name=softmax", "loss.options={}")
    train(cfg, quiet=True, stop_after_epochs=1)
    with pytest.raises(FacelabError) as info:
        train(cfg, resume=True, quiet=True, resume_overrides=["optim.lr=1e30", "optim.grad_clip=0"])
    msg = str(info.value)
    assert msg.startswith("loss became nan at epoch 2 step ") or msg.startswith("loss became inf at epoch 2 step ")
    assert msg.endswith(f"the last good checkpoint is kept -- resume it with a lower learning rate: facelab train "
                        f"--resume --out {run} --set optim.lr=1e+29")
    assert load_checkpoint(run)["epoch"] == 1
    assert main(["train", "--resume", "--out", str(run), "--set", "optim.lr=0.05", "--set", "optim.grad_clip=5",
                 "--quiet"]) == 0
    assert epochs_logged(run) == [1, 2, 3]
    assert load_checkpoint(run)["config"]["optim"]["lr"] == 0.05


@pytest.mark.slow
def test_train_and_eval_on_orl(orl_root: Path, tmp_path: Path) -> None:
    """A few epochs on the real ORL faces with the demo protocol; every report file is written."""
    cfg = tiny_config(orl_root, tmp_path / "orl", "data.split.open_identities=10", "model.width=16",
                      "optim.epochs=4", "data.batch_size=32")
    result = train(cfg, quiet=True)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    m = evaluate(result.out_dir, quiet=True)
    assert m["closed_set"]["images"] == 60 and m["closed_set"]["classes"] == 30
    v = m["open_set"]["verification"]
    assert v["pairs"] == {"genuine": 450, "impostor": 4500}
    assert 0.5 < v["roc_auc"] <= 1.0  # well above chance after a few epochs
    assert m["closed_set"]["top1"] > 1 / 30 * 3
    for name in ("metrics.json", "roc.png", "roc.json", "scores_hist.png", "split.json", "config.yaml"):
        assert (result.out_dir / name).stat().st_size > 0, name
    assert json.loads((result.out_dir / "metrics.json").read_text())["open_set"]["verification"]["roc_auc"] == \
        v["roc_auc"]
    assert "verification ROC AUC" in format_table(m)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "facelab", *args]


@pytest.mark.slow
def test_kill_9_then_resume_loses_no_epoch(small_faces: Path, tmp_path: Path) -> None:
    run = tmp_path / "killed"
    args = ["train", "--data", str(small_faces), "--out", str(run), "--epochs", "5", "--quiet",
            *[x for kv in TINY if not kv.startswith("optim.epochs") for x in ("--set", kv)]]
    proc = subprocess.Popen(_cli(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        if (run / "checkpoint.pt").exists() and load_checkpoint(run)["epoch"] >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = load_checkpoint(run)["epoch"]
    assert 2 <= done < 5, "the run should have been killed mid-way"
    out = subprocess.run(_cli("train", "--resume", "--out", str(run), "--quiet"), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert load_checkpoint(run)["epoch"] == 5
    assert epochs_logged(run) == [1, 2, 3, 4, 5]
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("model:\n  backbon: resnet18\n")
    out = subprocess.run(_cli("train", "--config", str(tmp_path / "bad.yaml")), capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip() == "facelab: error: unknown config key 'model.backbon' (did you mean 'backbone'?)"
    out = subprocess.run(_cli("train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")),
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip().startswith("facelab: error: data folder not found")
    assert len(out.stderr.strip().splitlines()) == 1
    out = subprocess.run(_cli("eval", str(tmp_path / "o")), capture_output=True, text=True)
    assert out.returncode == 2 and "no such file or folder" in out.stderr
    out = subprocess.run(_cli("train", "--data", ".", "--backbone", "resnet19", "--out", str(tmp_path / "p")),
                         capture_output=True, text=True)
    assert out.returncode == 2 and "unknown backbone 'resnet19' (did you mean 'resnet18'?)" in out.stderr


def test_every_cli_option_has_help() -> None:
    from facelab.cli import build_parser

    def check(parser: argparse.ArgumentParser, name: str) -> None:
        for action in parser._actions:
            if action.dest != "help":
                assert action.help, f"{name} {action.dest}"
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    assert sub.description, f"{name} {sub_name}"
                    check(sub, f"{name} {sub_name}")

    check(build_parser(), "facelab")


@pytest.mark.slow
def test_loader_workers_keep_resume_exact(small_faces: Path, tmp_path: Path) -> None:
    """With loader processes the augmentations depend on (seed, epoch) only: a run resumed at an epoch boundary
    equals the uninterrupted one, and differs from a run with another seed."""
    settings = ("optim.epochs=2", "data.num_workers=2", "data.cache_images=false")
    straight = train(tiny_config(small_faces, tmp_path / "a", *settings), quiet=True)
    cfg = tiny_config(small_faces, tmp_path / "b", *settings)
    train(cfg, quiet=True, stop_after_epochs=1)
    resumed = train(cfg, resume=True, quiet=True)
    a, b = load_checkpoint(straight.checkpoint), load_checkpoint(resumed.checkpoint)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    other = train(tiny_config(small_faces, tmp_path / "c", *settings, "seed=1"), quiet=True)
    assert other.history[-1]["loss"] != straight.history[-1]["loss"]


def test_auto_loader_workers_follow_the_usable_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    from facelab.utils.device import loader_workers

    for cores, world, expected in ((1, 1, 0), (2, 1, 0), (4, 1, 3), (16, 1, 4), (16, 2, 4), (8, 4, 1)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, n=cores: set(range(n)), raising=False)
        assert loader_workers("auto", world) == expected, (cores, world)
    assert loader_workers(3) == 3 and loader_workers(0) == 0
    from facelab.config import validate

    validate(tiny_config(Path("."), Path("x")))  # "auto", the default, is valid
    for bad in ("-1", "many", "true"):
        with pytest.raises(FacelabError, match=r"data\.num_workers"):
            validate(tiny_config(Path("."), Path("x"), f"data.num_workers={bad}"))
