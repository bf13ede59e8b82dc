"""MobileFaceNet (Chen et al., 2018): depthwise-separable inverted residuals with a global depthwise (GDC) head,
about 1M parameters and 0.2 GMACs at 112x112 -- the backbone to pick for CPUs and phones."""

from __future__ import annotations

import torch
from torch import nn

from facelab.models.base import BACKBONES, Backbone
from facelab.models.heads import build_head
from facelab.models.layers import ConvNormAct, NormFactory, norm_factory

# (expansion, output channels at width 64, repeats, stride of the first repeat), as in the paper's table 1
SETTINGS = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear project, residual when shapes match (MobileNetV2)."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int, norm: NormFactory) -> None:
        super().__init__()
        hidden = cin * expansion
        self.use_residual = stride == 1 and cin == cout
        self.body = nn.Sequential(
            ConvNormAct(cin, hidden, 1, norm=norm),
            ConvNormAct(hidden, hidden, 3, stride, groups=hidden, norm=norm),
            ConvNormAct(hidden, cout, 1, norm=norm, act=None),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.use_residual else out


class MobileFaceNet(Backbone):
    def __init__(self, embedding_dim: int = 128, width: int = 64, dropout: float = 0.0, input_size: int = 112,
                 norm: str = "batch", head: str = "gdc", last_channels: int = 512) -> None:
        super().__init__()
        self.embedding_dim, self.input_size = embedding_dim, input_size
        nf = norm_factory(norm)

        def scale(c: int) -> int:
            return max(8, round(c * width / 64))

        stem = scale(64)
        layers: list[nn.Module] = [
            ConvNormAct(3, stem, 3, 2, norm=nf),
            ConvNormAct(stem, stem, 3, 1, groups=stem, norm=nf),
        ]
        cin = stem
        for expansion, c, repeats, stride in SETTINGS:
            cout = scale(c)
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expansion, nf))
                cin = cout
        layers.append(ConvNormAct(cin, last_channels, 1, norm=nf))
        self.features = nn.Sequential(*layers)
        channels, spatial = self.feature_shape(input_size)
        self.head = build_head(head, channels, spatial, embedding_dim, nf, dropout)


@BACKBONES.register("mobilefacenet")
def _build(**kwargs: object) -> MobileFaceNet:
    return MobileFaceNet(**kwargs)  # type: ignore[arg-type]
