"""The backbone registry and the contract every backbone keeps.

A backbone is ``features`` (a conv stack) + an optional DropBlock on its last map + an embedding ``head``. Options
common to all of them (``norm``, ``head``, ``dropout``, ``drop_block``, ``drop_block_size``) are handled here once;
each backbone module only describes its feature stack.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from facelab.config import ModelConfig
from facelab.errors import FacelabError
from facelab.models.blocks.dropblock import make_drop_block
from facelab.models.blocks.heads import build_head
from facelab.models.blocks.norm import NormFactory, norm_factory
from facelab.registry import Registry

#: name -> ``fn(embedding_dim, width, dropout, input_size, **options) -> Backbone``
BACKBONES: Registry[nn.Module] = Registry("backbone")

MIN_INPUT = 32


def scaled(channels: int, width: int, floor: int = 8) -> int:
    """Channels of a paper's layer at ``width`` (64 = the paper's network), never below ``floor``."""
    return max(floor, round(channels * width / 64))


class Backbone(nn.Module):
    """Image batch (B, 3, H, W) -> embedding (B, embedding_dim).

    Subclasses call ``super().__init__(**common)``, build their feature stack with ``self.norm_layer`` and hand it to
    ``self._finish``. ``min_input_size`` is the smallest input side a backbone accepts: 64 (the promise every
    backbone keeps) unless it is known to work on smaller faces.
    """

    embedding_dim: int
    input_size: int
    features: nn.Module
    head: nn.Module
    #: (channels, side) of the last feature map at ``input_size``
    feature_map: tuple[int, int]
    #: registered name of the embedding head in use
    head_kind: str
    min_input_size: int = 64
    default_head: str = "gap"
    #: weight of each auxiliary head's loss in training (GoogLeNet's auxiliary classifiers); 0 = none
    aux_weight: float = 0.0

    def __init__(self, embedding_dim: int = 512, input_size: int = 112, dropout: float = 0.0, norm: str = "batch",
                 head: str | None = None, drop_block: float = 0.0, drop_block_size: int = 3) -> None:
        super().__init__()
        if input_size < self.min_input_size:
            raise FacelabError(f"{type(self).__name__} needs input_size >= {self.min_input_size}, got {input_size}")
        if not 0.0 <= drop_block < 1.0:
            raise FacelabError(f"model.options.drop_block must be in [0, 1), got {drop_block}")
        if drop_block_size < 1 or drop_block_size % 2 == 0:
            raise FacelabError(f"model.options.drop_block_size must be odd and positive, got {drop_block_size}")
        self.embedding_dim, self.input_size = embedding_dim, input_size
        self.norm_layer: NormFactory = norm_factory(norm)
        self.head_kind, self._dropout = head or self.default_head, dropout
        self._drop_block = (drop_block, drop_block_size)

    def _finish(self, features: nn.Module, **head_options: object) -> None:
        """Attach ``features``, the DropBlock and a head sized by a dry run (so no backbone computes shapes by hand)."""
        self.features = features
        self.drop_block = make_drop_block(*self._drop_block)
        channels, spatial = self.feature_map = self.feature_shape(self.input_size)
        self.head = build_head(self.head_kind, channels, spatial, self.embedding_dim, self.norm_layer,
                               self._dropout, **head_options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop_block(self.features(x)))

    def take_auxiliary(self) -> list[torch.Tensor]:
        """Embeddings (B, embedding_dim) of the auxiliary heads from the last training-mode forward, handed over
        once (a second call returns []); [] for backbones without auxiliary heads and after an eval-mode forward.
        The trainer scores each with the training loss and adds ``aux_weight`` x that loss to the main loss."""
        aux: list[torch.Tensor] = self.__dict__.pop("_aux", [])
        return aux

    def for_inference(self, architecture: dict[str, Any]) -> tuple[Backbone, dict[str, Any]]:
        """This backbone and its architecture dict without training-only parts (auxiliary heads), for inference,
        bundles and export: ``self`` unchanged for backbones that have none."""
        return self, architecture

    def feature_shape(self, input_size: int) -> tuple[int, int]:
        """(channels, spatial side) of ``features`` for a square input; found by a dry run, not by hand."""
        was = self.features.training
        self.features.eval()
        with torch.no_grad():
            out = self.features(torch.zeros(1, 3, input_size, input_size))
        self.features.train(was)
        return out.shape[1], out.shape[-1]


def build_backbone(cfg: ModelConfig, input_size: int) -> Backbone:
    if input_size < MIN_INPUT:
        raise FacelabError(f"data.input_size={input_size} is too small; backbones need at least {MIN_INPUT}")
    try:
        return BACKBONES.build(cfg.backbone, embedding_dim=cfg.embedding_dim, width=cfg.width,
                               dropout=cfg.dropout, input_size=input_size, **cfg.options)
    except TypeError as exc:
        raise FacelabError(f"bad model.options for backbone '{cfg.backbone}': {exc}") from None


def inference_form(module: nn.Module, architecture: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """``module`` and its architecture dict as deployed: a :class:`Backbone`'s training-only parts (auxiliary heads)
    dropped (see :meth:`Backbone.for_inference`); any other module unchanged. ``module`` itself is not modified."""
    if isinstance(module, Backbone):
        return module.for_inference(architecture)
    return module, architecture


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


#: architecture kinds that are not registered backbones: name -> ``fn(architecture, input_size, state) -> module``
#: (e.g. an ONNX graph converted at load time)
ARCHITECTURES: Registry[nn.Module] = Registry("architecture kind")


def build_from_architecture(architecture: dict[str, object], input_size: int,
                            state: object = None) -> nn.Module:
    """Rebuild the module an architecture dict describes (a bundle's ``architecture``): a registered backbone from
    its :class:`ModelConfig` fields, or a special kind from :data:`ARCHITECTURES` (which may need the weights
    ``state``). Raises FacelabError for unknown names or options."""
    from facelab.config import from_dict

    name = architecture.get("backbone")
    if isinstance(name, str) and name in ARCHITECTURES:
        return ARCHITECTURES.get(name)(architecture=architecture, input_size=input_size, state=state)
    return build_backbone(from_dict(ModelConfig, architecture, "architecture"), input_size)
