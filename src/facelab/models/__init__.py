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
    vgg,
)
from facelab.models.base import (
    ARCHITECTURES,
    BACKBONES,
    Backbone,
    build_backbone,
    build_from_architecture,
    count_parameters,
)

__all__ = ["ARCHITECTURES", "BACKBONES", "Backbone", "build_backbone", "build_from_architecture", "count_parameters"]
