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
    nin,
    onnx_graph,
    resnet,
    sface,
    vgg,
)
from facelab.models.architecture import build_with_weights
from facelab.models.base import (
    ARCHITECTURES,
    BACKBONES,
    Backbone,
    build_backbone,
    build_from_architecture,
    count_parameters,
    inference_form,
)

__all__ = ["ARCHITECTURES", "BACKBONES", "Backbone", "build_backbone", "build_from_architecture", "build_with_weights",
           "count_parameters", "inference_form"]
