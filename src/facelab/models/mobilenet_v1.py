"""MobileNet v1 (Howard et al., 2017): a 3x3 stem and thirteen depthwise-separable blocks; ``width`` plays the
role of the paper's width multiplier (64 = 1.0)."""

from __future__ import annotations

from torch import nn

from facelab.models.base import BACKBONES, Backbone, scaled
from facelab.models.blocks import ConvNormAct, DepthwiseSeparable

# (output channels at width 64, stride) of each depthwise-separable block, as in the paper's table 1
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *((512, 1),) * 5, (1024, 2), (1024, 1))


class MobileNetV1(Backbone):
    def __init__(self, width: int = 64, **common: object) -> None:
        super().__init__(**common)  # type: ignore[arg-type]
        cin = scaled(32, width)
        layers: list[nn.Module] = [ConvNormAct(3, cin, 3, 2, norm=self.norm_layer, act=nn.ReLU)]
        for c, stride in BLOCKS:
            cout = scaled(c, width)
            layers.append(DepthwiseSeparable(cin, cout, 3, stride, self.norm_layer, nn.ReLU))
            cin = cout
        self._finish(nn.Sequential(*layers))


BACKBONES.register("mobilenet_v1")(MobileNetV1)
