"""Lazy imports of optional extras with a one-line error that says what to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from facelab.errors import FacelabError


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or fail with a FacelabError naming the pip extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise FacelabError(f"{module} is not installed: pip install 'facelab[{extra}]'") from None


TB_MISSING = "train.tensorboard needs the tensorboard package: pip install 'facelab[tb]' (or pip install tensorboard)"


def require_tensorboard() -> type:
    """torch's SummaryWriter, or a FacelabError naming the ``tb`` extra."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise FacelabError(TB_MISSING) from None
    return SummaryWriter
