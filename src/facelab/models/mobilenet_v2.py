"""MobileNet v2 (Sandler et al., 2018): inverted residuals with ReLU6 and linear bottlenecks. ``width`` is the
width multiplier (64 = 1.0); as in the paper it does not shrink the final 1x1 convolution below 1280 channels."""

from __future__ import annotations

from torch import nn

from facelab.models.base import BACKBONES, Backbone, scaled
from facelab.models.blocks import ConvNormAct, InvertedResidual

# (expansion t, output channels c at width 64, repeats n, stride s of the first repeat): the paper's table 2
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
            (6, 320, 1, 1))


class MobileNetV2(Backbone):
    def __init__(self, width: int = 64, last_channels: int = 1280, **common: object) -> None:
        super().__init__(**common)  # type: ignore[arg-type]
        nf = self.norm_layer
        cin = scaled(32, width)
        layers: list[nn.Module] = [ConvNormAct(3, cin, 3, 2, norm=nf, act=nn.ReLU6)]
        for expansion, c, repeats, stride in SETTINGS:
            cout = scaled(c, width)
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expansion, nf, nn.ReLU6))
                cin = cout
        last = max(last_channels, scaled(last_channels, width))
        layers.append(ConvNormAct(cin, last, 1, norm=nf, act=nn.ReLU6))
        self._finish(nn.Sequential(*layers))


BACKBONES.register("mobilenet_v2")(MobileNetV2)
