"""Batch samplers chosen by ``data.sampler``. Metric losses need several images per identity in a batch.

``auto`` (the default) asks the loss: P x K batches (:class:`PKBatchSampler`) when it needs K >= 2 images of an
identity per batch (triplet, contrastive, centre and joint losses containing them), shuffled batches otherwise.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
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


#: the most images of one identity ``auto`` puts in a batch (Hermans et al. use K = 4)
AUTO_K = 4


def auto_pk_options(labels: Sequence[int], batch_size: int, images_per_identity: int) -> dict[str, int]:
    """``p`` and ``k`` for ``auto``: ``k`` = the smallest identity's image count capped to 4 (no identity repeats an
    image to fill its K) but at least the loss's need; ``p`` = ``batch_size // k`` identities, at most all of them.

    Raises:
        FacelabError: fewer than 2 identities to make a batch with a negative from.
    """
    counts = Counter(int(y) for y in labels)
    k = max(images_per_identity, min(AUTO_K, min(counts.values(), default=0)))
    p = min(max(2, batch_size // k), len(counts))
    if p < 2:
        raise FacelabError(f"P x K batches need at least 2 training identities, got {len(counts)}")
    return {"p": p, "k": k}


def build_batch_sampler(labels: Sequence[int], cfg: DataConfig, generator: torch.Generator,
                        images_per_identity: int = 1) -> Sampler[list[int]]:
    """The sampler ``cfg.sampler`` names; ``auto`` draws P x K batches when ``images_per_identity`` (the loss's K)
    is above 1 (options given in ``cfg.sampler_options`` win over the automatic ``p`` and ``k``), else shuffles."""
    if cfg.sampler == "auto":
        if images_per_identity <= 1:
            if cfg.sampler_options:
                raise FacelabError(f"data.sampler_options {sorted(cfg.sampler_options)} have no effect: sampler "
                                   f"'auto' shuffles for this loss (set data.sampler: pk to draw P x K batches)")
            cfg = dataclasses.replace(cfg, sampler="random")
        else:
            options = {**auto_pk_options(labels, cfg.batch_size, images_per_identity), **cfg.sampler_options}
            cfg = dataclasses.replace(cfg, sampler="pk", sampler_options=options)
    return SAMPLERS.build(cfg.sampler, labels=labels, cfg=cfg, generator=generator)
