"""Building blocks shared by the backbones, one module each, so every backbone is assembled from the same parts and
their costs can be checked against closed-form parameter formulas (tests/test_blocks.py)."""

from facelab.models.blocks.conv import ConvNormAct
from facelab.models.blocks.depthwise import DepthwiseConv
from facelab.models.blocks.dropblock import DropBlock, make_drop_block
from facelab.models.blocks.heads import HEADS, GDCEmbedding, GlobalDepthwiseConv, build_head
from facelab.models.blocks.inception import InceptionModule
from facelab.models.blocks.inverted_residual import InvertedResidual
from facelab.models.blocks.mlpconv import MLPConv
from facelab.models.blocks.norm import NORMS, NormFactory, norm_factory
from facelab.models.blocks.pointwise import PointwiseConv
from facelab.models.blocks.residual import RESIDUAL_BLOCKS, BasicBlock, Bottleneck, IRBlock
from facelab.models.blocks.separable import DepthwiseSeparable

__all__ = [
    "HEADS", "NORMS", "RESIDUAL_BLOCKS", "BasicBlock", "Bottleneck", "ConvNormAct", "DepthwiseConv",
    "DepthwiseSeparable", "DropBlock", "GDCEmbedding", "GlobalDepthwiseConv", "IRBlock", "InceptionModule",
    "InvertedResidual", "MLPConv", "NormFactory", "PointwiseConv", "build_head", "make_drop_block", "norm_factory",
]
