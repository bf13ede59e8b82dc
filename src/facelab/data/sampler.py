"""Batch samplers chosen by ``data.sampler``. Metric losses need several images per identity in a batch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from facelab.config import DataConfig
from facelab.registry import Registry

#: name -> ``fn(labels, cfg, generator) -> Sampler[list[int]]`` yielding batches of indices
SAMPLERS: Registry[Sampler[list[int]]] = Registry("sampler")


class RandomBatchSampler(Sampler[list[int]]):
    """Shuffle everything, cut into full batches (the last partial batch is dropped: BatchNorm needs > 1)."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.generator = n, batch_size, generator

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.n, generator=self.generator).tolist()
        for i in range(len(self)):
            yield order[i * self.batch_size : (i + 1) * self.batch_size]

    def __len__(self) -> int:
        return self.n // self.batch_size


@SAMPLERS.register("random")
def _random(labels: Sequence[int], cfg: DataConfig, generator: torch.Generator) -> Sampler[list[int]]:
    return RandomBatchSampler(len(labels), min(cfg.batch_size, len(labels)), generator)


def build_batch_sampler(labels: Sequence[int], cfg: DataConfig, generator: torch.Generator) -> Sampler[list[int]]:
    return SAMPLERS.build(cfg.sampler, labels=labels, cfg=cfg, generator=generator)
