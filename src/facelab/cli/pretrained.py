"""CLI: pretrained models -- ``facelab pretrained list | get``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from facelab.cli.common import Handler
from facelab.errors import FacelabError


def add_spec_arguments(p: argparse.ArgumentParser) -> None:
    """Preprocessing flags: required for a user's ONNX file, --align / --no-flip also for a named model."""
    p.add_argument("--input-size", type=int, metavar="S", help="ONNX file: square input side (e.g. 112)")
    p.add_argument("--colour-order", choices=("RGB", "BGR"), help="ONNX file: channel order it expects (default RGB)")
    p.add_argument("--mean", type=float, nargs="+", metavar="M",
                   help="ONNX file: per-channel mean on [0, 1] pixels, 1 or 3 values (0.5 for (x - 127.5) / 127.5)")
    p.add_argument("--std", type=float, nargs="+", metavar="S",
                   help="ONNX file: per-channel std on [0, 1] pixels, 1 or 3 values (1/255 = 0.00392 for raw 0..255)")
    p.add_argument("--align", metavar="DETECTOR",
                   help="face detector used to align photos onto the 5-point template (e.g. yunet), or 'none' when "
                   "the images are already face crops (default: the model's, yunet for the named ones)")
    p.add_argument("--no-flip", action="store_true", help="embed without horizontal-flip test-time augmentation")


def _triple(values: list[float] | None, flag: str) -> tuple[float, float, float] | None:
    if values is None:
        return None
    if len(values) not in (1, 3):
        raise FacelabError(f"{flag} takes 1 or 3 values, got {len(values)}")
    return (values[0],) * 3 if len(values) == 1 else (values[0], values[1], values[2])


def spec_from_args(ref: str, args: argparse.Namespace) -> Any:
    """The InputSpec the flags declare for ``ref`` (None: a named model with its own spec untouched).

    Raises:
        FacelabError: an ONNX file without --input-size/--mean/--std, or normalisation flags for a named model.
    """
    from facelab.inference.spec import NO_ALIGN, InputSpec
    from facelab.pretrained import PRETRAINED, get_entry

    mean, std = _triple(args.mean, "--mean"), _triple(args.std, "--std")
    if ref not in PRETRAINED and not Path(ref).is_file():
        get_entry(ref)  # an unknown name: the registry's error, with the closest match
    if ref in PRETRAINED:
        if args.input_size is not None or mean is not None or std is not None or args.colour_order is not None:
            raise FacelabError(f"'{ref}' has its own input size and normalisation; --input-size, --colour-order, "
                               f"--mean and --std are for ONNX files")
        if args.align is None and not args.no_flip:
            return None
        base = get_entry(ref).spec.to_dict()
        if args.align is not None:
            base["align"] = args.align
        if args.no_flip:
            base["flip_tta"] = False
        return InputSpec.from_dict(base)
    missing = [flag for flag, v in (("--input-size", args.input_size), ("--mean", mean), ("--std", std))
               if v is None]
    if missing:
        raise FacelabError(f"{ref}: declare the ONNX model's preprocessing: {', '.join(missing)} "
                           f"(e.g. --input-size 112 --mean 0.5 --std 0.5)")
    return InputSpec(input_size=args.input_size, colour_order=args.colour_order or "RGB", mean=mean, std=std,
                     flip_tta=not args.no_flip, align=args.align or NO_ALIGN)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrained", help="list pretrained face models; turn one into a facelab bundle",
                       description="Pretrained embedders whose weights ship in installed packages (nothing is "
                       "downloaded). `list` shows each with its source package, weight licence, training-data "
                       "caveat, input spec, embedding size and reference LFW accuracy; `get` converts one (or any "
                       "ONNX face model) into an ordinary facelab bundle.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION", help="list or get")
    ls = actions.add_parser("list", help="the registered pretrained models with licence, caveat and input spec",
                            description="Every registered pretrained model: source package and file, weight "
                            "licence, training-data caveat, input spec, embedding size, reference LFW accuracy.")
    ls.add_argument("--json", action="store_true", help="print the registry as JSON")
    g = actions.add_parser("get", help="convert a pretrained model (or an ONNX file) into a facelab bundle",
                           description="Convert NAME (see `facelab pretrained list`) or an ONNX face model into a "
                           "facelab bundle: safetensors weights + architecture, input spec, embedding size, accept "
                           "threshold and fingerprint. Conversions are cached in $FACELAB_CACHE (default "
                           "~/.cache/facelab), checked by SHA-256.")
    g.add_argument("model", metavar="NAME|FILE.onnx", help="a registered name (e.g. sface) or an ONNX file")
    g.add_argument("--out", "-o", required=True, metavar="FILE", help="bundle file to write (.safetensors)")
    g.add_argument("--threshold", type=float,
                   help="1:1 cosine accept threshold (default: the model's reference threshold; an ONNX file has "
                   "none until `facelab calibrate`)")
    g.add_argument("--accept-licence", action="store_true",
                   help="accept the weights' licence of a gated model (e.g. w600k_mbf: non-commercial research only)")
    add_spec_arguments(g)


def format_entries() -> str:
    from facelab.pretrained import entries

    blocks = []
    for e in entries():
        s = e.spec
        spec = (f"{s.input_size}x{s.input_size} {s.colour_order}, (x/255 - {s.mean[0]:g}) / {s.std[0]:.5g}, "
                f"align {s.align}, flip TTA {'on' if s.flip_tta else 'off'}")
        rows = [("model", f"{e.name}{'  [licence acceptance required: --accept-licence]' if e.gated else ''}"),
                ("what", e.summary), ("package", f"pip install {e.source.install}  ({e.source.where})"),
                ("licence", e.licence), ("caveat", e.caveat), ("input", spec), ("ONNX input", e.onnx_input),
                ("embedding", f"{e.embedding_dim}-d"), ("LFW", e.lfw),
                ("1:1 thr.", f"{e.threshold:g} ({e.threshold_source})" if e.threshold is not None else "-"),
                ("1:N thr.", f"{e.identification_threshold:g} at FPIR {e.identification_fpir:g} "
                             f"({e.identification_source})" if e.identification_threshold is not None else "-")]
        blocks.append("\n".join(f"  {k:<10} {v}" if k != "model" else v for k, v in rows))
    return "\n\n".join(blocks)


def _cmd_pretrained(args: argparse.Namespace) -> int:
    if args.action == "list":
        if args.json:
            from facelab.pretrained import entries

            print(json.dumps([e.info() for e in entries()], indent=2))
        else:
            print(format_entries())
        return 0
    path, pm = write_bundle(args.model, args.out, spec=spec_from_args(args.model, args), threshold=args.threshold,
                            accept_licence=args.accept_licence)
    print(f"wrote {path}: {pm.name}, {pm.embedding_dim}-d, input {pm.spec.input_size}x{pm.spec.input_size} "
          f"{pm.spec.colour_order}, align {pm.spec.align}; licence: {pm.info['licence']}")
    return 0


def write_bundle(ref: str, out: str | Path, *, spec: Any = None, threshold: float | None = None,
                 accept_licence: bool = False) -> tuple[Path, Any]:
    """Convert ``ref`` (a registered name or an ONNX file) and write it as a bundle at ``out`` (atomically), with
    the 1:1 threshold ``threshold`` or else the registry's reference one. Returns (path, PretrainedModel).

    Raises:
        FacelabError: as :func:`facelab.pretrained.load`; a threshold outside [-1, 1].
    """
    from facelab.inference.model import FaceModel
    from facelab.inference.thresholds import VERIFICATION, Threshold, Thresholds
    from facelab.pretrained import load

    pm = load(ref, accept_licence=accept_licence, spec=spec)
    thresholds = pm.thresholds
    if threshold is not None:
        thresholds = Thresholds(Threshold(VERIFICATION, threshold, "given with facelab pretrained get --threshold"),
                                thresholds.identification)
    model = FaceModel.from_module(pm.module, pm.architecture, pm.spec, embedding_dim=pm.embedding_dim,
                                  thresholds=thresholds, source=f"pretrained {pm.name} (sha256 {pm.info['sha256']})",
                                  kind="pretrained", device="cpu", info=pm.info)
    return model.save_bundle(out), pm


COMMANDS: dict[str, Handler] = {"pretrained": _cmd_pretrained}
