"""Bundle files: one safetensors file with a model's weights and everything needed to use them.

A checkpoint is for resuming training (optimizer state, loss head, history); a bundle is what a deployment needs:
the weights, the architecture to rebuild them, the input spec (size, colour order, normalisation, flip TTA,
alignment), the embedding size, both accept thresholds with their provenance, and two digests:

* ``model_fingerprint`` -- SHA-256 over the weights, architecture, input spec and embedding size: equal fingerprints
  mean equal embeddings. Galleries, embedding caches and ``thresholds.json`` are keyed by it; re-calibrating does not
  change it, so a gallery survives a new threshold.
* ``integrity`` -- SHA-256 over the whole metadata (thresholds, provenance, fingerprint) so an edited threshold or
  input spec is detected. It guards against corruption and careless edits, not against someone who recomputes it.

The metadata is JSON in the safetensors header: loading never unpickles anything, and every field is validated
(types, ranges, finite numbers, an embedding size that matches the weights) before the model is used.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from facelab.errors import FacelabError
from facelab.inference.spec import InputSpec
from facelab.inference.thresholds import Thresholds
from facelab.inference.verifiers import ChiSquareVerifier
from facelab.utils.io import atomic_open

FORMAT = "facelab-bundle"
VERSION = 2
META_KEY = "facelab"
MAX_META_BYTES = 1 << 20
MAX_TEXT = 2000


def model_fingerprint(state: Mapping[str, torch.Tensor], architecture: dict[str, Any], spec: InputSpec,
                      embedding_dim: int) -> str:
    """SHA-256 of what decides the embeddings: architecture, input spec, embedding size, and every tensor's name,
    dtype, shape and bytes (sorted by name)."""
    head = {"architecture": architecture, "spec": spec.to_dict(), "embedding_dim": embedding_dim}
    h = hashlib.sha256(json.dumps(head, sort_keys=True, allow_nan=False).encode())
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _integrity(meta: dict[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != "integrity"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=False).encode()).hexdigest()


def _text(value: Any, what: str, where: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise FacelabError(f"{where}: {what} must be a string of at most {MAX_TEXT} characters")
    return value


@dataclass(frozen=True)
class BundleMeta:
    """Everything in a bundle besides the weights (validated on construction)."""

    architecture: dict[str, Any]
    spec: InputSpec
    embedding_dim: int
    thresholds: Thresholds
    fingerprint: str
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    #: a learned 1:1 verifier (facelab.inference.verifiers) used instead of the cosine threshold on request
    verifier: ChiSquareVerifier | None = None

    def to_dict(self) -> dict[str, Any]:
        meta = {"format": FORMAT, "version": VERSION, "architecture": self.architecture, "spec": self.spec.to_dict(),
                "embedding_dim": self.embedding_dim, "thresholds": self.thresholds.to_dict(),
                "model_fingerprint": self.fingerprint, "source": self.source, "info": self.info}
        if self.verifier is not None:
            meta["verifier"] = self.verifier.to_dict()
        meta["integrity"] = _integrity(meta)
        return meta

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> BundleMeta:
        """Validate header metadata: format/version, integrity digest, every field's type and range."""
        if not isinstance(raw, dict):
            raise FacelabError(f"{where}: bundle metadata must be a JSON object")
        if raw.get("format") != FORMAT:
            raise FacelabError(f"{where} is not a facelab bundle")
        if raw.get("version") != VERSION:
            hint = " (re-create it with `facelab bundle`)" if isinstance(raw.get("version"), int) else ""
            raise FacelabError(f"{where}: bundle version {raw.get('version')!r} is not supported (need {VERSION})"
                               f"{hint}")
        known = {"format", "version", "architecture", "spec", "embedding_dim", "thresholds", "model_fingerprint",
                 "source", "info", "integrity", "verifier"}
        unknown = set(raw) - known
        if unknown:
            raise FacelabError(f"{where}: unknown bundle metadata key(s) {', '.join(sorted(unknown))}")
        if raw.get("integrity") != _integrity(raw):
            raise FacelabError(f"{where}: metadata does not match its integrity digest (edited or corrupt)")
        arch = raw.get("architecture")
        if not isinstance(arch, dict) or not isinstance(arch.get("backbone"), str):
            raise FacelabError(f"{where}: architecture must be a mapping naming a backbone")
        dim = raw.get("embedding_dim")
        if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= 65536:
            raise FacelabError(f"{where}: embedding_dim must be an integer in [1, 65536], got {dim!r}")
        fp = raw.get("model_fingerprint")
        if not isinstance(fp, str) or len(fp) != 64 or any(c not in "0123456789abcdef" for c in fp):
            raise FacelabError(f"{where}: model_fingerprint must be a SHA-256 hex digest")
        info = raw.get("info", {})
        if not isinstance(info, dict):
            raise FacelabError(f"{where}: info must be a mapping")
        if not isinstance(raw.get("spec"), dict):
            raise FacelabError(f"{where}: spec must be a mapping")
        verifier = None if raw.get("verifier") is None else ChiSquareVerifier.from_dict(raw["verifier"], where, dim)
        return cls(arch, InputSpec.from_dict(raw["spec"], f"{where} spec"), dim,
                   Thresholds.from_dict(raw.get("thresholds", {}), where), fp,
                   _text(raw.get("source", ""), "source", where), info, verifier)


def write_bundle(path: str | Path, state: Mapping[str, torch.Tensor], meta: BundleMeta) -> Path:
    """Write atomically (temp file + rename): a killed export leaves the old bundle or the new one."""
    from safetensors.torch import save

    path = Path(path)
    if path.suffix != ".safetensors":
        raise FacelabError(f"a bundle file name ends in .safetensors, got {path}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    data = save(tensors, metadata={META_KEY: json.dumps(meta.to_dict(), sort_keys=True, allow_nan=False)})
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return path


def is_bundle(path: str | Path) -> bool:
    """A safetensors file whose header names facelab metadata (reads only the header)."""
    p = Path(path)
    if not p.is_file():
        return False
    try:
        with open(p, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            return 0 < n <= MAX_META_BYTES * 4 and f'"{META_KEY}"'.encode() in fh.read(n)
    except OSError:
        return False


def read_bundle(path: str | Path) -> tuple[dict[str, torch.Tensor], BundleMeta]:
    """(state, metadata) of a bundle, validated, fingerprint recomputed from the tensors and checked.

    Raises:
        FacelabError: missing file, not safetensors, not a facelab bundle, invalid metadata, or a fingerprint or
            integrity mismatch (corrupt or edited).
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FacelabError(f"bundle not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = (fh.metadata() or {}).get(META_KEY)
            state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118  (safe_open is not a mapping)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise FacelabError(f"cannot read bundle {path}: {str(exc).strip().splitlines()[0]}") from None
    if header is None:
        raise FacelabError(f"{path} is a safetensors file but not a facelab bundle (no metadata)")
    if len(header) > MAX_META_BYTES:
        raise FacelabError(f"{path}: bundle metadata is over {MAX_META_BYTES:,} bytes")
    def no_constants(name: str) -> Any:
        raise FacelabError(f"{path}: bundle metadata holds {name}; every number must be finite")

    try:
        raw = json.loads(header, parse_constant=no_constants)
    except json.JSONDecodeError as exc:
        raise FacelabError(f"{path}: bundle metadata is not valid JSON ({exc})") from None
    meta = BundleMeta.from_dict(raw, str(path))
    if model_fingerprint(state, meta.architecture, meta.spec, meta.embedding_dim) != meta.fingerprint:
        raise FacelabError(f"{path}: weights or metadata do not match the stored fingerprint (corrupt or edited)")
    return state, meta
