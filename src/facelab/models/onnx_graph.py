"""A backbone converted from an ONNX graph by ``onnx2torch`` (Apache-2.0): any face model a user has as ONNX
becomes a trainable ``nn.Module`` that fine-tunes, exports and runs under DDP / EMA / AMP like the native ones.

Rebuilding it needs the graph as well as the weights, so the module carries its graph in a ``uint8`` buffer
(``onnx_graph``) that travels in every ``state_dict``: checkpoints, bundles and the pretrained cache hold the model
in one file and ``build_from_architecture({"backbone": "onnx", ...}, size, state)`` rebuilds it (registered as the
``"onnx"`` kind of :data:`~facelab.models.base.ARCHITECTURES`; ``options.input_order`` RGB/BGR). The weights are not
stored twice: initializers whose values are already in the state dict are emptied in the stored graph (listed in
its metadata) and refilled with zeros before conversion, then overwritten by ``load_state_dict``. Conversion checks
that round trip once (:func:`convert_onnx`), so a graph whose conversion reads an initializer's values keeps them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from facelab.config import ModelConfig, from_dict
from facelab.errors import FacelabError
from facelab.models.base import ARCHITECTURES
from facelab.utils.extras import require

#: ``model.backbone`` of an ONNX-converted model (not in BACKBONES: it cannot be built without its graph)
ONNX_BACKBONE = "onnx"
#: state-dict key of the serialized graph
GRAPH_KEY = "onnx_graph"
#: ONNX metadata key listing the initializers emptied because the state dict holds their values
STRIPPED_KEY = "facelab.stripped_initializers"
#: initializers smaller than this are always kept in the graph (shapes, scalars a converter may read)
MIN_STRIPPED_ELEMENTS = 64


def _onnx() -> Any:
    return require("onnx", "onnx")


class OnnxBackbone(nn.Module):
    """(B, 3, S, S) RGB input normalised as the model's InputSpec says -> (B, embedding_dim).

    ``input_order="BGR"`` swaps the channels before the graph, so a model trained on BGR input still takes
    facelab's RGB tensors and trains on facelab's data pipeline unchanged.
    """

    def __init__(self, graph: Any, graph_bytes: bytes, embedding_dim: int, input_size: int,
                 input_order: str = "RGB") -> None:
        super().__init__()
        if input_order not in ("RGB", "BGR"):
            raise FacelabError(f"ONNX input_order must be RGB or BGR, got {input_order!r}")
        onnx2torch = require("onnx2torch", "onnx")
        try:
            self.net = onnx2torch.convert(graph)
        except Exception as exc:  # onnx2torch raises NotImplementedError / KeyError / ... for unsupported ops
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise FacelabError(f"onnx2torch cannot convert this graph: {why}") from None
        self.embedding_dim, self.input_size, self.input_order = embedding_dim, input_size, input_order
        self.register_buffer(GRAPH_KEY, torch.from_numpy(np.frombuffer(graph_bytes, dtype=np.uint8).copy()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_order == "BGR":
            x = x.flip(1)
        out = self.net(x)
        if isinstance(out, tuple | list):
            out = out[0]
        return out.flatten(1)


def _state_digests(state: Mapping[str, torch.Tensor]) -> set[str]:
    return {hashlib.sha256(t.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()
            for k, t in state.items() if k != GRAPH_KEY and t.is_floating_point()}


def strip_weights(model: Any, state: Mapping[str, torch.Tensor]) -> bytes:
    """``model`` serialized with the float initializers whose values ``state`` already holds emptied."""
    onnx = _onnx()
    from onnx import numpy_helper

    known = _state_digests(state)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    stripped = []
    for init in out.graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or int(np.prod(init.dims)) < MIN_STRIPPED_ELEMENTS:
            continue
        values = numpy_helper.to_array(init).astype(np.float32)
        if hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest() in known:
            dims, name = list(init.dims), init.name
            init.Clear()
            init.name, init.data_type = name, onnx.TensorProto.FLOAT
            init.dims.extend(dims)
            stripped.append(name)
    entry = out.metadata_props.add()
    entry.key, entry.value = STRIPPED_KEY, json.dumps(stripped)
    return out.SerializeToString()


def restore_graph(graph_bytes: bytes) -> Any:
    """The ONNX model stored by :func:`strip_weights`, its emptied initializers refilled with zeros."""
    onnx = _onnx()
    from onnx import numpy_helper

    model = onnx.ModelProto()
    try:
        model.ParseFromString(graph_bytes)
    except Exception as exc:  # google.protobuf.message.DecodeError
        raise FacelabError(f"the stored ONNX graph is damaged ({type(exc).__name__})") from None
    meta = {p.key: p.value for p in model.metadata_props}
    stripped = set(json.loads(meta.get(STRIPPED_KEY, "[]")))
    for i, init in enumerate(model.graph.initializer):
        if init.name in stripped:
            model.graph.initializer[i].CopyFrom(
                numpy_helper.from_array(np.zeros(list(init.dims), np.float32), init.name))
    return model


def convert_onnx(model: Any, embedding_dim: int, input_size: int, input_order: str = "RGB") -> OnnxBackbone:
    """An :class:`OnnxBackbone` (eval mode) for a clean ONNX model (weights as fp32 initializers, one image input,
    one embedding output), storing its graph without the weights the state dict already holds.

    Raises:
        FacelabError: onnx2torch cannot convert the graph, or the module does not reproduce itself from the
            stored graph (then the full graph is kept, never a broken one).
    """
    full = OnnxBackbone(model, b"", embedding_dim, input_size, input_order).eval()
    state = {k: v for k, v in full.state_dict().items() if k != GRAPH_KEY}
    graph_bytes = strip_weights(model, state)
    rebuilt = rebuild_onnx(graph_bytes, embedding_dim, input_size, input_order, state).eval()
    probe = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        same = torch.equal(full(probe), rebuilt(probe))
    if not same:  # the converter read an emptied initializer's values: store the graph whole
        graph_bytes = model.SerializeToString()
        rebuilt = rebuild_onnx(graph_bytes, embedding_dim, input_size, input_order, state)
    return rebuilt.eval()


def rebuild_onnx(graph_bytes: bytes, embedding_dim: int, input_size: int, input_order: str,
                 state: Mapping[str, torch.Tensor]) -> OnnxBackbone:
    """Convert the stored graph and load ``state`` (with or without its ``onnx_graph`` entry) into it."""
    module = OnnxBackbone(restore_graph(graph_bytes), graph_bytes, embedding_dim, input_size, input_order)
    weights = {k: v for k, v in state.items() if k != GRAPH_KEY}
    try:
        module.load_state_dict({**weights, GRAPH_KEY: module.onnx_graph}, strict=True)
    except RuntimeError as exc:
        raise FacelabError(f"weights do not fit the stored ONNX graph: {str(exc).strip().splitlines()[0]}") from None
    return module


def graph_bytes_from_state(state: Mapping[str, torch.Tensor]) -> bytes:
    """The serialized graph an ONNX backbone's state dict carries.

    Raises:
        FacelabError: the state has no (or a non-uint8) ``onnx_graph`` entry.
    """
    graph = state.get(GRAPH_KEY)
    if graph is None or graph.dtype != torch.uint8 or graph.dim() != 1:
        raise FacelabError(f"an ONNX backbone's weights must hold its graph as a uint8 '{GRAPH_KEY}' tensor")
    return graph.cpu().numpy().tobytes()


@ARCHITECTURES.register(ONNX_BACKBONE)
def _build_onnx(architecture: Mapping[str, Any], input_size: int, state: Mapping[str, torch.Tensor] | None
                ) -> OnnxBackbone:
    """``build_from_architecture`` for ``"backbone": "onnx"``: the graph comes from ``state`` (loaded into it)."""
    cfg = from_dict(ModelConfig, dict(architecture), "architecture")
    extra = set(cfg.options) - {"input_order"}
    if extra:
        raise FacelabError(f"architecture.options: unknown key(s) for an ONNX backbone: {', '.join(sorted(extra))}")
    if state is None:
        raise FacelabError("an ONNX backbone is rebuilt from its weights (they carry its graph); none were given")
    return rebuild_onnx(graph_bytes_from_state(state), cfg.embedding_dim, input_size,
                        cfg.options.get("input_order", "RGB"), state)
