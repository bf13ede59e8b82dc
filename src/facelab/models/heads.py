"""Kept for imports of the original layout; the heads live in :mod:`facelab.models.blocks.heads`."""

from facelab.models.blocks.heads import (  # noqa: F401
    HEADS,
    FlattenEmbedding,
    GDCEmbedding,
    MLPEmbedding,
    PoolEmbedding,
    build_head,
)
