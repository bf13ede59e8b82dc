"""Face ResNets (ArcFace / InsightFace iresnet layout) with a choice of residual block.

The default block is the pre-activation "IR" block; ``block: basic`` or ``block: bottleneck`` give the classic
He et al. blocks for comparison. The stem keeps full resolution (stride 1) by default because face crops are small;
``stem_stride=2`` quarters the compute for low-budget runs. Depths follow iresnet: 18, 34, 50, 100 (all made of
two-convolution blocks, as InsightFace does; with ``block: bottleneck`` they become three-convolution blocks).
"""

from __future__ import annotations

from functools import partial

from torch import nn

from facelab.models.base import BACKBONES, Backbone
from facelab.models.blocks import RESIDUAL_BLOCKS, ConvNormAct

DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}


class FaceResNet(Backbone):
    min_input_size = 32
    default_head = "flatten"

    def __init__(self, depth: int, width: int = 64, stem_stride: int = 1, block: str = "ir",
                 **common: object) -> None:
        super().__init__(**common)  # type: ignore[arg-type]
        nf = self.norm_layer
        make_block = RESIDUAL_BLOCKS.get(block)
        layers: list[nn.Module] = [ConvNormAct(3, width, 3, stem_stride, norm=nf)]
        cin = width
        for stage, blocks in enumerate(DEPTHS[depth]):
            for i in range(blocks):
                unit = make_block(cin, width * 2**stage, 2 if i == 0 else 1, nf)
                layers.append(unit)
                cin = width * 2**stage * unit.expansion
        self._finish(nn.Sequential(*layers))


for _depth in DEPTHS:
    BACKBONES.register(f"resnet{_depth}")(partial(FaceResNet, _depth))
