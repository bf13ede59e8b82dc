"""CLI: ``facelab fit`` -- from a folder of faces to a service in one command (see facelab.fit)."""

from __future__ import annotations

import argparse

from facelab.cli.common import Handler
from facelab.cli.train import add_training_options, training_overrides


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit", help="train, evaluate, calibrate, bundle and enroll: a folder of faces to a service",
                       description="Train on DATA (ROOT/<identity>/<image>), evaluate on the held-out split, "
                       "calibrate the 1:1 (FAR) and 1:N (FPIR) thresholds, write RUN/model.safetensors, enroll the "
                       "training identities into RUN/gallery.db, report how often strangers are named as someone "
                       "(RUN/fit.json) and print the `facelab serve` line. Every step's report stays in RUN.")
    p.add_argument("data", metavar="DATA", help="identity folder: DATA/<identity>/<image>")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder to create")
    add_training_options(p)
    p.add_argument("--target-far", type=float, default=1e-3, help="FAR the 1:1 threshold is set at (default 1e-3)")
    p.add_argument("--target-fpir", type=float, default=1e-2,
                   help="FPIR the 1:N threshold is set at: the share of strangers named as someone (default 1e-2)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _cmd_fit(args: argparse.Namespace) -> int:
    from facelab.fit import fit, format_fit

    report = fit(args.data, args.out, config=args.config, overrides=[*training_overrides(args), *args.overrides],
                 target_far=args.target_far, target_fpir=args.target_fpir, quiet=args.quiet)
    print(format_fit(report))
    return 0


COMMANDS: dict[str, Handler] = {"fit": _cmd_fit}
