"""Configurable augmentation (data.augment): every step builds from YAML, does what it says, and bad steps are
one-line errors naming the key, before any data is read."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2

from facelab.config import load_config
from facelab.data.transforms import AUGMENTATIONS, augmentation_steps, train_transform
from facelab.errors import FacelabError


def _image(size: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g)


def test_every_step_builds_with_defaults_and_keeps_shape_and_dtype() -> None:
    x = _image()
    for name in AUGMENTATIONS.names():
        cfg = load_config(None, ["data.input_size=48", f"data.augment=[{name}]"])
        (step,) = augmentation_steps(cfg.data)
        y = step(x)
        assert y.dtype == torch.uint8 and y.shape == x.shape, name


def test_yaml_list_is_applied_in_order_and_replaces_the_default(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "data:\n  augment:\n    - {name: random_resized_crop, scale: [0.7, 1.0]}\n    - hflip\n"
        "    - {name: color_jitter, brightness: 0.3, p: 0.8}\n    - {name: grayscale, p: 0.1}\n"
        "    - {name: blur, kernel_size: 3, p: 0.2}\n    - {name: randaugment, num_ops: 2, magnitude: 9}\n"
        "    - {name: random_erasing, p: 0.25}\n")
    steps = augmentation_steps(load_config(tmp_path / "a.yaml").data)
    assert [type(s) for s in steps] == [v2.RandomResizedCrop, v2.RandomHorizontalFlip, v2.RandomApply,
                                        v2.RandomGrayscale, v2.RandomApply, v2.RandAugment, v2.RandomErasing]
    assert steps[0].scale == (0.7, 1.0)
    default = augmentation_steps(load_config(None).data)  # crop_scale, hflip, color_jitter
    assert [type(s) for s in default] == [v2.RandomResizedCrop, v2.RandomHorizontalFlip, v2.ColorJitter]
    full = train_transform(load_config(tmp_path / "a.yaml").data)
    assert full(_image(64)).dtype == torch.float32  # normalised after the steps


def test_steps_do_what_they_say() -> None:
    x = _image()

    def one(spec: str) -> v2.Transform:
        return augmentation_steps(load_config(None, ["data.input_size=48", f"data.augment=[{spec}]"]).data)[0]

    assert torch.equal(one("{name: hflip, p: 1.0}")(x), torch.flip(x, dims=[2]))
    grey = one("{name: grayscale, p: 1.0}")(x)
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    erased = one("{name: random_erasing, p: 1.0, scale: [0.1, 0.1], ratio: [1.0, 1.0]}")(x)
    changed = (erased != x).any(0)
    assert 0.05 < changed.float().mean() <= 0.11 and (erased[:, changed] == 0).all()
    assert torch.equal(one("{name: blur, p: 0.0}")(x), x)
    torch.manual_seed(3)
    a = one("{name: randaugment, num_ops: 2, magnitude: 9}")(x)
    torch.manual_seed(3)
    assert torch.equal(a, one("{name: randaugment, num_ops: 2, magnitude: 9}")(x))  # seeded: reproducible


@pytest.mark.parametrize(("spec", "message"), [
    ("[flip]", r"'data.augment\[0\]': unknown augmentation 'flip' \(did you mean 'hflip'\?\)"),
    ("[hflip, {name: blur, kernel_size: 4}]", r"'data.augment\[1\]' \(blur\): Kernel size value should be an odd"),
    ("[{name: hflip, q: 1}]", r"'data.augment\[0\]' \(hflip\): got an unexpected keyword argument 'q'"),
    ("[{name: color_jitter, p: 1.5}]", r"'data.augment\[0\]' \(color_jitter\): p must be a probability"),
    ("[{p: 0.5}]", r"'data.augment\[0\]' must be a step name or a mapping with 'name'"),
])
def test_bad_steps_are_one_line_errors_before_any_data_is_read(spec: str, message: str, tmp_path: Path) -> None:
    from facelab.engine import train

    cfg = load_config(None, [f"data.augment={spec}", f"data.root={tmp_path / 'nowhere'}", f"out_dir={tmp_path}"])
    with pytest.raises(FacelabError, match=message) as err:
        train(cfg, quiet=True)
    assert "\n" not in str(err.value)
