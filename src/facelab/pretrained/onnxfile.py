"""ONNX weight files: found inside installed packages without importing them, checked against their SHA-256, and
cleaned into a plain fp32 graph that onnxruntime and onnx2torch both accept.

Cleaning (:func:`clean_model`):

* every node whose inputs are all constants is evaluated once by ONNX's reference implementation
  (``onnx.reference``) and replaced by an fp32 initializer. In the block-quantized OpenCV Zoo files this folds the
  ``DequantizeLinear`` (+ ``Reshape``) chain in front of each weight, ``y = (q - zero_point) * scale`` with one scale
  per block of ``block_size`` elements along ``axis`` (ONNX operator spec, opset 21);
* graph inputs that are initializers or unused are dropped (the quantized SFace file still lists the original fp32
  weights as required inputs, which onnxruntime refuses), leaving the one image input;
* the batch dimension of the image input and of the outputs becomes symbolic, so batches of any size run.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from facelab.errors import FacelabError
from facelab.utils.extras import require


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def locate(package: str, relpath: str, install: str) -> Path:
    """``relpath`` inside the installed ``package``, found with ``importlib.util.find_spec`` (the package is never
    imported: some build inference sessions at import time).

    Raises:
        FacelabError: the package is not installed (naming ``install``, what to pip install) or lacks the file.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FacelabError(f"the package {package} is not installed: pip install {install}")
    for root in spec.submodule_search_locations:
        path = Path(root) / relpath
        if path.is_file():
            return path
    raise FacelabError(f"{package} is installed but has no {relpath}: reinstall it (pip install --force-reinstall "
                       f"{install})")


def verify_sha256(path: Path, expected: str) -> str:
    """The file's SHA-256, which must equal ``expected``.

    Raises:
        FacelabError: the digests differ (a modified or different file is never used).
    """
    actual = sha256_file(path)
    if actual != expected:
        raise FacelabError(f"{path} has SHA-256 {actual[:16]}..., expected {expected[:16]}...: the file is not the "
                           f"one facelab was built for; reinstall the package that ships it")
    return actual


def load_onnx(path: str | Path) -> Any:
    onnx = require("onnx", "onnx")
    path = Path(path)
    if not path.is_file():
        raise FacelabError(f"ONNX file not found: {path}")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # DecodeError and friends
        raise FacelabError(f"{path} is not a readable ONNX model ({type(exc).__name__})") from None


def _fold_constants(model: Any) -> tuple[list[Any], dict[str, np.ndarray]]:
    """Evaluate every node whose inputs are all constants; (remaining nodes, name -> constant value)."""
    onnx = require("onnx", "onnx")
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    consts = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    image_inputs = {i.name for i in graph.input if i.name not in consts}
    kept = []
    for node in graph.node:
        inputs = [x for x in node.input if x]
        if node.domain not in ("", "ai.onnx") or any(x in image_inputs or x not in consts for x in inputs):
            kept.append(node)
            continue
        sub = helper.make_graph([node], "fold", [],
                                [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None)
                                 for o in node.output],
                                initializer=[numpy_helper.from_array(consts[x], x) for x in inputs])
        values = None
        # the reference runtime lacks some older op versions (DequantizeLinear < 19); a constant node computes the
        # same value under the newest version, whose semantics extend the older ones
        for opsets in (list(model.opset_import), [helper.make_opsetid("", onnx.defs.onnx_opset_version())]):
            try:
                values = ReferenceEvaluator(helper.make_model(sub, opset_imports=opsets)).run(None, {})
                break
            except Exception:  # an op or version the reference runtime lacks: try the next, else leave it
                continue
        if values is None:
            kept.append(node)
            continue
        for name, value in zip(node.output, values, strict=True):
            consts[name] = np.asarray(value)
    return kept, consts


def clean_model(model: Any) -> Any:
    """A copy of ``model`` with constant subgraphs (DequantizeLinear blocks) folded into fp32 initializers, only the
    image input left and a symbolic batch dimension (see the module docstring).

    Raises:
        FacelabError: the graph does not have exactly one image input or output, or fails ONNX's checker.
    """
    onnx = require("onnx", "onnx")
    from onnx import numpy_helper

    kept, consts = _fold_constants(model)
    used = {x for node in kept for x in node.input if x} | {o.name for o in model.graph.output}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    for name in sorted(used & set(consts)):
        value = consts[name]
        if value.dtype == np.float64 or value.dtype == np.float16:
            value = value.astype(np.float32)
        graph.initializer.append(numpy_helper.from_array(value, name))
    inputs = [i for i in graph.input if i.name not in consts and i.name in used]
    del graph.input[:]
    graph.input.extend(inputs)
    del graph.value_info[:]  # shapes of folded tensors are stale
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise FacelabError(f"a face model needs one image input and one embedding output; this graph has inputs "
                           f"{[i.name for i in graph.input]} and outputs {[o.name for o in graph.output]}")
    for value_info in (graph.input[0], graph.output[0]):
        dims = value_info.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_param = "batch"
    try:
        onnx.checker.check_model(out)
    except onnx.checker.ValidationError as exc:
        raise FacelabError(f"the cleaned ONNX graph is invalid: {str(exc).splitlines()[0]}") from None
    return out


def input_shape(model: Any) -> list[int | None]:
    """The image input's (N, C, H, W) with None for symbolic dimensions."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else None for d in dims]


def ort_session(model: Any, threads: int = 0) -> Any:
    """An onnxruntime CPU session for an in-memory ONNX model, spin-waiting off (it doubles latency on shared
    cores) and ``threads`` intra-op threads (0 = onnxruntime's default)."""
    ort = require("onnxruntime", "onnx")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if threads > 0:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
