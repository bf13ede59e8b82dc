"""Models: backbones registered by name, each ending in a BatchNorm'd embedding head.

Importing this package registers every backbone module below; ``facelab models`` lists them with their costs.
"""

from facelab.models import (  # noqa: F401  (register backbones)
    alexnet,
    inception,
    lenet,
    mobilefacenet,
    mobilenet_v1,
    mobilenet_v2,
    resnet,
    sface,
    vgg,
)
from facelab.models.architecture import architecture_of, build_from_architecture
from facelab.models.base import BACKBONES, Backbone, build_backbone, count_parameters

__all__ = ["BACKBONES", "Backbone", "architecture_of", "build_backbone", "build_from_architecture",
           "count_parameters"]
