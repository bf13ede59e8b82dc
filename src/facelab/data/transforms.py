"""Train/eval transforms (torchvision v2). Images are first resized to a square ``input_size`` so mixed-size folders
batch cleanly; training then adds light crop, flip and colour augmentation."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from facelab.config import DataConfig


def base_transform(size: int) -> v2.Compose:
    """Decoded PIL image -> uint8 tensor at the model's input size (cacheable: no randomness)."""
    return v2.Compose([v2.ToImage(), v2.Resize((size, size), antialias=True)])


def _normalize(cfg: DataConfig) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(cfg.mean), list(cfg.std))]


def train_transform(cfg: DataConfig) -> v2.Compose:
    """Applied on top of :func:`base_transform`'s output."""
    size = cfg.input_size
    steps: list[v2.Transform] = []
    lo, hi = cfg.crop_scale
    if lo < 1.0 or hi < 1.0:
        steps.append(v2.RandomResizedCrop((size, size), scale=(lo, hi), ratio=(0.9, 1.1), antialias=True))
    if cfg.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if cfg.color_jitter > 0:
        j = cfg.color_jitter
        steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j))
    return v2.Compose(steps + _normalize(cfg))


def eval_transform(cfg: DataConfig) -> v2.Compose:
    """Applied on top of :func:`base_transform`'s output."""
    return v2.Compose(_normalize(cfg))
