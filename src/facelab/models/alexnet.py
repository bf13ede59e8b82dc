"""AlexNet (Krizhevsky et al., 2012), single-tower, with the paper's channel counts (96, 256, 384, 384, 256).

The local response normalisation of the paper is replaced by the selectable norm (batch by default); fc6 and fc7
(4096 units at width 64) form an ``mlp`` head in front of the embedding. The 11x11 stride-4 stem and three
max-pools leave a 1x1 map at 64x64 and 3x3 at 112x112.
"""

from __future__ import annotations

from torch import nn

from facelab.models.base import BACKBONES, Backbone, scaled
from facelab.models.blocks import ConvNormAct


class AlexNet(Backbone):
    default_head = "mlp"

    def __init__(self, width: int = 64, hidden: int = 4096, **common: object) -> None:
        super().__init__(**common)  # type: ignore[arg-type]
        c1, c2, c3, c4, c5 = (scaled(c, width) for c in (96, 256, 384, 384, 256))

        def conv(cin: int, cout: int, kernel: int, stride: int = 1, padding: int | None = None) -> ConvNormAct:
            return ConvNormAct(cin, cout, kernel, stride, norm=self.norm_layer, act=nn.ReLU, padding=padding)

        def pool() -> nn.Module:
            return nn.MaxPool2d(3, 2)

        self._finish(nn.Sequential(
            conv(3, c1, 11, 4, padding=2), pool(),
            conv(c1, c2, 5), pool(),
            conv(c2, c3, 3), conv(c3, c4, 3), conv(c4, c5, 3), pool(),
        ), hidden=(scaled(hidden, width),) * 2)


BACKBONES.register("alexnet")(AlexNet)
