"""Matplotlib without a screen, and atomic PNG writes: the one place figures are saved."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from facelab.utils.io import atomic_open


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 120) -> None:
    """Write ``fig`` as PNG atomically (temp file + rename) and close it."""
    with atomic_open(Path(path), "wb") as fh:
        fig.savefig(fh, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
