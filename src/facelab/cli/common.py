"""Pieces every CLI module shares: the handler type and the model-reference argument."""

from __future__ import annotations

import argparse
from collections.abc import Callable

#: a subcommand: parsed arguments -> exit code
Handler = Callable[[argparse.Namespace], int]


def add_run_argument(p: argparse.ArgumentParser) -> None:
    """The positional RUN that every command working on a trained run takes."""
    p.add_argument("run", metavar="RUN", help="run folder (holding checkpoint.pt) or a checkpoint file")
