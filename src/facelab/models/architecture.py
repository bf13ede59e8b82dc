"""Rebuilding a backbone from its description and weights: the one function bundles, checkpoints and the
pretrained cache go through, for native backbones and ONNX-converted ones alike."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from facelab.config import ModelConfig, from_dict, to_dict
from facelab.errors import FacelabError
from facelab.models.base import build_backbone
from facelab.models.onnx_graph import ONNX_BACKBONE, graph_bytes_from_state, rebuild_onnx


def architecture_of(cfg: ModelConfig) -> dict[str, Any]:
    """The architecture dict stored with a model (bundle metadata, pretrained cache): the ModelConfig as a dict."""
    return to_dict(cfg)


def build_from_architecture(architecture: Mapping[str, Any], input_size: int,
                            state: Mapping[str, torch.Tensor]) -> nn.Module:
    """The backbone ``architecture`` describes with ``state`` loaded (strictly), in eval mode.

    ``architecture`` is a ModelConfig as a dict (``{"backbone": ..., "embedding_dim": ..., "width": ...,
    "dropout": ..., "options": {...}}``). Native backbones are built by ``build_backbone``; ``"backbone": "onnx"``
    is rebuilt from the ONNX graph its state carries (``onnx_graph``, see :mod:`facelab.models.onnx_graph`), with
    ``options.input_order`` (RGB/BGR).

    Raises:
        FacelabError: an unknown key or backbone, or weights that do not fit the architecture.
    """
    if not isinstance(architecture, Mapping):
        raise FacelabError(f"architecture must be a mapping, got {type(architecture).__name__}")
    cfg = from_dict(ModelConfig, dict(architecture), "architecture")
    if cfg.backbone == ONNX_BACKBONE:
        extra = set(cfg.options) - {"input_order"}
        if extra:
            raise FacelabError(f"architecture.options: unknown key(s) for an ONNX backbone: {', '.join(sorted(extra))}")
        model: nn.Module = rebuild_onnx(graph_bytes_from_state(state), cfg.embedding_dim, input_size,
                                        cfg.options.get("input_order", "RGB"), state)
    else:
        model = build_backbone(cfg, input_size)
        try:
            model.load_state_dict(dict(state))
        except RuntimeError as exc:
            raise FacelabError(f"weights do not fit backbone '{cfg.backbone}': "
                               f"{str(exc).strip().splitlines()[0]}") from None
    return model.eval()
