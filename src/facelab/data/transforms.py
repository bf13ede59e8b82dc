"""Train/eval transforms (torchvision v2). Images are first resized to a square ``input_size`` so mixed-size folders
batch cleanly (:func:`base_transform`, cacheable); training then augments them.

Augmentation is either the light default (``data.crop_scale``, ``data.hflip``, ``data.color_jitter``) or, when
``data.augment`` is given, exactly the steps it lists, in order, each a name from :data:`AUGMENTATIONS` with its
options (torchvision.transforms.v2 underneath), e.g. in YAML::

    data:
      augment:
        - {name: random_resized_crop, scale: [0.8, 1.0]}
        - hflip
        - {name: color_jitter, brightness: 0.3, contrast: 0.3, saturation: 0.3, p: 0.8}
        - {name: grayscale, p: 0.1}
        - {name: blur, kernel_size: 5, sigma: [0.1, 1.5], p: 0.2}
        - {name: randaugment, num_ops: 2, magnitude: 9}
        - {name: random_erasing, p: 0.25}

Every step works on the uint8 (3, S, S) image before it is scaled to [0, 1] and normalised, so ``random_erasing``
fills with black (``value: 0``) unless told otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torchvision.transforms import v2

from facelab.config import DataConfig
from facelab.errors import FacelabError
from facelab.registry import Registry


def base_transform(size: int) -> v2.Compose:
    """Decoded PIL image -> uint8 tensor at the model's input size (cacheable: no randomness)."""
    return v2.Compose([v2.ToImage(), v2.Resize((size, size), antialias=True)])


def _normalize(cfg: DataConfig) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(cfg.mean), list(cfg.std))]


#: augmentation name -> ``builder(size, **options) -> v2.Transform`` (``size``: the square input side)
AUGMENTATIONS: Registry[v2.Transform] = Registry("augmentation")


def _pair(value: Any, what: str) -> tuple[float, float]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (float(value), float(value))
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int | float) for v in value):
        return (float(value[0]), float(value[1]))
    raise FacelabError(f"{what} must be a number or [low, high], got {value!r}")


def _maybe(transform: v2.Transform, p: float) -> v2.Transform:
    if not (isinstance(p, int | float) and 0 <= p <= 1):
        raise FacelabError(f"p must be a probability in [0, 1], got {p!r}")
    return transform if p >= 1.0 else v2.RandomApply([transform], p=p)


@AUGMENTATIONS.register("random_resized_crop")
def _crop(size: int, scale: Any = (0.85, 1.0), ratio: Any = (0.9, 1.1)) -> v2.Transform:
    """A random crop of ``scale`` of the area and ``ratio`` aspect, resized back to the input size."""
    return v2.RandomResizedCrop((size, size), scale=_pair(scale, "scale"), ratio=_pair(ratio, "ratio"),
                                antialias=True)


@AUGMENTATIONS.register("hflip")
def _hflip(size: int, p: float = 0.5) -> v2.Transform:
    """Mirror left-right with probability ``p``."""
    return v2.RandomHorizontalFlip(p=p)


@AUGMENTATIONS.register("color_jitter")
def _jitter(size: int, brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2, hue: float = 0.0,
            p: float = 1.0) -> v2.Transform:
    """Random brightness, contrast, saturation (factors in [1 - x, 1 + x]) and hue (in [-x, x], x <= 0.5)."""
    return _maybe(v2.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue), p)


@AUGMENTATIONS.register("grayscale")
def _grey(size: int, p: float = 0.1) -> v2.Transform:
    """Greyscale (kept as 3 channels) with probability ``p``."""
    return v2.RandomGrayscale(p=p)


@AUGMENTATIONS.register("blur")
def _blur(size: int, kernel_size: int = 5, sigma: Any = (0.1, 2.0), p: float = 0.2) -> v2.Transform:
    """Gaussian blur (odd ``kernel_size``, ``sigma`` drawn from [low, high]) with probability ``p``."""
    return _maybe(v2.GaussianBlur(kernel_size, sigma=_pair(sigma, "sigma")), p)


@AUGMENTATIONS.register("random_erasing")
def _erase(size: int, p: float = 0.25, scale: Any = (0.02, 0.2), ratio: Any = (0.3, 3.3),
           value: float = 0) -> v2.Transform:
    """Erase a random rectangle (``scale`` of the area, ``ratio`` aspect) to ``value`` (Zhong et al. 2020)."""
    return v2.RandomErasing(p=p, scale=_pair(scale, "scale"), ratio=_pair(ratio, "ratio"), value=value)


@AUGMENTATIONS.register("randaugment")
def _randaug(size: int, num_ops: int = 2, magnitude: int = 9) -> v2.Transform:
    """RandAugment (Cubuk et al. 2020): ``num_ops`` random operations at ``magnitude`` (0-30)."""
    return v2.RandAugment(num_ops=num_ops, magnitude=magnitude)


def augmentation_steps(cfg: DataConfig) -> list[v2.Transform]:
    """The augmentation ``cfg`` asks for (module docstring), before normalisation.

    Raises:
        FacelabError: an unknown step name or option, or a value torchvision refuses, naming ``data.augment[i]``.
    """
    size = cfg.input_size
    if not cfg.augment:
        steps: list[v2.Transform] = []
        lo, hi = cfg.crop_scale
        if lo < 1.0 or hi < 1.0:
            steps.append(_crop(size, (lo, hi)))
        if cfg.hflip:
            steps.append(_hflip(size))
        if cfg.color_jitter > 0:
            j = cfg.color_jitter
            steps.append(_jitter(size, j, j, j))
        return steps
    steps = []
    for i, entry in enumerate(cfg.augment):
        where = f"data.augment[{i}]"
        if isinstance(entry, str):
            name, options = entry, {}
        elif isinstance(entry, dict) and isinstance(entry.get("name"), str):
            name, options = entry["name"], {k: v for k, v in entry.items() if k != "name"}
        else:
            raise FacelabError(f"config key '{where}' must be a step name or a mapping with 'name', got {entry!r}")
        try:
            builder: Callable[..., v2.Transform] = AUGMENTATIONS.get(name)
        except FacelabError as exc:
            raise FacelabError(f"config key '{where}': {exc}") from None
        try:
            steps.append(builder(size, **options))
        except TypeError as exc:
            raise FacelabError(f"config key '{where}' ({name}): {exc}".replace(f"{builder.__name__}() ", "")) \
                from None
        except (ValueError, FacelabError) as exc:
            raise FacelabError(f"config key '{where}' ({name}): {exc}") from None
    return steps


def train_transform(cfg: DataConfig) -> v2.Compose:
    """Applied on top of :func:`base_transform`'s output: the augmentation, then scaling and normalisation."""
    return v2.Compose(augmentation_steps(cfg) + _normalize(cfg))


def eval_transform(cfg: DataConfig) -> v2.Compose:
    """Applied on top of :func:`base_transform`'s output."""
    return v2.Compose(_normalize(cfg))
