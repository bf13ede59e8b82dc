"""Losses: one call ``loss(embeddings, labels)`` for every loss, built by name from the registry.

Registered names: softmax, normface (classification.py); sphereface, cosface, arcface, combined (margins.py);
triplet, contrastive, center (metric.py); joint (joint.py); partial_fc (partial_fc.py, sharded for torchrun);
distill (distill.py: 1 - cosine to a frozen reference model's embeddings, for fine-tuning).
"""

from facelab.losses.base import LOSSES, BatchNeeds, FaceLoss, LossOutput, build_loss
from facelab.losses.classification import CosineClassifier, SoftmaxCE, auto_scale
from facelab.losses.distill import DistillLoss
from facelab.losses.joint import JointLoss
from facelab.losses.margins import ArcFace, CombinedMargin, CosFace, SphereFace, angular_psi
from facelab.losses.metric import (
    DISTANCES,
    MINERS,
    CenterLoss,
    ContrastiveLoss,
    TripletLoss,
    mine_batch_all,
    mine_batch_hard,
    mine_semi_hard,
)
from facelab.losses.partial_fc import PartialFC

__all__ = [
    "DISTANCES",
    "LOSSES",
    "MINERS",
    "ArcFace",
    "BatchNeeds",
    "CenterLoss",
    "CombinedMargin",
    "ContrastiveLoss",
    "CosFace",
    "CosineClassifier",
    "DistillLoss",
    "FaceLoss",
    "JointLoss",
    "LossOutput",
    "PartialFC",
    "SoftmaxCE",
    "SphereFace",
    "TripletLoss",
    "angular_psi",
    "auto_scale",
    "build_loss",
    "mine_batch_all",
    "mine_batch_hard",
    "mine_semi_hard",
]
