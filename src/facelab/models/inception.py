"""GoogLeNet-style Inception network (Szegedy et al., 2015): the paper's stem and nine Inception modules
(3a-5b) with its branch widths, global average pooling and dropout before the embedding.

``inception`` has no auxiliary classifiers. ``inception_aux`` adds the paper's two (on the outputs of 4a and 4d):
average pooling to 4x4 (the paper's 5x5/3 pool gives 4x4 on its 14x14 maps; an adaptive pool gives 4x4 at any
input size), a 1x1 convolution to 128 channels, a 1024-unit fully connected layer with 70% dropout, and here an
embedding layer (linear + BatchNorm1d, like the main head) instead of the 1000-way softmax. In training each
auxiliary embedding is scored by the same training loss as the main one (so a classification loss's class weights
turn it into logits) and adds ``aux_weight`` (model.options, default 0.3 as in the paper) x its loss. In eval mode
the auxiliary heads do not run, and :meth:`Inception.for_inference` drops them from bundles and exports: the deployed
model is a plain ``inception``. ``naive: true`` swaps in the naive module without 1x1 reductions, to see what they
save: far more parameters and MACs for the same depth.
"""

from __future__ import annotations

import copy
from functools import partial
from typing import Any

import torch
from torch import nn

from facelab.errors import FacelabError
from facelab.models.base import BACKBONES, Backbone, scaled
from facelab.models.blocks import ConvNormAct, InceptionModule
from facelab.models.blocks.heads import MLPEmbedding
from facelab.models.blocks.norm import NormFactory

# (n1, r3, n3, r5, n5, pool_proj) at width 64 for 3a, 3b | 4a-4e | 5a, 5b; a 3x3/2 max-pool precedes each group
GROUPS = (
    ((64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64)),
    ((192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64),
     (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128)),
    ((256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)),
)
#: (group, module) of the modules whose outputs feed the auxiliary classifiers: 4a and 4d
AUX_TAPS = ((1, 0), (1, 3))


def auxiliary_head(cin: int, dim: int, width: int, norm: NormFactory) -> nn.Module:
    """GoogLeNet's auxiliary classifier as an embedding head: pool to 4x4 -> 1x1 conv 128 -> fc 1024 (dropout 0.7)
    -> linear -> BatchNorm1d; (B, cin, H, W) -> (B, dim)."""
    mid = scaled(128, width)
    return nn.Sequential(nn.AdaptiveAvgPool2d(4), ConvNormAct(cin, mid, 1, norm=norm, act=nn.ReLU),
                         MLPEmbedding(mid, 4, dim, dropout=0.7, hidden=(scaled(1024, width),)))


class Inception(Backbone):
    def __init__(self, width: int = 64, naive: bool = False, aux_weight: float = 0.0, **common: object) -> None:
        super().__init__(**common)  # type: ignore[arg-type]
        if not 0.0 <= aux_weight < float("inf"):
            raise FacelabError(f"model.options.aux_weight must be >= 0, got {aux_weight}")
        nf = self.norm_layer

        def pool() -> nn.Module:
            return nn.MaxPool2d(3, 2, ceil_mode=True)

        c1, c2, c3 = scaled(64, width), scaled(64, width), scaled(192, width)
        layers: list[nn.Module] = [
            ConvNormAct(3, c1, 7, 2, norm=nf, act=nn.ReLU), pool(),
            ConvNormAct(c1, c2, 1, norm=nf, act=nn.ReLU), ConvNormAct(c2, c3, 3, norm=nf, act=nn.ReLU),
        ]
        cin = c3
        heads: dict[str, nn.Module] = {}
        for g, group in enumerate(GROUPS):
            layers.append(pool())
            for m, widths in enumerate(group):
                module = InceptionModule(cin, *(scaled(c, width) for c in widths), norm=nf, naive=naive)
                layers.append(module)
                cin = module.out_channels
                if aux_weight > 0 and (g, m) in AUX_TAPS:
                    heads[str(len(layers) - 1)] = auxiliary_head(cin, self.embedding_dim, width, nf)
        self.aux_weight = float(aux_weight)
        #: feature-layer index (as a string) -> auxiliary head on that layer's output; None without them
        self.aux_heads = nn.ModuleDict(heads) if heads else None
        self._finish(nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.aux_heads is None or not self.training:
            return super().forward(x)
        aux = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if str(i) in self.aux_heads:
                aux.append(self.aux_heads[str(i)](x))
        self._aux = aux
        return self.head(self.drop_block(x))

    def for_inference(self, architecture: dict[str, Any]) -> tuple[Backbone, dict[str, Any]]:
        """Without auxiliary heads: a copy whose weights are this model's minus ``aux_heads.*``, and the
        architecture of a plain ``inception`` with the same other options."""
        if self.aux_heads is None:
            return self, architecture
        plain = copy.deepcopy(self)
        plain.aux_heads, plain.aux_weight = None, 0.0
        plain.__dict__.pop("_aux", None)
        options = {k: v for k, v in dict(architecture.get("options") or {}).items() if k != "aux_weight"}
        return plain, {**architecture, "backbone": "inception", "options": options}


BACKBONES.register("inception")(Inception)
BACKBONES.register("inception_aux")(partial(Inception, aux_weight=0.3))
