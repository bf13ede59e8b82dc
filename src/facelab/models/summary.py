"""Cost accounting for ``facelab models``: parameters and multiply-accumulates (MACs) counted on the real modules.

MACs are counted by forward hooks on every ``Conv2d`` and ``Linear`` for one image: a convolution costs
(output elements) x (input channels per group) x K_h x K_w, a linear layer (output elements) x (input features).
Norms, activations, pooling and additions are not counted, which is the usual convention and exactly what
``torch.utils.flop_counter.FlopCounterMode`` reports as FLOPs = 2 x MACs (tests/test_models.py checks this).
Models are built on the ``meta`` device, so listing a 65M-parameter network allocates and computes nothing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from facelab.config import ModelConfig
from facelab.errors import FacelabError
from facelab.models.base import BACKBONES, Backbone, build_backbone, count_parameters
from facelab.models.blocks import ConvNormAct, DepthwiseConv, DepthwiseSeparable, PointwiseConv, norm_factory


def _conv_macs(module: nn.Conv2d, out: torch.Tensor) -> int:
    per_output = (module.in_channels // module.groups) * math.prod(module.kernel_size)
    return out[0].numel() * per_output


def _linear_macs(module: nn.Linear, out: torch.Tensor) -> int:
    return out[0].numel() * module.in_features


#: module type -> MACs of one sample given the module and its batched output
MAC_RULES = {nn.Conv2d: _conv_macs, nn.Linear: _linear_macs}


def count_macs(model: nn.Module, input_size: int, channels: int = 3) -> int:
    """MACs for one ``channels x input_size x input_size`` image, in eval mode, on the model's own device."""
    total = 0

    def hook(module: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
        nonlocal total
        rule = next(fn for kind, fn in MAC_RULES.items() if isinstance(module, kind))
        total += rule(module, out)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, tuple(MAC_RULES))]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, channels, input_size, input_size, device=device))
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return total


@dataclass
class ModelCost:
    name: str
    params: int
    macs: int
    embedding_dim: int
    input_size: int
    feature_map: str
    head: str


def backbone_cost(name: str, input_size: int = 112, embedding_dim: int = 512, width: int = 64,
                  options: dict | None = None) -> ModelCost:
    cfg = ModelConfig(backbone=name, embedding_dim=embedding_dim, width=width, options=dict(options or {}))
    with torch.device("meta"):
        model: Backbone = build_backbone(cfg, input_size)
    channels, spatial = model.feature_map
    return ModelCost(name, count_parameters(model), count_macs(model, input_size), embedding_dim, input_size,
                     f"{channels}x{spatial}x{spatial}", model.head_kind)


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def backbone_names() -> list[str]:
    """Registered names in natural order (resnet18 before resnet100)."""
    return sorted(BACKBONES.names(), key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)])


def models_table(input_size: int = 112, embedding_dim: int = 512, width: int = 64,
                 options: dict | None = None) -> str:
    """One row per registered backbone; a backbone that cannot take the input size says so in its row."""
    header = f"{'backbone':<14} {'params':>9} {'MACs':>9} {'last map':>12} {'head':>8}"
    lines = [f"backbones at {input_size}x{input_size}, width {width}, embedding {embedding_dim} "
             "(MACs: conv + linear multiply-accumulates per image)", header, "-" * len(header)]
    errors = []
    for name in backbone_names():
        try:
            r = backbone_cost(name, input_size, embedding_dim, width, options)
        except FacelabError as exc:
            errors.append(exc)
            lines.append(f"{name:<14} {exc}")
            continue
        lines.append(f"{r.name:<14} {_human(r.params):>9} {_human(r.macs):>9} {r.feature_map:>12} {r.head:>8}")
    if len(errors) == len(BACKBONES.names()):  # a bad option, not a size some backbones cannot take
        raise errors[0]
    return "\n".join(lines)


@dataclass(frozen=True)
class ConvCost:
    """One row of ``facelab models --conv``: a layer's weights and MACs, counted on the real block, with the
    closed-form formula and its value."""

    name: str
    formula: str
    formula_params: int
    params: int
    macs: int


@dataclass
class ConvComparison:
    """A standard K x K convolution M -> N against its depthwise (M*K^2), pointwise (N*M) and depthwise-separable
    (M*K^2 + N*M; MobileNet v1, Howard et al. 2017, section 3.1) replacements on an ``hw x hw`` map."""

    cin: int
    cout: int
    kernel: int
    hw: int
    stride: int
    out_hw: int
    rows: list[ConvCost]

    def row(self, name: str) -> ConvCost:
        return next(r for r in self.rows if r.name == name)

    @property
    def standard_params(self) -> int:
        return self.row("standard").params

    @property
    def separable_params(self) -> int:
        return self.row("depthwise-separable").params

    @property
    def standard_macs(self) -> int:
        return self.row("standard").macs

    @property
    def separable_macs(self) -> int:
        return self.row("depthwise-separable").macs


CONV_KEYS = {"in": "cin", "out": "cout", "k": "kernel", "hw": "hw", "s": "stride"}
CONV_OPTIONAL = {"s"}


def parse_conv_spec(items: list[str]) -> dict[str, int]:
    """``["in=3", "out=256", "k=5", "hw=8"]`` (and optionally ``s=2``) -> keyword arguments of :func:`compare_conv`."""
    spec: dict[str, int] = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in CONV_KEYS or not value.isdigit() or int(value) < 1:
            raise FacelabError(f"--conv takes in=N out=N k=N hw=N [s=N] with positive integers, got '{item}'")
        spec[CONV_KEYS[key]] = int(value)
    missing = [k for k, v in CONV_KEYS.items() if v not in spec and k not in CONV_OPTIONAL]
    if missing:
        raise FacelabError(f"--conv is missing {', '.join(f'{k}=N' for k in missing)}")
    return spec


def compare_conv(cin: int, cout: int, kernel: int, hw: int, stride: int = 1) -> ConvComparison:
    """Standard, depthwise, pointwise and depthwise-separable convolution, each built from the real blocks (no
    norm, no activation, no bias, "same" padding K // 2) and measured with :func:`count_parameters` and
    :func:`count_macs` on an ``hw x hw`` map. The stride applies to the spatial convolutions (standard,
    depthwise, and the separable block's depthwise half); the pointwise row is the separable block's second half,
    so it runs on the strided map. MACs = weights x output positions (out_hw^2, out_hw = (hw + 2*(K//2) - K) //
    stride + 1) for each.

    Raises:
        FacelabError: an even kernel (no symmetric "same" padding).
    """
    if kernel % 2 == 0:
        raise FacelabError(f"--conv k={kernel}: use an odd kernel so 'same' padding keeps the map at {hw}x{hw}")
    out_hw = (hw + 2 * (kernel // 2) - kernel) // stride + 1
    none = norm_factory("none")
    m, n, k = cin, cout, kernel
    blocks = (
        ("standard", f"N*M*K^2 = {n * m * k * k}", n * m * k * k, ConvNormAct(m, n, k, stride, norm=none, act=None),
         hw),
        ("depthwise", f"M*K^2 = {m * k * k}", m * k * k, DepthwiseConv(m, k, stride, norm=none, act=None), hw),
        ("pointwise", f"N*M = {n * m}", n * m, PointwiseConv(m, n, norm=none, act=None), out_hw),
        ("depthwise-separable", f"M*K^2 + N*M = {m * k * k + n * m}", m * k * k + n * m,
         DepthwiseSeparable(m, n, k, stride, norm=none, act=None), hw),
    )
    rows = [ConvCost(name, formula, value, count_parameters(block), count_macs(block, side, m))
            for name, formula, value, block, side in blocks]
    return ConvComparison(m, n, k, hw, stride, out_hw, rows)


def conv_table(c: ConvComparison) -> str:
    m, n, k, hw = c.cin, c.cout, c.kernel, c.hw
    lines = [f"convolution M={m} -> N={n}, K={k}, stride {c.stride}, on a {hw}x{hw} map -> {c.out_hw}x{c.out_hw} "
             "(no bias, no norm)",
             f"{'':<20} {'formula':>28} {'params':>10} {'MACs':>12}"]
    lines += [f"{r.name:<20} {r.formula:>28} {r.params:>10} {r.macs:>12}" for r in c.rows]
    lines.append(f"separable / standard: {c.separable_params / c.standard_params:.4f} "
                 f"(1/N + 1/K^2 = {1 / n + 1 / (k * k):.4f}); MACs = params x {c.out_hw}x{c.out_hw}")
    return "\n".join(lines)
