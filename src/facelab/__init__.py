"""facelab: train, evaluate and deploy face recognition models (closed-set classification, open-set verification and
identification).

The short API (see facelab.api): ``facelab.load``, ``facelab.Gallery``, ``facelab.train``, ``facelab.evaluate``,
``facelab.create_backbone``, ``facelab.create_loss``. They are imported on first use, so ``import facelab`` (and
every submodule import) stays light.
"""

from __future__ import annotations

from typing import Any

from facelab.errors import FacelabError
from facelab.version import __version__

_API = ("Evaluation", "FaceModel", "Gallery", "Verification", "create_backbone", "create_loss", "evaluate", "load",
        "train")
__all__ = ["FacelabError", "__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from facelab import api

        return getattr(api, name)
    raise AttributeError(f"module 'facelab' has no attribute {name!r}")
