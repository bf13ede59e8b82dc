"""Embedding distillation to a frozen reference model: what keeps a fine-tuned model good on everyone else.

``loss = mean_i (1 - cos(f(x_i), g(x_i)))`` where ``f`` is the model being trained and ``g`` the frozen original
(the "less-forget constraint" of Hou et al., "Learning a Unified Classifier Incrementally via Rebalancing", CVPR
2019, applied to face embeddings). It is 0 when the new embeddings point where the old ones did, whatever their
length, and at most 2. The targets ``g(x_i)`` are computed once per training image by the trainer (``init.distill``)
and passed as ``targets``; the loss has no parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from facelab.errors import FacelabError
from facelab.losses.base import FaceLoss, LossOutput, at_least_fp32, register_loss


class DistillLoss(FaceLoss):
    """``forward(embeddings (B, D), labels, targets (B, D))``: mean of ``1 - cos`` in float32 (float64 kept)."""

    #: the trainer passes the reference model's embeddings of the batch as ``targets``
    uses_targets = True

    def __init__(self, embedding_dim: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,  # type: ignore[override]
                targets: torch.Tensor | None = None) -> LossOutput:
        if targets is None:
            raise FacelabError("the distill loss needs the reference model's embeddings: fine-tune with --init MODEL "
                               "(init.distill sets its weight)")
        x = at_least_fp32(embeddings)
        t = targets.to(device=x.device, dtype=x.dtype)
        if t.shape != x.shape:
            raise FacelabError(f"distill targets have shape {tuple(t.shape)}, embeddings {tuple(x.shape)}: the init "
                               f"model's embedding size must match the model being trained")
        cos = F.cosine_similarity(x, t, dim=1, eps=1e-8)
        return LossOutput((1.0 - cos).mean(), None)


register_loss("distill", DistillLoss)
