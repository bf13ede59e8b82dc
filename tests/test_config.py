from pathlib import Path

import pytest

from facelab.config import TrainConfig, from_dict, load_config, save_yaml, to_dict
from facelab.errors import FacelabError


def test_yaml_round_trip(tmp_path: Path) -> None:
    cfg = load_config(None, ["optim.epochs=7", "data.crop_scale=[0.7, 0.9]", "loss.options.margin=0.2"])
    assert cfg.optim.epochs == 7 and cfg.data.crop_scale == (0.7, 0.9) and cfg.loss.options == {"margin": 0.2}
    save_yaml(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg


def test_unknown_key_names_the_key_and_suggests(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("optim:\n  lerning_rate: 0.1\n")
    with pytest.raises(FacelabError, match=r"unknown config key 'optim.lerning_rate'"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(FacelabError, match=r"did you mean 'batch_size'"):
        load_config(None, ["data.batchsize=3"])


@pytest.mark.parametrize(("override", "fragment"), [
    ("optim.epochs=abc", "optim.epochs': expected an integer"),
    ("data.hflip=3", "data.hflip': expected true/false"),
    ("data.crop_scale=[0.5]", "expected 2 values"),
    ("optim=5", "expected a mapping"),
])
def test_wrong_types_are_errors(override: str, fragment: str) -> None:
    with pytest.raises(FacelabError, match=fragment):
        load_config(None, [override])


def test_yaml_scientific_string_is_a_float() -> None:
    assert from_dict(TrainConfig, {"optim": {"weight_decay": "5e-4"}}).optim.weight_decay == 5e-4


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(FacelabError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "broken.yaml").write_text("a: [1, 2\n")
    with pytest.raises(FacelabError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")


def test_to_dict_is_plain_data() -> None:
    d = to_dict(TrainConfig())
    assert isinstance(d["data"]["mean"], list) and isinstance(d["data"]["split"], dict)


IMPOSSIBLE = [
    ("optim.epochs=0", "optim.epochs"), ("optim.epochs=-3", "optim.epochs"), ("optim.lr=-0.1", "optim.lr"),
    ("optim.lr=0", "optim.lr"), ("optim.lr=.nan", "optim.lr"), ("optim.weight_decay=-1e-4", "optim.weight_decay"),
    ("optim.momentum=1.0", "optim.momentum"), ("optim.warmup_epochs=-1", "optim.warmup_epochs"),
    ("optim.grad_clip=-5", "optim.grad_clip"), ("optim.min_lr_ratio=2", "optim.min_lr_ratio"),
    ("optim.accumulate=0", "optim.accumulate"), ("optim.ema=1.0", "optim.ema"),
    ("model.dropout=1.0", "model.dropout"), ("model.dropout=-0.1", "model.dropout"),
    ("model.embedding_dim=0", "model.embedding_dim"), ("model.width=0", "model.width"),
    ("data.batch_size=0", "data.batch_size"), ("data.batch_size=1", "data.batch_size"),
    ("data.input_size=0", "data.input_size"), ("data.num_workers=-1", "data.num_workers"),
    ("data.crop_scale=[0.9, 0.5]", "data.crop_scale"), ("data.crop_scale=[0, 1]", "data.crop_scale"),
    ("data.color_jitter=-0.2", "data.color_jitter"), ("data.std=[0.5, 0, 0.5]", "data.std"),
    ("data.split.open_identities=-1", "data.split.open_identities"),
    ("data.split.closed_images_per_identity=-1", "data.split.closed_images_per_identity"),
    ("data.split.min_train_images=0", "data.split.min_train_images"),
    ("eval.batch_size=0", "eval.batch_size"), ("eval.far_targets=[0.1, 1.5]", "eval.far_targets"),
    ("train.checkpoint_every_steps=-1", "train.checkpoint_every_steps"), ("threads=-2", "threads"),
]


@pytest.mark.parametrize(("override", "key"), IMPOSSIBLE)
def test_impossible_values_are_one_line_errors_naming_the_key(override: str, key: str) -> None:
    from facelab.config import validate

    with pytest.raises(FacelabError) as info:
        validate(load_config(None, [override]))
    assert str(info.value).startswith(f"config key '{key}' ") and "\n" not in str(info.value)


def test_defaults_and_the_demo_config_are_valid() -> None:
    from facelab.config import validate
    from facelab.demo import demo_config_path

    validate(TrainConfig())
    validate(load_config(demo_config_path()))


def test_training_checks_the_config_before_reading_any_data(tmp_path: Path) -> None:
    from facelab.engine import train

    cfg = load_config(None, [f"data.root={tmp_path / 'nowhere'}", f"out_dir={tmp_path / 'run'}", "optim.lr=-1",
                             "threads=1"])
    with pytest.raises(FacelabError, match=r"config key 'optim\.lr' must be a positive number, got -1\.0"):
        train(cfg, quiet=True)
    cfg = load_config(None, [f"data.root={tmp_path / 'nowhere'}", f"out_dir={tmp_path / 'run'}", "threads=1",
                             "data.input_size=16"])
    with pytest.raises(FacelabError, match=r"config key 'data\.input_size' must be >= 32"):
        train(cfg, quiet=True)
    cfg = load_config(None, [f"data.root={tmp_path / 'nowhere'}", f"out_dir={tmp_path / 'run'}", "threads=1",
                             "loss.options.label_smoothing=1.5"])
    with pytest.raises(FacelabError, match=r"loss.options.label_smoothing must be in \[0, 1\), got 1.5"):
        train(cfg, quiet=True)
    assert not (tmp_path / "run").exists()
