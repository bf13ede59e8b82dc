"""LeNet-5 (LeCun et al., 1998) for RGB faces: C1 5x5 -> S2 pool -> C3 5x5 -> S4 pool -> C5 5x5 -> embedding.

S4 is an adaptive average pool to 5x5, so C5 sees exactly the 5x5 map it saw on 32x32 digits and collapses it to
1x1 at any input size; tanh as in the paper. The embedding layer takes the place of F6 and the output layer.
"""

from __future__ import annotations

from torch import nn

from facelab.models.base import BACKBONES, Backbone, scaled
from facelab.models.blocks import ConvNormAct


class LeNet5(Backbone):
    min_input_size = 32

    def __init__(self, width: int = 64, **common: object) -> None:
        super().__init__(**common)  # type: ignore[arg-type]
        c1, c3, c5 = (scaled(c, width, floor=4) for c in (6, 16, 120))

        def conv(cin: int, cout: int) -> ConvNormAct:
            return ConvNormAct(cin, cout, 5, norm=self.norm_layer, act=nn.Tanh, padding=0)

        self._finish(nn.Sequential(
            conv(3, c1), nn.AvgPool2d(2), conv(c1, c3), nn.AdaptiveAvgPool2d(5), conv(c3, c5),
        ))


BACKBONES.register("lenet5")(LeNet5)
