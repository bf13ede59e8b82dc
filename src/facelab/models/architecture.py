"""A backbone rebuilt with its weights: :func:`facelab.models.base.build_from_architecture` (native backbones from
their ModelConfig, special kinds such as ``"onnx"`` from :data:`~facelab.models.base.ARCHITECTURES`) followed by a
strict ``load_state_dict``, with the one-line errors every caller wants (checkpoints, the pretrained cache)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from facelab.errors import FacelabError
from facelab.models.base import build_from_architecture


def build_with_weights(architecture: Mapping[str, Any], input_size: int,
                       state: Mapping[str, torch.Tensor]) -> nn.Module:
    """The backbone ``architecture`` (a ModelConfig as a dict) describes with ``state`` loaded strictly, eval mode.

    Raises:
        FacelabError: an unknown backbone or option, or weights that do not fit it.
    """
    if not isinstance(architecture, Mapping):
        raise FacelabError(f"architecture must be a mapping, got {type(architecture).__name__}")
    model = build_from_architecture(dict(architecture), input_size, state)
    try:
        model.load_state_dict(dict(state))
    except RuntimeError as exc:
        raise FacelabError(f"weights do not fit backbone '{architecture.get('backbone')}': "
                           f"{str(exc).strip().splitlines()[0]}") from None
    return model.eval()
