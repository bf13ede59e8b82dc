"""Per-epoch validation during training: closed-set accuracy and loss on the validation images, verification ROC AUC
on a labelled pair list, and the bookkeeping of the best epoch and early stopping.

The trainer sits below ``facelab.evaluation`` in the package layers, so a pair list is handed in already read
(:class:`ValidationPairs`, built by the caller with ``facelab.evaluation.pairs.read_pairs``), and the AUC is computed
here from its definition (below) rather than by the evaluation package.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from facelab.config import VALIDATION_METRICS
from facelab.data.transforms import base_transform
from facelab.errors import FacelabError
from facelab.images import ImageInput, read_image
from facelab.inference.embedder import FlipTTA


@dataclass
class ValidationPairs:
    """A labelled pair list: pair i is ``images[first[i]]`` vs ``images[second[i]]``, ``labels[i]`` True = same."""

    name: str
    images: list[ImageInput]
    first: np.ndarray
    second: np.ndarray
    labels: np.ndarray


#: ``reader(path, root or None, format or None) -> ValidationPairs``; facelab.api and the CLI pass
#: :func:`facelab.evaluation.pairs.validation_pairs`
PairReader = Callable[[str, str | None, str | None], ValidationPairs]


def roc_auc(scores: np.ndarray, same: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` (higher = more alike) for the labels ``same``: the Mann-Whitney
    statistic P(score of a matched pair > score of a mismatched pair) + 0.5 P(tie) (Hanley & McNeil 1982), from the
    average ranks of the scores, in float64.

    Raises:
        FacelabError: the labels hold only one class.
    """
    scores = np.asarray(scores, np.float64)
    same = np.asarray(same, bool)
    pos, neg = int(same.sum()), int((~same).sum())
    if pos == 0 or neg == 0:
        raise FacelabError("ROC AUC needs matched and mismatched pairs")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inverse]  # average 1-based rank of each tied group
    return float((ranks[same].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


class _Images(torch.utils.data.Dataset[torch.Tensor]):
    """Images at the model's input size (uint8), decoded through the gate (or ``reader`` for paths)."""

    def __init__(self, sources: Sequence[ImageInput], size: int,
                 reader: Callable[[Path], Image.Image] | None) -> None:
        self.sources, self.base, self.reader = list(sources), base_transform(size), reader

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> torch.Tensor:
        src = self.sources[i]
        if self.reader is not None and isinstance(src, str | Path):
            return self.base(self.reader(Path(src)))
        return self.base(read_image(src))


@torch.no_grad()
def embed(backbone: nn.Module, images: torch.utils.data.Dataset, normalize: Callable[[torch.Tensor], torch.Tensor],
          device: torch.device, batch_size: int, flip: bool, desc: str, progress: bool) -> torch.Tensor:
    """Backbone outputs (N, D) float32 on the CPU of every image of ``images`` (uint8 (3, H, W) each), in eval mode;
    with ``flip`` the mean of the image's and its mirror's outputs (:class:`facelab.inference.embedder.FlipTTA`)."""
    was_training = backbone.training
    backbone.eval()
    model = FlipTTA(backbone, flip)
    out = []
    try:
        for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", disable=not progress,
                          leave=False):
            batch = torch.stack([normalize(images[i]) for i in range(start, min(start + batch_size, len(images)))])
            out.append(model(batch.to(device)).float().cpu())
    finally:
        backbone.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


@dataclass
class BestTracker:
    """The best validated epoch so far and the validated epochs since (early stopping), saved in checkpoints."""

    metric: str
    patience: int = 0
    min_delta: float = 0.0
    value: float | None = None
    epoch: int = 0
    bad_epochs: int = 0
    stopped: bool = False
    history: list[float] = field(default_factory=list)

    @property
    def higher_is_better(self) -> bool:
        return VALIDATION_METRICS[self.metric]

    def update(self, epoch: int, value: float | None) -> bool:
        """Record ``epoch``'s value; True when it is the new best (by more than ``min_delta``)."""
        if value is None or not np.isfinite(value):
            improved = False
        elif self.value is None:
            improved = True
        else:
            gain = value - self.value if self.higher_is_better else self.value - value
            improved = gain > self.min_delta
        if improved:
            self.value, self.epoch, self.bad_epochs = float(value), epoch, 0  # type: ignore[arg-type]
        else:
            self.bad_epochs += 1
        if self.patience and self.bad_epochs >= self.patience:
            self.stopped = True
        return improved

    def state(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value, "epoch": self.epoch, "bad_epochs": self.bad_epochs,
                "stopped": self.stopped}

    def load(self, state: dict[str, Any] | None) -> None:
        if not state:
            return
        if state.get("metric") != self.metric:
            raise FacelabError(f"the checkpoint chose its best epoch by {state.get('metric')}, not {self.metric}")
        self.value, self.epoch = state.get("value"), int(state.get("epoch", 0))
        self.bad_epochs, self.stopped = int(state.get("bad_epochs", 0)), bool(state.get("stopped", False))


class Validator:
    """Scores the backbone (and the loss's class head) after an epoch; see the module docstring."""

    def __init__(self, root: Path, items: Sequence[tuple[str, int]], pairs: ValidationPairs | None, size: int,
                 normalize: Callable[[torch.Tensor], torch.Tensor], device: torch.device, batch_size: int,
                 flip: bool, reader: Callable[[Path], Image.Image] | None, cache: bool, progress: bool) -> None:
        self.items = list(items)
        self.labels = torch.tensor([y for _, y in self.items], dtype=torch.long)
        self.images: torch.utils.data.Dataset = _Images([root / p for p, _ in self.items], size, reader)
        self.pairs = pairs
        self.pair_images: torch.utils.data.Dataset | None = None
        if pairs is not None:
            self.pair_images = _Images(pairs.images, size, reader)
        if cache:  # decode once: every epoch embeds the same images
            self.images = _cached(self.images, "decode validation images", progress)
            if self.pair_images is not None:
                self.pair_images = _cached(self.pair_images, "decode validation pairs", progress)
        self.normalize, self.device = normalize, device
        self.batch_size, self.flip, self.progress = batch_size, flip, progress

    @torch.no_grad()
    def __call__(self, backbone: nn.Module, loss_fn: nn.Module | None) -> dict[str, float | None]:
        """``val_acc`` and ``val_loss`` (None without validation images or class scores) and ``val_auc`` (None
        without a pair list)."""
        out: dict[str, float | None] = {"val_acc": None, "val_loss": None, "val_auc": None}
        if self.items:
            emb = embed(backbone, self.images, self.normalize, self.device, self.batch_size, self.flip,
                        "validate", self.progress)
            if loss_fn is not None:
                was = loss_fn.training
                loss_fn.eval()
                try:
                    e, y = emb.to(self.device), self.labels.to(self.device)
                    logits = loss_fn.logits(e)
                    if logits is not None:
                        out["val_acc"] = float((logits.argmax(1) == y).float().mean())
                    value = float(loss_fn(e, y).loss)
                    out["val_loss"] = value if np.isfinite(value) else None
                finally:
                    loss_fn.train(was)
        if self.pairs is not None and self.pair_images is not None:
            emb = embed(backbone, self.pair_images, self.normalize, self.device, self.batch_size, self.flip,
                        "validate pairs", self.progress)
            emb = torch.nn.functional.normalize(emb.double(), dim=1)
            scores = (emb[self.pairs.first] * emb[self.pairs.second]).sum(1).numpy()
            out["val_auc"] = roc_auc(scores, self.pairs.labels)
        return out


class _Cached(torch.utils.data.Dataset[torch.Tensor]):
    def __init__(self, tensors: list[torch.Tensor]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.tensors[i]


def _cached(ds: torch.utils.data.Dataset, desc: str, progress: bool) -> _Cached:
    return _Cached([ds[i] for i in tqdm(range(len(ds)), desc=desc, unit="img", disable=not progress,  # type: ignore[arg-type]
                                        leave=False)])
