"""Pieces every CLI module shares: the handler type, the model reference argument and strict JSON output."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

#: a subcommand: parsed arguments -> exit code
Handler = Callable[[argparse.Namespace], int]

MODEL_HELP = ("the model: a run folder (holding checkpoint.pt), a checkpoint (.pt), a bundle (.safetensors), a "
              "pretrained model name (see `facelab pretrained list`) or an .onnx file")


def add_run_argument(p: argparse.ArgumentParser) -> None:
    """The positional RUN of commands that need a training run (its split, its loss)."""
    p.add_argument("run", metavar="RUN", help="run folder (holding checkpoint.pt) or a checkpoint file")


def add_model_argument(p: argparse.ArgumentParser, positional: bool = True) -> None:
    """The model reference every model-taking command accepts (resolved by facelab.inference.model.load_model):
    a positional MODEL, or ``--model`` (alias ``--bundle``) for commands whose positionals are images."""
    if positional:
        p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    else:
        p.add_argument("--model", "--bundle", dest="model", required=True, metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--accept-licence", action="store_true",
                   help="accept the licence of a gated pretrained model (e.g. non-commercial research weights)")


def open_model(args: argparse.Namespace, device: str | None = None) -> Any:
    """``load_model`` on the parsed MODEL reference (imports torch lazily, so --help stays instant)."""
    from facelab.inference.model import load_model

    return load_model(args.model, device=device if device is not None else getattr(args, "device", None),
                      accept_licence=getattr(args, "accept_licence", False))


def dumps(obj: Any) -> str:
    """Strict JSON (never a bare NaN or Infinity): :func:`facelab.utils.strict_json.dumps_json`."""
    from facelab.utils.strict_json import dumps_json

    return dumps_json(obj)
