"""Face ResNets with the pre-activation "IR" residual block of ArcFace (Deng et al., 2019).

IR block: BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, plus a projected shortcut when the shape changes.
The stem keeps full resolution (stride 1) by default because face crops are small; ``stem_stride=2`` halves the
compute for low-budget runs. Depths follow InsightFace's iresnet: 18, 34, 50, 100.
"""

from __future__ import annotations

import torch
from torch import nn

from facelab.models.base import BACKBONES, Backbone
from facelab.models.heads import build_head
from facelab.models.layers import ConvNormAct, NormFactory, norm_factory

DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}


class IRBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: NormFactory) -> None:
        super().__init__()
        self.body = nn.Sequential(
            norm(cin),
            nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
            norm(cout),
            nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride, 1, bias=False),
            norm(cout),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class FaceResNet(Backbone):
    def __init__(self, depth: int, embedding_dim: int = 512, width: int = 64, dropout: float = 0.0,
                 input_size: int = 112, norm: str = "batch", stem_stride: int = 1, head: str = "flatten") -> None:
        super().__init__()
        self.embedding_dim, self.input_size = embedding_dim, input_size
        nf = norm_factory(norm)
        widths = [width, width * 2, width * 4, width * 8]
        layers: list[nn.Module] = [ConvNormAct(3, width, 3, stem_stride, norm=nf)]
        cin = width
        for cout, blocks in zip(widths, DEPTHS[depth], strict=True):
            for i in range(blocks):
                layers.append(IRBlock(cin, cout, 2 if i == 0 else 1, nf))
                cin = cout
        self.features = nn.Sequential(*layers)
        channels, spatial = self.feature_shape(input_size)
        self.head = build_head(head, channels, spatial, embedding_dim, nf, dropout)


def _register(depth: int) -> None:
    @BACKBONES.register(f"resnet{depth}")
    def _build(**kwargs: object) -> FaceResNet:
        return FaceResNet(depth, **kwargs)  # type: ignore[arg-type]


for _d in DEPTHS:
    _register(_d)
