"""Batched augmentation (data.pipeline: fast) against torchvision's functional ops on the same parameters, its
parameter draws against torchvision's get_params, and a training run that uses it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from facelab.config import load_config
from facelab.data.batch_augment import BatchAugment, BatchCollate, batchable
from facelab.data.transforms import eval_transform

S = 40


def _batch(n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, S, S, generator=g)


def test_resized_crop_and_flip_match_torchvision() -> None:
    x = _batch()
    box = BatchAugment.crop_params(len(x), S, S, (0.3, 1.0), (0.75, 1.33), torch.Generator().manual_seed(0))
    flip = torch.tensor([True, False, True, False, False, True])
    out = BatchAugment.resized_crop(x, box, flip)
    for i, (t, lf, h, w) in enumerate(box.tolist()):
        ref = TF.resized_crop(x[i], t, lf, h, w, [S, S], antialias=False)
        ref = TF.horizontal_flip(ref) if flip[i] else ref
        torch.testing.assert_close(out[i], ref, atol=2e-5, rtol=0)


def test_jitter_greyscale_and_erasing_match_torchvision() -> None:
    x = _batch()
    factors = torch.tensor([[0.8, 1.2, 0.9], [1.1, 0.7, 1.3], [1.0, 1.0, 0.0], [0.6, 1.4, 1.2], [1.2, 0.9, 0.8],
                            [0.9, 1.1, 1.0]], dtype=torch.float64)
    order = torch.tensor([[0, 1, 2], [2, 1, 0], [1, 0, 2], [2, 0, 1], [0, 2, 1], [1, 2, 0]])
    on = torch.tensor([True, True, True, True, False, True])
    out = BatchAugment.jitter(x, factors, order, on)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    for i in range(len(x)):
        ref = x[i]
        if on[i]:
            for k in order[i].tolist():
                ref = ops[k](ref, float(factors[i, k]))
        torch.testing.assert_close(out[i], ref, atol=1e-6, rtol=0)
    cfg = load_config(None, ["data.augment=[{name: grayscale, p: 1.0}, {name: random_erasing, p: 1.0}]"]).data
    aug = BatchAugment(cfg)
    params = aug.sample(len(x), S, S, torch.Generator().manual_seed(2))
    got = aug.apply(x.clone(), params)
    for i, (t, lf, h, w) in enumerate(params[1]["box"].tolist()):
        ref = TF.rgb_to_grayscale(x[i], num_output_channels=3)
        ref = TF.erase(ref, t, lf, h, w, torch.tensor(0.0))
        torch.testing.assert_close(got[i], ref, atol=1e-6, rtol=0)


def test_parameter_draws_follow_torchvision() -> None:
    g = torch.Generator().manual_seed(0)
    n = 4000
    ours = BatchAugment.crop_params(n, 112, 112, (0.5, 1.0), (0.75, 1.33), g).double()
    torch.manual_seed(0)
    theirs = torch.tensor([_tv_crop((0.5, 1.0), (0.75, 1.33)) for _ in range(n)]).double()
    for k in range(4):  # same distribution of top, left, height, width (means within 2 standard errors + rounding)
        se = (ours[:, k].std() ** 2 / n + theirs[:, k].std() ** 2 / n).sqrt()
        assert abs(ours[:, k].mean() - theirs[:, k].mean()) < 3 * se + 0.5, k
    area = ours[:, 2] * ours[:, 3] / 112**2
    assert area.min() >= 0.48 and area.max() <= 1.0
    # no crop of this ratio fits a square: torchvision's central fallback, exactly
    box = BatchAugment.crop_params(3, 60, 40, (0.9, 1.0), (3.0, 4.0), g)
    torch.manual_seed(0)
    ref = _tv_crop((0.9, 1.0), (3.0, 4.0), 60, 40)
    assert box.tolist() == [list(ref)] * 3
    # an erasing area that never fits: no erasing (torchvision returns the image as it is)
    erase = BatchAugment.erase_params(5, 20, 20, (0.99, 1.0), (1.0, 1.0), g)
    assert (erase[:, 2] == 0).all()
    flips = BatchAugment(load_config(None, ["data.augment=[hflip]"]).data).sample(n, 8, 8, g)[0]["on"]
    assert abs(flips.double().mean() - 0.5) < 0.03


def _tv_crop(scale: tuple[float, float], ratio: tuple[float, float], h: int = 112, w: int = 112) -> tuple:
    from torchvision.transforms import RandomResizedCrop

    return tuple(RandomResizedCrop.get_params(torch.zeros(3, h, w), list(scale), list(ratio)))


def test_batchable_and_the_whole_transform() -> None:
    assert batchable(load_config(None).data)  # the default crop, flip, jitter
    assert not batchable(load_config(None, ["data.augment=[hflip, randaugment]"]).data)
    assert not batchable(load_config(None, ["data.augment=[{name: color_jitter, hue: 0.1}]"]).data)
    none = load_config(None, ["data.crop_scale=[1.0, 1.0]", "data.hflip=false", "data.color_jitter=0"]).data
    u8 = (_batch() * 255).round().to(torch.uint8)
    torch.testing.assert_close(BatchAugment(none)(u8), torch.stack([eval_transform(none)(im) for im in u8]))
    collate = BatchCollate(BatchAugment(load_config(None).data))
    images, labels, index = collate([(u8[i], i % 2, i) for i in range(4)])
    assert images.shape == (4, 3, S, S) and images.dtype == torch.float32
    assert labels.tolist() == [0, 1, 0, 1] and index.tolist() == [0, 1, 2, 3]


def test_training_with_the_fast_pipeline(small_faces: Path, tmp_path: Path) -> None:
    from facelab.engine import train

    cfg = load_config(None, ["data.input_size=32", "data.batch_size=16", "model.width=8", "model.embedding_dim=16",
                             "loss.options.scale=16", "optim.epochs=1", "threads=1", "data.split.open_identities=2",
                             f"data.root={small_faces}", f"out_dir={tmp_path / 'r'}", "data.pipeline=fast"])
    result = train(cfg, quiet=True)
    assert len(result.history) == 1 and result.history[0]["loss"] > 0


@pytest.mark.parametrize("value", ["fastest", ""])
def test_pipeline_key_is_checked(value: str) -> None:
    from facelab.config import validate
    from facelab.errors import FacelabError

    with pytest.raises(FacelabError, match=r"data\.pipeline' must be exact or fast"):
        validate(load_config(None, [f"data.pipeline={value!r}"]))


def test_the_gate_decodes_jpeg_at_a_reduced_scale_only_as_far_as_the_hint_allows(tmp_path: Path) -> None:
    import io

    import numpy as np
    from PIL import Image

    from facelab.images import open_image

    yy, xx = np.mgrid[0:300, 0:200]  # 200 wide, 300 high, smooth
    smooth = np.stack([xx * 255 / 199, yy * 255 / 299, 128 + 100 * np.sin(xx / 15.0) * np.cos(yy / 20.0)],
                      -1).astype(np.uint8)
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    Image.fromarray(smooth).save(buf, "JPEG", quality=95, exif=exif)
    data = buf.getvalue()
    full, meta = open_image(data)
    assert (full.size, meta.scale) == ((300, 200), 1)  # turned on its side by the EXIF orientation
    for hint, size, scale in [(90, (150, 100), 2), (48, (75, 50), 4), (20, (38, 25), 8), (101, (300, 200), 1)]:
        im, m = open_image(data, size_hint=hint)
        assert (im.size, m.scale, m.orientation) == (size, scale, 6), hint
        assert min(im.size) >= hint
    # the reduced decode is the full decode shrunk: compare at the reduced size
    small, _ = open_image(data, size_hint=90)
    ref = np.asarray(full.resize(small.size, Image.BOX), dtype=np.float64)
    assert np.abs(np.asarray(small, dtype=np.float64) - ref).mean() < 3.0
    png = io.BytesIO()
    Image.fromarray(smooth).save(png, "PNG")
    assert open_image(png.getvalue(), size_hint=20)[1].scale == 1  # other formats decode at full size


def test_the_whole_batch_call_matches_torchvision_step_by_step() -> None:
    """The default recipe (crop + flip on uint8, then jitter and normalisation on floats) on 8 images, against
    torchvision's functional ops with the parameters the same generator draws."""
    cfg = load_config(None, ["data.input_size=40", "data.crop_scale=[0.5, 1.0]"]).data
    aug = BatchAugment(cfg)
    u8 = (_batch(8) * 255).round().to(torch.uint8)
    out = aug(u8, torch.Generator().manual_seed(5))
    crop, flip, jit = aug.sample(8, S, S, torch.Generator().manual_seed(5))
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    for i in range(8):
        t, lf, h, w = crop["box"][i].tolist()
        ref = TF.resized_crop(u8[i], t, lf, h, w, [S, S], antialias=True)
        ref = TF.horizontal_flip(ref) if flip["on"][i] else ref
        ref = ref.float() / 255
        if jit["on"][i]:
            for k in jit["order"][i].tolist():
                ref = ops[k](ref, float(jit["factors"][i, k]))
        ref = TF.normalize(ref, list(cfg.mean), list(cfg.std))
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0)
