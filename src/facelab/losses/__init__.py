"""Losses: one call ``loss(embeddings, labels)`` for every loss, built by name from the registry."""

from facelab.losses import classification  # noqa: F401  (register losses)
from facelab.losses.base import LOSSES, FaceLoss, LossOutput, build_loss
from facelab.losses.classification import ArcFace, CosineClassifier, SoftmaxCE

__all__ = ["LOSSES", "ArcFace", "CosineClassifier", "FaceLoss", "LossOutput", "SoftmaxCE", "build_loss"]
