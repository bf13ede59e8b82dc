"""Kept for imports of the original layout; the blocks live in :mod:`facelab.models.blocks`."""

from facelab.models.blocks.conv import ConvNormAct  # noqa: F401
from facelab.models.blocks.norm import NORMS, NormFactory, norm_factory  # noqa: F401
