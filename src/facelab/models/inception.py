"""GoogLeNet-style Inception network (Szegedy et al., 2015): the paper's stem and nine Inception modules
(3a-5b) with its branch widths, global average pooling and dropout before the embedding.

The auxiliary classifiers are left out (they only help optimisation of the 1000-class ImageNet model, and a face
embedding has no class head inside the backbone). ``naive: true`` swaps in the naive module without 1x1
reductions, to see what they save: far more parameters and MACs for the same depth.
"""

from __future__ import annotations

from torch import nn

from facelab.models.base import BACKBONES, Backbone, scaled
from facelab.models.blocks import ConvNormAct, InceptionModule

# (n1, r3, n3, r5, n5, pool_proj) at width 64 for 3a, 3b | 4a-4e | 5a, 5b; a 3x3/2 max-pool precedes each group
GROUPS = (
    ((64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64)),
    ((192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64),
     (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128)),
    ((256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)),
)


class Inception(Backbone):
    def __init__(self, width: int = 64, naive: bool = False, **common: object) -> None:
        super().__init__(**common)  # type: ignore[arg-type]
        nf = self.norm_layer

        def pool() -> nn.Module:
            return nn.MaxPool2d(3, 2, ceil_mode=True)

        c1, c2, c3 = scaled(64, width), scaled(64, width), scaled(192, width)
        layers: list[nn.Module] = [
            ConvNormAct(3, c1, 7, 2, norm=nf, act=nn.ReLU), pool(),
            ConvNormAct(c1, c2, 1, norm=nf, act=nn.ReLU), ConvNormAct(c2, c3, 3, norm=nf, act=nn.ReLU),
        ]
        cin = c3
        for group in GROUPS:
            layers.append(pool())
            for widths in group:
                module = InceptionModule(cin, *(scaled(c, width) for c in widths), norm=nf, naive=naive)
                layers.append(module)
                cin = module.out_channels
        self._finish(nn.Sequential(*layers))


BACKBONES.register("inception")(Inception)
