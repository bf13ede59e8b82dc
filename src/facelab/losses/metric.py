"""Metric losses on the batch's own embeddings: triplet (with mining), contrastive, and centre loss.

They have no class scores (``logits`` is None), so evaluation classifies the closed set by nearest class centre.
Each declares ``batch_needs``: triplet and contrastive losses need P >= 2 identities x K >= 2 images per batch, centre
loss K >= 2 (a centre learns compactness only from several images of its class); the default sampler (``auto``)
then draws P x K batches. A batch that offers nothing to learn from (one identity, no positive pair) gives an exact 0
that still backpropagates, rather than NaN from an empty mean, and reports ``terms=0`` so the trainer can stop a run
whose every batch is like that.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from facelab.config import OptimConfig
from facelab.losses.base import (
    BatchNeeds,
    FaceLoss,
    LossOutput,
    at_least_fp32,
    check_option,
    register_loss,
    zero_loss,
)
from facelab.registry import Registry

Distance = Callable[[torch.Tensor, bool], torch.Tensor]
Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

#: name -> ``fn(x, normalize) -> (B, B)`` pairwise distances (larger = less alike)
DISTANCES: Registry[torch.Tensor] = Registry("distance")
#: name -> ``fn(dist, labels, margin) -> (anchors, positives, negatives)`` index tensors
MINERS: Registry[Triplets] = Registry("triplet mining")
#: name -> ``fn(per_item_losses) -> scalar``
REDUCTIONS: Registry[torch.Tensor] = Registry("reduction")


@DISTANCES.register("cosine")
def cosine_distance(x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """``1 - cos``, in [0, 2]; always on unit vectors (``normalize`` is implied)."""
    x = F.normalize(x, dim=1)
    return 1.0 - x @ x.t()


@DISTANCES.register("squared_l2")
def squared_l2_distance(x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """``||a - b||^2`` from explicit differences: exact zeros on the diagonal and no sqrt whose gradient blows up at 0.

    With ``normalize`` (FaceNet's unit hypersphere) this is ``2 * (1 - cos)``.
    """
    if normalize:
        x = F.normalize(x, dim=1)
    return (x[:, None, :] - x[None, :, :]).pow(2).sum(-1)


def pair_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive pairs: same identity, not the same image; negative pairs: different identities), both (B, B)."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def _valid_triplets(labels: torch.Tensor) -> torch.Tensor:
    pos, neg = pair_masks(labels)
    return pos[:, :, None] & neg[:, None, :]


@MINERS.register("batch_all")
def mine_batch_all(dist: torch.Tensor, labels: torch.Tensor, margin: float) -> Triplets:
    """Every (anchor, positive, negative) of the batch (Hermans et al., 2017)."""
    a, p, n = torch.nonzero(_valid_triplets(labels), as_tuple=True)
    return a, p, n


@MINERS.register("semi_hard")
def mine_semi_hard(dist: torch.Tensor, labels: torch.Tensor, margin: float) -> Triplets:
    """Triplets whose negative is farther than the positive but still inside the margin (FaceNet, Schroff et al.).

    Harder negatives (closer than the positive) are skipped: early in training they are often mislabelled or
    collapse the embedding.
    """
    d_ap, d_an = dist[:, :, None], dist[:, None, :]
    mask = _valid_triplets(labels) & (d_an > d_ap) & (d_an < d_ap + margin)
    a, p, n = torch.nonzero(mask, as_tuple=True)
    return a, p, n


@MINERS.register("batch_hard")
def mine_batch_hard(dist: torch.Tensor, labels: torch.Tensor, margin: float) -> Triplets:
    """One triplet per anchor: its farthest positive and its closest negative (Hermans et al., 2017)."""
    pos, neg = pair_masks(labels)
    anchors = torch.nonzero(pos.any(1) & neg.any(1), as_tuple=True)[0]
    far = torch.finfo(dist.dtype).max
    hardest_pos = dist.masked_fill(~pos, -far).argmax(1)
    hardest_neg = dist.masked_fill(~neg, far).argmin(1)
    return anchors, hardest_pos[anchors], hardest_neg[anchors]


@REDUCTIONS.register("mean")
def reduce_mean(losses: torch.Tensor) -> torch.Tensor:
    return losses.mean()


@REDUCTIONS.register("mean_nonzero")
def reduce_mean_nonzero(losses: torch.Tensor) -> torch.Tensor:
    """Mean over the terms that still violate their margin: easy terms (exact 0) would otherwise dilute the signal
    as training succeeds (Hermans et al., 2017)."""
    return losses.sum() / (losses > 0).sum().clamp_min(1)


class PairwiseLoss(FaceLoss):
    """Shared set-up of the losses that compare batch embeddings with each other: distance and reduction by name."""

    batch_needs = BatchNeeds(identities=2, images_per_identity=2)

    def __init__(self, distance: str = "cosine", normalize: bool = True, reduction: str = "mean_nonzero") -> None:
        super().__init__()
        check_option(distance in DISTANCES, "distance", f"must be one of {', '.join(DISTANCES)}", distance)
        check_option(reduction in REDUCTIONS, "reduction", f"must be one of {', '.join(REDUCTIONS)}", reduction)
        self.distance_name, self.distance = distance, DISTANCES.get(distance)
        self.reduction_name, self.reduce = reduction, REDUCTIONS.get(reduction)
        self.normalize = bool(normalize)

    def pairwise(self, embeddings: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return self.distance(at_least_fp32(embeddings), self.normalize)

    def reduced(self, losses: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return self.reduce(losses) if losses.numel() else zero_loss(embeddings)


class TripletLoss(PairwiseLoss):
    """``relu(d(a, p) - d(a, n) + margin)`` over the triplets chosen by ``mining`` (batch_all, batch_hard, semi_hard).

    Mining looks at detached distances; the loss is then taken on the chosen triplets with gradients.
    ``last_triplets`` records how many were mined in the latest call (0: the batch had none, the loss is 0).
    """

    def __init__(self, embedding_dim: int, num_classes: int, margin: float = 0.2, mining: str = "batch_hard",
                 distance: str = "cosine", normalize: bool = True, reduction: str = "mean_nonzero") -> None:
        super().__init__(distance, normalize, reduction)
        check_option(margin >= 0, "margin", "must be >= 0", margin)
        check_option(mining in MINERS, "mining", f"must be one of {', '.join(MINERS)}", mining)
        self.margin = float(margin)
        self.mining_name, self.mine = mining, MINERS.get(mining)
        self.last_triplets = 0

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        labels = labels.long()
        dist = self.pairwise(embeddings)
        a, p, n = self.mine(dist.detach(), labels, self.margin)
        self.last_triplets = int(a.numel())
        losses = F.relu(dist[a, p] - dist[a, n] + self.margin)
        pos, neg = pair_masks(labels)
        anchors = int((pos.any(1) & neg.any(1)).sum())  # anchors with a positive and a negative, whatever the mining
        return LossOutput(self.reduced(losses, embeddings), terms=anchors)


class ContrastiveLoss(PairwiseLoss):
    """Siamese contrastive loss (Hadsell et al., 2006) over every pair in the batch, hinge form:
    positive pairs cost ``relu(d - pos_margin)``, negative pairs ``relu(margin - d)``.

    The two halves are reduced separately and added, so the many negative pairs of a batch do not drown the few
    positive ones. A batch without positive (or negative) pairs contributes 0 for that half.
    """

    def __init__(self, embedding_dim: int, num_classes: int, margin: float = 0.5, pos_margin: float = 0.0,
                 distance: str = "cosine", normalize: bool = True, reduction: str = "mean_nonzero") -> None:
        super().__init__(distance, normalize, reduction)
        check_option(pos_margin >= 0, "pos_margin", "must be >= 0", pos_margin)
        check_option(margin > pos_margin, "margin", f"(for negative pairs) must exceed pos_margin ({pos_margin})",
                     margin)
        self.margin, self.pos_margin = float(margin), float(pos_margin)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        labels = labels.long()
        dist = self.pairwise(embeddings)
        pos, neg = pair_masks(labels)
        upper = torch.ones_like(pos).triu(1)  # each unordered pair once
        loss = (self.reduced(F.relu(dist[pos & upper] - self.pos_margin), embeddings)
                + self.reduced(F.relu(self.margin - dist[neg & upper]), embeddings))
        return LossOutput(loss, terms=int((pos & upper).sum()))


class CenterLoss(FaceLoss):
    """Centre loss (Wen et al., 2016): ``0.5 * mean_i ||x_i - c_{y_i}||^2`` with one learned centre per class.

    It only pulls features together, so alone it collapses; use it in ``joint`` beside softmax. The centres are in
    their own optimizer group with learning rate ``center_lr`` (the paper's alpha plays this role) and no weight
    decay; as with every group, the trainer's warmup/cosine schedule multiplies that rate.
    """

    batch_needs = BatchNeeds(identities=1, images_per_identity=2)

    def __init__(self, embedding_dim: int, num_classes: int, center_lr: float | None = None,
                 normalize: bool = False) -> None:
        super().__init__()
        check_option(center_lr is None or center_lr > 0, "center_lr", "must be positive (or null: the base lr)",
                     center_lr)
        self.num_classes = num_classes
        self.center_lr = center_lr
        self.normalize = bool(normalize)
        self.centers = nn.Parameter(torch.zeros(num_classes, embedding_dim))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            x = at_least_fp32(embeddings)
            if self.normalize:
                x = F.normalize(x, dim=1)
            centers = self.centers.to(x.dtype)[labels.long()]
            loss = 0.5 * (x - centers).pow(2).sum(1).mean()
        return LossOutput(loss)

    def optimizer_groups(self, cfg: OptimConfig) -> list[dict]:
        lr = cfg.lr if self.center_lr is None else self.center_lr
        return [{"params": [self.centers], "name": "centers", "lr": lr, "weight_decay": 0.0}]


register_loss("triplet", TripletLoss)
register_loss("contrastive", ContrastiveLoss)
register_loss("center", CenterLoss)
