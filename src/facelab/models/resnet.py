"""Face ResNets (ArcFace / InsightFace iresnet layout) with a choice of residual block.

The default block is the pre-activation "IR" block; ``block: basic`` or ``block: bottleneck`` give the classic
He et al. blocks for comparison. The stem keeps full resolution (stride 1) by default because face crops are small;
``stem_stride=2`` quarters the compute for low-budget runs.

Stage depths: 18, 34, 50 and 100 follow InsightFace's iresnet; 101 and 152 take the stage counts of He et al.'s
ResNet-101/152, (3, 4, 23, 3) and (3, 8, 36, 3) (table 1 of the paper; face.evoLVe's IR-152 uses the same counts).
All are built of two-convolution IR blocks by default, as InsightFace does, so for these two the name is the depth
of the paper's bottleneck network, not of the IR one (resnet101 is 33 IR blocks = 68 weighted layers, resnet152 50
IR blocks = 102). With ``block: bottleneck`` (three convolutions a block) resnet101 and resnet152 have exactly the
paper's residual stages, on the face stem.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from facelab.models.base import BACKBONES, Backbone
from facelab.models.blocks import RESIDUAL_BLOCKS, ConvNormAct

DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 101: (3, 4, 23, 3),
          152: (3, 8, 36, 3)}


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
