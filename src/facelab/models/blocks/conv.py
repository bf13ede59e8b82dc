"""conv -> norm -> activation: the unit every backbone is built from."""

from __future__ import annotations

from torch import nn

from facelab.models.blocks.norm import NormFactory, batch_norm

Activation = type[nn.Module] | None


def make_act(act: Activation, channels: int) -> nn.Module:
    """PReLU learns one slope per channel, so it needs the channel count; other activations take none."""
    if act is None:
        return nn.Identity()
    return act(channels) if act is nn.PReLU else act()


class ConvNormAct(nn.Sequential):
    """conv (no bias: the norm has one) -> norm -> activation; ``act=None`` gives a linear block.

    ``padding`` defaults to "same" for odd kernels; LeNet-style valid convolutions pass ``padding=0``.
    """

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                 norm: NormFactory = batch_norm, act: Activation = nn.PReLU, padding: int | None = None) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2 if padding is None else padding, groups=groups,
                      bias=False),
            norm(cout),
        ]
        if act is not None:
            layers.append(make_act(act, cout))
        super().__init__(*layers)
