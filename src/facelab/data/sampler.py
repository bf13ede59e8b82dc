"""Batch samplers chosen by ``data.sampler``. Metric losses need several images per identity in a batch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from facelab.config import DataConfig
from facelab.errors import FacelabError
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


class PKBatchSampler(Sampler[list[int]]):
    """P identities x K images per batch, so every anchor has positives and negatives (Hermans et al., 2017).

    Identities are drawn from a stream of seeded permutations, so over an epoch each identity appears about equally
    often and never twice in one batch; an identity with fewer than K images contributes all of them plus draws with
    replacement. An epoch is ``len(labels) // (P * K)`` batches, i.e. about one pass over the images.
    """

    def __init__(self, labels: Sequence[int], p: int, k: int, generator: torch.Generator) -> None:
        self.by_identity: dict[int, list[int]] = {}
        for index, label in enumerate(labels):
            self.by_identity.setdefault(int(label), []).append(index)
        self.identities = sorted(self.by_identity)
        if p > len(self.identities):
            raise FacelabError(f"data.sampler_options.p={p} exceeds the {len(self.identities)} training identities")
        self.p, self.k, self.generator = p, k, generator
        self.num_batches = max(1, len(labels) // (p * k))

    def _images(self, identity: int) -> list[int]:
        images = self.by_identity[identity]
        order = [images[i] for i in torch.randperm(len(images), generator=self.generator).tolist()]
        if len(images) >= self.k:
            return order[: self.k]
        extra = torch.randint(len(images), (self.k - len(images),), generator=self.generator).tolist()
        return order + [images[i] for i in extra]

    def __iter__(self) -> Iterator[list[int]]:
        pool: list[int] = []
        for _ in range(self.num_batches):
            chosen: list[int] = []
            deferred: list[int] = []  # already in this batch: kept for the next one
            while len(chosen) < self.p:
                if not pool:
                    pool = [self.identities[i] for i in torch.randperm(len(self.identities),
                                                                       generator=self.generator).tolist()]
                identity = pool.pop(0)
                (deferred if identity in chosen else chosen).append(identity)
            pool = deferred + pool
            yield [index for identity in chosen for index in self._images(identity)]

    def __len__(self) -> int:
        return self.num_batches


PK_OPTIONS = ("p", "k")


@SAMPLERS.register("pk")
def _pk(labels: Sequence[int], cfg: DataConfig, generator: torch.Generator) -> Sampler[list[int]]:
    """Options ``p`` and ``k``; by default ``k = 4`` and ``p = data.batch_size // k``."""
    opts = cfg.sampler_options
    unknown = sorted(set(opts) - set(PK_OPTIONS))
    if unknown:
        raise FacelabError(f"unknown data.sampler_options {', '.join(unknown)} for sampler 'pk' (use p, k)")
    k = opts.get("k", 4)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise FacelabError(f"data.sampler_options.k must be an integer >= 1, got {k!r}")
    p = opts.get("p", cfg.batch_size // k)
    if isinstance(p, bool) or not isinstance(p, int) or p < 2:
        raise FacelabError(f"data.sampler_options.p must be an integer >= 2 (identities per batch), got {p!r}")
    return PKBatchSampler(labels, p, k, generator)


def build_batch_sampler(labels: Sequence[int], cfg: DataConfig, generator: torch.Generator) -> Sampler[list[int]]:
    return SAMPLERS.build(cfg.sampler, labels=labels, cfg=cfg, generator=generator)
