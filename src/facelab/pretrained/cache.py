"""The converted-weights cache: ``$FACELAB_CACHE`` (default ``~/.cache/facelab``) ``/pretrained/<key>.safetensors``
beside ``<key>.json`` holding the file's SHA-256.

Conversion is cheap (about a second) but not free, and bundles of the same model should be byte-identical, so each
converted model is kept once. A cache entry is trusted only after its SHA-256 matches the digest written with it:
a truncated, edited or half-written entry is deleted and rebuilt, never loaded. Both files are written atomically
(temp file + rename), the weights first, so a crash between the two leaves an entry that fails the check.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from facelab.pretrained.onnxfile import sha256_file
from facelab.utils.io import atomic_open, write_json

log = logging.getLogger(__name__)

CACHE_ENV = "FACELAB_CACHE"
FORMAT = "facelab-pretrained-cache"
#: bump when a converter changes what it writes, so stale entries are rebuilt rather than trusted
VERSION = 1
META_KEY = "facelab"


def cache_root() -> Path:
    """``$FACELAB_CACHE`` or ``~/.cache/facelab``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "facelab"


def _paths(key: str) -> tuple[Path, Path]:
    base = cache_root() / "pretrained"
    return base / f"{key}.safetensors", base / f"{key}.json"


def _discard(key: str, why: str) -> None:
    weights, digest = _paths(key)
    log.warning("pretrained cache entry %s %s; rebuilding it", weights, why)
    for p in (weights, digest):
        with contextlib.suppress(OSError):
            p.unlink()


def load_cached(key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """(state, metadata) of a verified entry, or None (missing, or failed the check and removed)."""
    from safetensors import SafetensorError, safe_open

    weights, digest = _paths(key)
    if not weights.is_file() and not digest.is_file():
        return None
    try:
        doc = json.loads(digest.read_text())
        ok = (isinstance(doc, dict) and doc.get("format") == FORMAT and doc.get("version") == VERSION
              and doc.get("sha256") == sha256_file(weights))
    except (OSError, ValueError):
        ok = False
    if not ok:
        _discard(key, "does not match its recorded SHA-256")
        return None
    try:
        with safe_open(str(weights), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})[META_KEY])
            state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118  (safe_open is not a mapping)
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        _discard(key, f"cannot be read ({type(exc).__name__})")
        return None
    return state, meta


def save_cached(key: str, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write the entry atomically; returns the weights file. A cache that cannot be written only costs time."""
    from safetensors.torch import save

    weights, digest = _paths(key)
    data = save({k: v.detach().cpu().contiguous() for k, v in state.items()},
                metadata={META_KEY: json.dumps(meta, sort_keys=True)})
    try:
        with atomic_open(weights, "wb") as fh:
            fh.write(data)
        write_json(digest, {"format": FORMAT, "version": VERSION, "sha256": sha256_file(weights)})
    except OSError as exc:
        log.warning("cannot write the pretrained cache %s: %s", weights, exc)
    return weights
