"""SFace's recogniser (Zhong et al., "SFace: Sigmoid-Constrained Hypersphere Loss for Robust Face Recognition",
IEEE TIP 2021; the network OpenCV Zoo ships as ``face_recognition_sface_2021dec``): MobileNet v1's thirteen
depthwise-separable blocks with PReLU, a stride-1 stem for 112x112 faces (a 7x7 last map) and the flatten
embedding head (BN -> dropout -> flatten -> linear -> BN1d, ArcFace's "E" output), 128-d.

It is built from the same blocks as every other backbone, so ``build_backbone`` rebuilds it from a ModelConfig
and the pretrained weights (``facelab pretrained get sface``) load into it by a plain ``load_state_dict``. The
BatchNorm epsilons are those the weights were trained with (1e-3 in the convolution stack, 2e-5 in the head, as the
ONNX graph records them); with torch's default 1e-5 the converted model would drift from the original.
"""

from __future__ import annotations

from torch import nn

from facelab.models.base import BACKBONES, Backbone, scaled
from facelab.models.blocks import ConvNormAct, DepthwiseSeparable, NormFactory
from facelab.models.mobilenet_v1 import BLOCKS


def _with_eps(norm: NormFactory, eps: float) -> NormFactory:
    """``norm`` with ``eps`` set on the BatchNorms it makes (other norms are left as they are)."""

    def make(channels: int) -> nn.Module:
        module = norm(channels)
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eps = eps
        return module

    return make


class SFaceNet(Backbone):
    """(B, 3, S, S) -> (B, embedding_dim); 112 is the size the pretrained weights were trained at."""

    min_input_size = 32
    default_head = "flatten"

    def __init__(self, width: int = 64, stem_stride: int = 1, bn_eps: float = 1e-3, head_eps: float = 2e-5,
                 **common: object) -> None:
        super().__init__(**common)  # type: ignore[arg-type]
        nf = _with_eps(self.norm_layer, bn_eps)
        cin = scaled(32, width)
        layers: list[nn.Module] = [ConvNormAct(3, cin, 3, stem_stride, norm=nf, act=nn.PReLU)]
        for c, stride in BLOCKS:
            cout = scaled(c, width)
            layers.append(DepthwiseSeparable(cin, cout, 3, stride, nf, nn.PReLU))
            cin = cout
        self.norm_layer = _with_eps(self.norm_layer, head_eps)  # the head's BN over the last map
        self._finish(nn.Sequential(*layers))
        for module in self.head.modules():
            if isinstance(module, nn.BatchNorm1d):
                module.eps = head_eps


BACKBONES.register("sface")(SFaceNet)
