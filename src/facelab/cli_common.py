"""Argument definitions shared by ``facelab.cli`` and ``facelab.serving.commands`` (kept apart to avoid an import
cycle: cli imports the serving commands)."""

from __future__ import annotations

import argparse


def add_run_argument(p: argparse.ArgumentParser) -> None:
    """The positional RUN that every command working on a trained run takes."""
    p.add_argument("run", metavar="RUN", help="run folder (holding checkpoint.pt) or a checkpoint file")
