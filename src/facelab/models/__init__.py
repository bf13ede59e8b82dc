"""Models: backbones registered by name, each ending in a BatchNorm'd embedding head."""

from facelab.models import mobilefacenet, resnet  # noqa: F401  (register backbones)
from facelab.models.base import BACKBONES, Backbone, build_backbone, count_parameters

__all__ = ["BACKBONES", "Backbone", "build_backbone", "count_parameters"]
