"""From a cleaned ONNX graph to facelab weights.

``native``: the graph's parametrised layers, in the graph's order, are matched one to one with a native backbone's
layers in module order (Conv <-> Conv2d, BatchNormalization <-> BatchNorm, PRelu <-> PReLU, Gemm <-> Linear), every
shape and BatchNorm epsilon checked, every weight of the backbone assigned exactly once. The result is an ordinary
facelab backbone that ``build_backbone`` rebuilds from its ModelConfig.

``onnx2torch``: any graph onnx2torch converts becomes an :class:`~facelab.models.onnx_graph.OnnxBackbone`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from facelab.config import ModelConfig, from_dict
from facelab.errors import FacelabError
from facelab.models import build_backbone
from facelab.models.onnx_graph import ONNX_BACKBONE, convert_onnx
from facelab.registry import Registry

#: ONNX op -> the torch layer types it maps onto
LAYER_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
    "Conv": (nn.Conv2d,),
    "BatchNormalization": (nn.modules.batchnorm._BatchNorm,),
    "PRelu": (nn.PReLU,),
    "Gemm": (nn.Linear,),
}


@dataclass
class OnnxLayer:
    op: str
    name: str
    weights: list[np.ndarray]
    attrs: dict[str, Any]


def onnx_layers(model: Any) -> list[OnnxLayer]:
    """The graph's parametrised layers in topological order, with their constant inputs (weights)."""
    from onnx import helper, numpy_helper

    consts = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    layers = []
    for node in model.graph.node:
        if node.op_type not in LAYER_TYPES:
            continue
        weights = [consts[x] for x in node.input[1:] if x]
        if len(weights) != len([x for x in node.input[1:] if x]):
            raise FacelabError(f"ONNX node {node.name or node.op_type} has a non-constant weight input")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        layers.append(OnnxLayer(node.op_type, node.name or node.output[0], weights, attrs))
    return layers


def torch_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    kinds = tuple(t for types in LAYER_TYPES.values() for t in types)
    return [(name, m) for name, m in module.named_modules() if isinstance(m, kinds)]


def _check(ok: bool, where: str, what: str) -> None:
    if not ok:
        raise FacelabError(f"ONNX layer {where} does not fit: {what}")


def _assign(layer: OnnxLayer, name: str, module: nn.Module) -> dict[str, np.ndarray]:
    """{state key: value} for one matched pair, after checking shapes and attributes."""
    where = f"{layer.name} ({layer.op}) -> {name} ({type(module).__name__})"
    _check(isinstance(module, LAYER_TYPES[layer.op]), where, "layer types differ")
    w = layer.weights
    out: dict[str, np.ndarray] = {}
    if layer.op == "Conv":
        conv: nn.Conv2d = module  # type: ignore[assignment]
        _check(w[0].shape == tuple(conv.weight.shape), where, f"weight {w[0].shape} vs {tuple(conv.weight.shape)}")
        _check(layer.attrs.get("group", 1) == conv.groups, where, "groups differ")
        _check(list(layer.attrs.get("strides", [1, 1])) == list(conv.stride), where, "strides differ")
        _check((len(w) > 1) == (conv.bias is not None), where, "one has a bias, the other not")
        out["weight"] = w[0]
        if len(w) > 1:
            out["bias"] = w[1]
    elif layer.op == "BatchNormalization":
        bn: nn.modules.batchnorm._BatchNorm = module  # type: ignore[assignment]
        _check(all(x.shape == (bn.num_features,) for x in w), where, "channel counts differ")
        eps = float(layer.attrs.get("epsilon", 1e-5))
        _check(abs(eps - bn.eps) <= 1e-6 * max(eps, bn.eps), where, f"epsilon {eps:g} vs {bn.eps:g}")
        out.update(weight=w[0], bias=w[1], running_mean=w[2], running_var=w[3])
    elif layer.op == "PRelu":
        prelu: nn.PReLU = module  # type: ignore[assignment]
        slope = w[0].reshape(-1)
        _check(slope.size == prelu.weight.numel(), where, f"{slope.size} slopes vs {prelu.weight.numel()}")
        out["weight"] = slope
    else:  # Gemm
        fc: nn.Linear = module  # type: ignore[assignment]
        _check(float(layer.attrs.get("alpha", 1.0)) == 1.0 and float(layer.attrs.get("beta", 1.0)) == 1.0, where,
               "alpha/beta other than 1")
        _check(not layer.attrs.get("transA", 0), where, "transA is set")
        weight = w[0] if layer.attrs.get("transB", 0) else w[0].T
        _check(weight.shape == tuple(fc.weight.shape), where, f"weight {weight.shape} vs {tuple(fc.weight.shape)}")
        _check((len(w) > 1) == (fc.bias is not None), where, "one has a bias, the other not")
        out["weight"] = weight
        if len(w) > 1:
            out["bias"] = w[1].reshape(-1)
    return out


def map_onto(model: Any, backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of ``backbone`` with every weight taken from the ONNX ``model`` (see module docstring).

    Raises:
        FacelabError: the layer sequences differ in length, type, shape, attributes, or leave a weight unassigned.
    """
    ours, theirs = torch_layers(backbone), onnx_layers(model)
    if len(ours) != len(theirs):
        raise FacelabError(f"the ONNX graph has {len(theirs)} parametrised layers, the backbone {len(ours)}")
    state = {k: v.clone() for k, v in backbone.state_dict().items()}
    assigned = set()
    for layer, (name, module) in zip(theirs, ours, strict=True):
        for key, value in _assign(layer, name, module).items():
            full = f"{name}.{key}"
            state[full] = torch.from_numpy(np.array(value, dtype=np.float32)).reshape(state[full].shape)
            assigned.add(full)
    left = [k for k in state if k not in assigned and not k.endswith("num_batches_tracked")]
    if left:
        raise FacelabError(f"ONNX weights leave backbone entries unassigned: {', '.join(left[:5])}")
    return state


@dataclass
class Converted:
    """What a converter returns: the architecture dict and the weights, ready for ``build_from_architecture``."""

    architecture: dict[str, Any]
    state: dict[str, torch.Tensor]
    #: the module already holding ``state``, when the converter built one (saves rebuilding it)
    module: nn.Module | None = None


#: name -> ``fn(model, architecture, embedding_dim, input_size) -> Converted``
CONVERTERS: Registry[Converted] = Registry("pretrained converter")


@CONVERTERS.register("native")
def _native(model: Any, architecture: dict[str, Any], embedding_dim: int, input_size: int) -> Converted:
    backbone = build_backbone(from_dict(ModelConfig, dict(architecture), "architecture"), input_size)
    state = map_onto(model, backbone)
    backbone.load_state_dict(state)
    return Converted(dict(architecture), state, backbone.eval())


@CONVERTERS.register("onnx2torch")
def _onnx2torch(model: Any, architecture: dict[str, Any], embedding_dim: int, input_size: int) -> Converted:
    order = dict(architecture.get("options") or {}).get("input_order", "RGB")
    module = convert_onnx(model, embedding_dim, input_size, order)
    arch = {"backbone": ONNX_BACKBONE, "embedding_dim": embedding_dim, "width": 64, "dropout": 0.0,
            "options": {"input_order": order}}
    return Converted(arch, {k: v.detach().clone() for k, v in module.state_dict().items()}, module.eval())


ConverterFn = Callable[[Any, dict[str, Any], int, int], Converted]
