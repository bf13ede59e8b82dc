"""MobileFaceNet (Chen et al., 2018): inverted residuals with PReLU and a global depthwise (GDC) head, about 1M
parameters and 0.2 GMACs at 112x112 -- the backbone to pick for CPUs and phones."""

from __future__ import annotations

from torch import nn

from facelab.models.base import BACKBONES, Backbone, scaled
from facelab.models.blocks import ConvNormAct, DepthwiseConv, InvertedResidual

# (expansion, output channels at width 64, repeats, stride of the first repeat), as in the paper's table 1
SETTINGS = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


class MobileFaceNet(Backbone):
    min_input_size = 32
    default_head = "gdc"

    def __init__(self, width: int = 64, last_channels: int = 512, **common: object) -> None:
        super().__init__(**common)  # type: ignore[arg-type]
        nf = self.norm_layer
        stem = scaled(64, width)
        layers: list[nn.Module] = [ConvNormAct(3, stem, 3, 2, norm=nf), DepthwiseConv(stem, 3, 1, nf)]
        cin = stem
        for expansion, c, repeats, stride in SETTINGS:
            cout = scaled(c, width)
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expansion, nf))
                cin = cout
        layers.append(ConvNormAct(cin, last_channels, 1, norm=nf))
        self._finish(nn.Sequential(*layers))


BACKBONES.register("mobilefacenet")(MobileFaceNet)
