"""The ``facelab`` command. Each group of subcommands lives in its own module (training, evaluation, deployment)
and registers its parsers and handlers here. Errors the user can fix print as one line, not a traceback."""

from __future__ import annotations

import os

# Before torch is imported (OpenMP reads it once): worker threads sleep between parallel regions instead of
# spinning, so they do not steal the cores from the face detector, onnxruntime or another job. Embedding SFace
# beside onnxruntime in one process, 2 threads: 67.8 vs 16.8 img/s; pure training on an idle machine: ~5 % slower
# (docs/pretrained.md). A user's own OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import logging
import sys

from facelab.cli import cluster, evaluation, faces, pretrained, serving, siamese, train, workflow
from facelab.cli.common import Handler
from facelab.errors import FacelabError
from facelab.utils.allocator import tune_allocator
from facelab.version import __version__

DESCRIPTION = (
    "facelab: train and evaluate face recognition models on folders of faces laid out as ROOT/<identity>/<image>. "
    "Closed set: classify held-out images of identities seen in training. Open set: verify (1:1) and identify "
    "(1:N) identities never seen in training."
)
#: command groups in --help order; each has ``add_parsers(subparsers)`` and ``COMMANDS``
GROUPS = (train, siamese, workflow, evaluation, cluster, serving, faces, pretrained)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facelab", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="run facelab COMMAND --help")
    for group in GROUPS:
        group.add_parsers(sub)
    return parser


COMMANDS: dict[str, Handler] = {name: fn for group in GROUPS for name, fn in group.COMMANDS.items()}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="facelab: %(message)s")
    args = build_parser().parse_args(argv)
    if args.command != "serve":  # serve sets its own profile (facelab.utils.allocator)
        tune_allocator("batch")
    try:
        return COMMANDS[args.command](args)
    except FacelabError as exc:
        print(f"facelab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("facelab: interrupted; the last completed epoch is saved (continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
