"""Fine-tuning (``init`` section, ``facelab train --init``): the distill loss against a float64 formula, the freeze
schedule and BatchNorm modes, the backbone learning-rate multiplier, init resolution, what ``facelab train`` does
with only --data, and (slow) a fine-tune from a run that starts from its weights, keeps them during the frozen epoch,
resumes and evaluates."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from facelab.cli import build_parser
from facelab.cli.train import train_config_from_args
from facelab.config import InitConfig, LossConfig, OptimConfig, TrainConfig, load_config
from facelab.engine.finetune import (
    FinetuneSchedule,
    InitModel,
    apply_init,
    interpolate_weights,
    resolve_init,
    scale_backbone_lr,
    validate_init,
)
from facelab.engine.optim import build_optimizer, build_scheduler
from facelab.errors import FacelabError
from facelab.inference.spec import InputSpec
from facelab.losses import LOSSES, DistillLoss, build_loss


# -- the distill loss ----------------------------------------------------------------------------------------------
def ref_distill(x: np.ndarray, t: np.ndarray) -> float:
    """mean_i 1 - <x_i, t_i> / (|x_i| |t_i|), in float64."""
    cos = (x * t).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(t, axis=1))
    return float(np.mean(1.0 - cos))


def test_distill_loss_matches_the_float64_formula_and_gradcheck() -> None:
    assert "distill" in LOSSES
    loss = build_loss(LossConfig("distill"), 6, 3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 6, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(10, 6, generator=g, dtype=torch.float64)
    out = loss(x, torch.zeros(10, dtype=torch.long), targets=t)
    assert out.logits is None
    assert out.loss.item() == pytest.approx(ref_distill(x.detach().numpy(), t.numpy()), abs=1e-12)
    assert torch.autograd.gradcheck(lambda e: loss(e, None, targets=t).loss, (x,))
    # 0 for the same direction whatever the length, 2 for opposite directions
    assert loss(3 * t, None, targets=t).loss.item() == pytest.approx(0.0, abs=1e-12)
    assert loss(-t, None, targets=t).loss.item() == pytest.approx(2.0, abs=1e-12)
    # under autocast-like half inputs it computes in float32
    half = loss(x.detach().half(), None, targets=t.half()).loss
    assert half.dtype == torch.float32


def test_distill_loss_errors() -> None:
    loss = DistillLoss(4, 2)
    with pytest.raises(FacelabError, match="--init"):
        loss(torch.randn(2, 4), torch.zeros(2))
    with pytest.raises(FacelabError, match="embedding size"):
        loss(torch.randn(2, 4), torch.zeros(2), targets=torch.randn(2, 5))


# -- schedule and optimizer --------------------------------------------------------------------------------------
def _tiny_backbone() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.PReLU(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 8))


def test_freeze_schedule_and_batchnorm_modes() -> None:
    sched = FinetuneSchedule(InitConfig(model="x", freeze_epochs=1.5, freeze_bn=True), steps_per_epoch=4)
    assert [sched.frozen(s) for s in range(8)] == [True] * 6 + [False] * 2
    net = _tiny_backbone()
    sched.set_modes(net, 0)
    assert not any(m.training for m in net.modules())
    sched.set_modes(net, 6)
    assert net[0].training and net[4].training and not net[1].training  # BN statistics stay the init model's
    FinetuneSchedule(InitConfig(model="x", freeze_bn=False), 4).set_modes(net, 0)
    assert all(m.training for m in net.modules())


def test_backbone_learning_rate_multiplier_survives_the_schedule() -> None:
    net = _tiny_backbone()
    loss = build_loss(LossConfig("arcface"), 8, 3)
    cfg = OptimConfig(lr=0.1, epochs=2, warmup_epochs=0.0)
    opt = build_optimizer(net, loss, cfg)
    scale_backbone_lr(opt, 0.1)
    sched = build_scheduler(opt, cfg, steps_per_epoch=5)
    for _ in range(3):
        opt.step()
        sched.step()
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["backbone"] == pytest.approx(0.1 * lrs["class_weights"])
    assert lrs["class_weights"] < 0.1  # the cosine schedule still applies to both


def test_validate_init() -> None:
    validate_init(InitConfig(model="sface"))
    for bad in ({"backbone_lr": -1.0}, {"freeze_epochs": -0.5}, {"distill": -1.0}, {"interpolate": 1.5},
                {"interpolate": -0.1}):
        with pytest.raises(FacelabError, match=next(iter(bad))):
            validate_init(InitConfig(model="sface", **bad))  # type: ignore[arg-type]


# -- WiSE-FT interpolation ------------------------------------------------------------------------------------------
def test_interpolate_weights_is_the_wise_ft_formula_in_float64() -> None:
    rng = np.random.default_rng(0)
    init = {"w": torch.tensor(rng.normal(size=(4, 3)), dtype=torch.float32),
            "bn.running_var": torch.tensor(rng.uniform(0.5, 2, 3), dtype=torch.float32),
            "bn.num_batches_tracked": torch.tensor(5)}
    tuned = {"w": torch.tensor(rng.normal(size=(4, 3)), dtype=torch.float32),
             "bn.running_var": torch.tensor(rng.uniform(0.5, 2, 3), dtype=torch.float32),
             "bn.num_batches_tracked": torch.tensor(90)}
    for alpha in (0.0, 0.25, 0.7, 1.0):
        out = interpolate_weights(init, tuned, alpha)
        for k in ("w", "bn.running_var"):  # (1 - a) * init + a * tuned, in float64
            ref = (1 - alpha) * init[k].double().numpy() + alpha * tuned[k].double().numpy()
            np.testing.assert_allclose(out[k].double().numpy(), ref, rtol=0, atol=1e-6)
            assert out[k].dtype == torch.float32
        assert out["bn.num_batches_tracked"].item() == 90  # integer buffers are not mixed
    assert torch.equal(interpolate_weights(init, tuned, 0.0)["w"], init["w"])
    assert torch.equal(interpolate_weights(init, tuned, 1.0)["w"], tuned["w"])
    assert torch.equal(interpolate_weights(init, init, 0.3)["w"], init["w"])  # nothing learnt: exactly the init
    with pytest.raises(FacelabError, match="differ in 1 tensors"):
        interpolate_weights(init, {**tuned, "extra": torch.zeros(1)}, 0.5)
    with pytest.raises(FacelabError, match="w is"):
        interpolate_weights(init, {**tuned, "w": torch.zeros(2, 2)}, 0.5)


# -- init resolution ------------------------------------------------------------------------------------------------
def test_apply_init_takes_model_input_and_alignment_from_the_init_model() -> None:
    init = InitModel(nn.Identity(), {"backbone": "sface", "embedding_dim": 128, "width": 64, "dropout": 0.0,
                                     "options": {}},
                     InputSpec(input_size=112, mean=(0.5,) * 3, std=(128 / 255,) * 3, align="yunet"), "test")
    cfg = TrainConfig()
    changes = apply_init(cfg, init)
    assert cfg.model.backbone == "sface" and cfg.model.embedding_dim == 128
    assert cfg.data.input_size == 112 and cfg.data.std == pytest.approx((128 / 255,) * 3)
    assert cfg.data.align == "yunet" and any("alignment" in c for c in changes)
    cfg = TrainConfig()
    cfg.init.align = "none"  # the user's images are already aligned crops
    apply_init(cfg, init)
    assert cfg.data.align == "none"
    bgr = InitModel(nn.Identity(), init.architecture, InputSpec(colour_order="BGR"), "bgr")
    with pytest.raises(FacelabError, match="BGR"):
        apply_init(TrainConfig(), bgr)


def test_resolve_init_names_what_it_accepts(tmp_path: Path) -> None:
    with pytest.raises(FacelabError, match=r"init.model: .*no such file or folder"):
        resolve_init(str(tmp_path / "nothing-here"))
    with pytest.raises(FacelabError, match=r"init.model: model 'nothing' not found.*sface"):
        resolve_init("nothing")
    with pytest.raises(FacelabError, match="accept-licence"):
        resolve_init("w600k_mbf")


# -- what `facelab train` runs ------------------------------------------------------------------------------------
def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["train", *argv])


def test_train_with_only_data_fine_tunes_the_pretrained_default() -> None:
    cfg = train_config_from_args(_args("--data", "faces", "--out", "runs/x"))
    assert cfg.init.model == "sface" and cfg.init.distill > 0 and cfg.optim.epochs == 4
    assert cfg.data.root == "faces" and cfg.out_dir == "runs/x"
    # flags and init settings still apply on top of the recipe
    assert train_config_from_args(_args("--data", "f", "--epochs", "2")).optim.epochs == 2
    tuned = train_config_from_args(_args("--data", "f", "--set", "init.freeze_bn=false"))
    assert tuned.init.model == "sface" and not tuned.init.freeze_bn
    other = train_config_from_args(_args("--data", "f", "--init", "w600k_mbf", "--accept-licence"))
    assert other.init.model == "w600k_mbf" and other.init.accept_licence


def test_fit_uses_the_same_recipe_as_train() -> None:
    from facelab.cli.train import training_recipe

    base, overrides = training_recipe(build_parser().parse_args(["fit", "faces", "--out", "r"]))
    assert base is not None and base["init"]["model"] == "sface"
    base, overrides = training_recipe(build_parser().parse_args(["fit", "faces", "--out", "r", "--backbone", "lenet5"]))
    assert base is None and "model.backbone=lenet5" in overrides


def test_choosing_a_model_trains_from_scratch() -> None:
    defaults = TrainConfig()
    for argv in (("--backbone", "resnet18"), ("--init", "none"), ("--set", "model.width=32")):
        cfg = train_config_from_args(_args("--data", "f", *argv))
        assert cfg.init.model == "" and cfg.optim.epochs == defaults.optim.epochs, argv
    with pytest.raises(FacelabError, match="one of them"):
        train_config_from_args(_args("--data", "f", "--init", "sface", "--backbone", "resnet18"))
    with pytest.raises(FacelabError, match="drop --init"):
        train_config_from_args(_args("--resume", "--out", "r", "--init", "sface"))


def test_a_config_file_is_never_replaced_by_the_recipe(tmp_path: Path) -> None:
    yaml = tmp_path / "c.yaml"
    yaml.write_text("optim: {epochs: 7}\n")
    assert train_config_from_args(_args("--config", str(yaml))).init.model == ""
    cfg = train_config_from_args(_args("--config", str(yaml), "--init", "sface"))
    assert cfg.init.model == "sface" and cfg.optim.epochs == 7


# -- end to end (slow) --------------------------------------------------------------------------------------------
def _scratch_run(root: Path, out: Path) -> None:
    from facelab.engine import train

    cfg = load_config(overrides=[f"data.root={root}", f"out_dir={out}", "data.input_size=32", "data.batch_size=16",
                                 "model.backbone=mobilefacenet", "model.width=8", "model.embedding_dim=16",
                                 "optim.epochs=1", "data.cache_images=true", "data.split.open_identities=2",
                                 "threads=1"])
    train(cfg, quiet=True)


@pytest.mark.slow
def test_fine_tuning_a_run_starts_from_it_freezes_resumes_and_evaluates(small_faces: Path, tmp_path: Path) -> None:
    from facelab.engine import train
    from facelab.evaluation.protocol import evaluate
    from facelab.runs import load_checkpoint

    base = tmp_path / "base"
    _scratch_run(small_faces, base)
    init_state = load_checkpoint(base)["model"]
    # a folder with other identities: the head must be new
    other = tmp_path / "other"
    for ident in sorted(p.name for p in small_faces.iterdir())[:6]:
        shutil.copytree(small_faces / ident, other / ident)
    out = tmp_path / "ft"
    recipe = [f"data.root={other}", f"init.model={base}", "init.freeze_epochs=1", "init.distill=1.0", "optim.epochs=2",
              "data.batch_size=8", "loss.name=arcface", "data.split.open_identities=2", "threads=1"]
    cfg = load_config(overrides=[*recipe, f"out_dir={out}"])
    train(cfg, quiet=True, stop_after_epochs=1)
    after_frozen = load_checkpoint(out)
    assert after_frozen["config"]["model"]["backbone"] == "mobilefacenet"
    assert after_frozen["config"]["data"]["input_size"] == 32
    for k, v in init_state.items():  # the frozen epoch changed nothing in the backbone, BN statistics included
        assert torch.equal(after_frozen["model"][k], v), k
    assert after_frozen["loss"]["weight"].shape[0] == 4  # 6 identities, 2 held out
    targets = torch.load(out / "distill_targets.pt", weights_only=True)
    assert targets["targets"].shape == (len(after_frozen["manifest"]["train"]), 16)

    resumed = load_config(overrides=[f"out_dir={out}"])
    train(resumed, resume=True, quiet=True)
    done = load_checkpoint(out)
    assert done["epoch"] == 2
    moved = [k for k, v in init_state.items() if v.is_floating_point() and not torch.equal(done["model"][k], v)]
    assert moved and not any("running" in k for k in moved)  # conv weights moved, BN statistics did not
    # the kept model is the WiSE-FT mix of the trained weights with the init model's (init.interpolate)
    alpha = done["config"]["init"]["interpolate"]
    assert 0 < alpha < 1
    for k in moved:
        torch.testing.assert_close(done["model"][k], init_state[k] + alpha * (done["train_model"][k] - init_state[k]))
        torch.testing.assert_close(done["init_weights"][k], init_state[k], rtol=0, atol=0)
    # training resumed from the raw weights, not the kept mix: the same as two epochs in one go
    straight = tmp_path / "ft_straight"
    train(load_config(overrides=[*recipe, f"out_dir={straight}"]), quiet=True)
    whole = load_checkpoint(straight)
    for k in moved:
        torch.testing.assert_close(done["train_model"][k], whole["train_model"][k])
    metrics = evaluate(out, quiet=True)
    assert "open_set" in metrics and "closed_set" in metrics
