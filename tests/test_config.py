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
