"""Network in Network (Lin, Chen & Yan, ICLR 2014), the ImageNet model of the paper's supplementary: four mlpconv
layers (:class:`~facelab.models.blocks.MLPConv`: a K x K convolution and two 1x1 convolutions, i.e. a small MLP at
every pixel) with 96 (11x11/4), 256 (5x5), 384 (3x3) and 1024 (3x3) channels at width 64, a 3x3/2 max-pool after
each of the first three, and global average pooling instead of fully connected layers. The paper's last mlpconv
ends in one map per class; here it ends in 1024 maps and the ``gap`` head turns their averages into the embedding.
"""

from __future__ import annotations

from torch import nn

from facelab.models.base import BACKBONES, Backbone, scaled
from facelab.models.blocks import MLPConv

#: (channels at width 64, kernel, stride) of the four mlpconv layers
LAYERS = ((96, 11, 4), (256, 5, 1), (384, 3, 1), (1024, 3, 1))


class NetworkInNetwork(Backbone):
    default_head = "gap"

    def __init__(self, width: int = 64, **common: object) -> None:
        super().__init__(**common)  # type: ignore[arg-type]
        layers: list[nn.Module] = []
        cin = 3
        for i, (c, kernel, stride) in enumerate(LAYERS):
            cout = scaled(c, width)
            layers.append(MLPConv(cin, cout, kernel, stride, norm=self.norm_layer, act=nn.ReLU))
            if i < len(LAYERS) - 1:
                layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
            cin = cout
        self._finish(nn.Sequential(*layers))


BACKBONES.register("nin")(NetworkInNetwork)
