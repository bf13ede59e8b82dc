"""VGG (Simonyan & Zisserman, 2015): 3x3 convolutions in five pooled stages, then fc6/fc7 (4096 units at width 64)
as an ``mlp`` head. ``vgg16`` is configuration D (thirteen convolutions), ``vgg19`` configuration E (sixteen: the
last three stages have four convolutions each). Norm after every convolution (batch by default, i.e. the
"vgg16_bn"/"vgg19_bn" variants) because the plain network does not train from scratch at the demo's learning rate."""

from __future__ import annotations

from functools import partial

from torch import nn

from facelab.models.base import BACKBONES, Backbone, scaled
from facelab.models.blocks import ConvNormAct

#: channels at width 64 per stage (the paper's table 1); each stage ends in a 2x2 max-pool
CONFIGS = {
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


class VGG(Backbone):
    min_input_size = 32
    default_head = "mlp"

    def __init__(self, depth: int, width: int = 64, hidden: int = 4096, **common: object) -> None:
        super().__init__(**common)  # type: ignore[arg-type]
        layers: list[nn.Module] = []
        cin = 3
        for stage in CONFIGS[depth]:
            for c in stage:
                cout = scaled(c, width)
                layers.append(ConvNormAct(cin, cout, 3, norm=self.norm_layer, act=nn.ReLU))
                cin = cout
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        self._finish(nn.Sequential(*layers), hidden=(scaled(hidden, width),) * 2)


for _depth in CONFIGS:
    BACKBONES.register(f"vgg{_depth}")(partial(VGG, _depth))
