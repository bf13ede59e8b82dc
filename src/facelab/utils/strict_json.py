"""Strict JSON for everything facelab prints or answers (``--json`` output, HTTP bodies): RFC 8259 has no NaN or
Infinity, and ``json.dumps`` would print a bare ``NaN`` that most parsers reject. Kept free of heavy imports so the
CLI can use it without slowing ``--help``."""

from __future__ import annotations

import json
import math
from typing import Any


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-inf; numpy and torch scalars too) replaced by None."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, float | int):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # numpy / torch scalars
        return json_safe(obj.item())
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def dumps_json(obj: Any, **kwargs: Any) -> str:
    """Strict JSON text of ``obj``: non-finite numbers become ``null`` (:func:`json_safe`)."""
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)
