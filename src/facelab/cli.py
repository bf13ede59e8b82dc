"""Command line: ``facelab train | eval | demo``. Errors the user can fix print as one line, not a traceback."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from facelab.cli_common import add_run_argument
from facelab.errors import FacelabError
from facelab.serving.commands import COMMANDS as SERVING_COMMANDS
from facelab.serving.commands import add_parsers as add_serving_parsers

DESCRIPTION = (
    "facelab: train and evaluate face recognition models on folders of faces laid out as ROOT/<identity>/<image>. "
    "Closed set: classify held-out images of identities seen in training. Open set: verify (1:1) and identify "
    "(1:N) identities never seen in training."
)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on an identity folder",
                       description="Train a backbone with a face loss on ROOT/<identity>/<image>. The split is "
                       "seeded and saved (split.json) so `facelab eval` scores exactly the held-out images. A "
                       "checkpoint is written atomically after every epoch; --resume continues a stopped run.")
    p.add_argument("--config", metavar="YAML", help="YAML config (see configs/); unknown keys are errors")
    p.add_argument("--data", metavar="ROOT", help="identity folder to train on (sets data.root)")
    p.add_argument("--out", metavar="DIR", help="run folder for checkpoint, logs and reports (sets out_dir)")
    p.add_argument("--epochs", type=int, help="number of epochs (sets optim.epochs)")
    p.add_argument("--backbone", help="backbone name, e.g. resnet18, mobilefacenet (sets model.backbone)")
    p.add_argument("--loss", help="loss name, e.g. arcface, softmax (sets loss.name)")
    p.add_argument("--batch-size", type=int, help="images per step (sets data.batch_size)")
    p.add_argument("--lr", type=float, help="peak learning rate (sets optim.lr)")
    p.add_argument("--input-size", type=int, help="square input side in pixels (sets data.input_size)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (sets device)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set loss.options.margin=0.3 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out (or out_dir of --config) from its last checkpoint, "
                   "with the config stored in it")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a trained run (closed-set accuracy, open-set verification)",
                       description="Score a run on the held-out images of its own split: closed-set top-1/top-5, "
                       "open-set ROC AUC, EER and TAR@FAR over all pairs of the unseen identities, and rank-1 "
                       "identification. Writes metrics.json, roc.png, roc.json and scores_hist.png.")
    add_run_argument(p)
    p.add_argument("--data", metavar="ROOT", help="data folder, if it moved since training")
    p.add_argument("--out", metavar="DIR", help="where to write reports (default: the run folder)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the training device setting)")
    p.add_argument("--no-flip", action="store_true", help="disable horizontal-flip test-time augmentation")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train + evaluate on the bundled ORL faces and print the results",
                       description="Train on 30 of the 40 bundled ORL identities (8 images each), then report "
                       "closed-set accuracy on their 2 held-out images and open-set verification on the 10 "
                       "identities never seen. Takes a few minutes on 2 CPU cores.")
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/demo-<timestamp>)")
    p.add_argument("--epochs", type=int, help="override the demo's epoch count (fewer = faster, less accurate)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the demo config, e.g. --set model.backbone=mobilefacenet")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the backbones with parameters and MACs; compare convolution costs",
                       description="List every registered backbone with its parameter count and multiply-accumulates "
                       "(conv + linear, per image) at an input size, counted on the real modules. With --conv, "
                       "compare a standard and a depthwise-separable convolution instead.")
    p.add_argument("--input-size", type=int, default=112, help="square input side in pixels (default 112)")
    p.add_argument("--embedding-dim", type=int, default=512, help="embedding size (default 512)")
    p.add_argument("--width", type=int, default=64, help="width (64 = the papers' channel counts; default 64)")
    p.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="backbone option for every row, e.g. --set norm=group (repeatable)")
    p.add_argument("--conv", nargs="+", metavar="KEY=N",
                   help="compare standard vs depthwise-separable convolution: in=M out=N k=K hw=SIDE")


def _add_embed_options(p: argparse.ArgumentParser) -> None:
    """Options shared by the commands that embed images with a trained run."""
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the training device setting)")
    p.add_argument("--no-flip", action="store_true", help="disable horizontal-flip test-time augmentation")
    p.add_argument("--no-cache", action="store_true",
                   help="do not read or write the run's embedding cache (RUN/embedding_cache/)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_pairs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pairs", help="1:1 verification on a pair list (LFW pairs.txt, CSV, insightface .bin)",
                       description="Embed every image of a pair list (cached), then per score type: k-fold accuracy "
                       "(threshold chosen on the other folds, mean and std), ROC AUC, EER, TAR at FAR 1e-1..1e-6 with "
                       "thresholds. Writes pairs.json, pairs.md, ROC/DET/histogram PNGs.")
    add_run_argument(p)
    p.add_argument("--pairs", required=True, metavar="FILE",
                   help="pairs.txt (LFW), .csv (img1,img2,label[,fold]) or insightface .bin")
    p.add_argument("--data", metavar="ROOT", help="folder the pair list's image paths are relative to "
                   "(default: the pair file's folder)")
    p.add_argument("--format", help="pair-list format if the suffix does not say: lfw, csv, bin, hw2p2")
    p.add_argument("--scores", default="cosine,squared_l2,deepface",
                   help="comma-separated scorers: cosine, squared_l2, deepface (chi-square + linear SVM); "
                   "default all three")
    p.add_argument("--folds", type=int, default=10, help="folds for lists without fold information (default 10)")
    p.add_argument("--out", metavar="DIR", help="report folder (default: RUN/pairs_<file stem>)")
    _add_embed_options(p)


def _add_identify_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("identify-eval", help="1:N identification: CMC, open-set DIR@FPIR / FNIR, open-set accuracy",
                       description="Search every probe image against a gallery of identity folders. Probes whose "
                       "identity has no gallery folder are non-mated searches: FPIR is measured on their top score "
                       "(ISO/IEC 19795-1). Writes identify.json, identify.md, CMC and DET PNGs.")
    add_run_argument(p)
    p.add_argument("--gallery", required=True, metavar="DIR", help="enrolled images: DIR/<identity>/<image>")
    p.add_argument("--probes", required=True, metavar="DIR", help="search images: DIR/<identity>/<image>")
    p.add_argument("--score", default="cosine", help="score type: cosine or squared_l2 (default cosine)")
    p.add_argument("--threshold", type=float,
                   help="open-set threshold in the score's unit (default: RUN/thresholds.json if calibrated)")
    p.add_argument("--max-rank", type=int, default=20, help="longest rank of the CMC curve (default 20)")
    p.add_argument("--out", metavar="DIR", help="report folder (default: RUN/identify)")
    _add_embed_options(p)


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="choose accept thresholds on a dev split and save RUN/thresholds.json",
                       description="Calibrate the 1:1 threshold (target FAR, best accuracy or EER) on dev pairs and "
                       "the open-set 1:N threshold (target FPIR or best open-set accuracy) on dev searches. Without "
                       "--pairs / --gallery, the run's own unseen identities are the dev split.")
    add_run_argument(p)
    p.add_argument("--pairs", metavar="FILE", help="dev pair list for the 1:1 threshold (any `facelab pairs` format)")
    p.add_argument("--data", metavar="ROOT", help="image root of --pairs, or the run's data if it moved")
    p.add_argument("--gallery", metavar="DIR", help="dev gallery DIR/<identity>/<image> for the 1:N threshold")
    p.add_argument("--probes", metavar="DIR", help="dev probes DIR/<identity>/<image> (unenrolled = non-mated)")
    p.add_argument("--objective", default="far", help="1:1 objective: far, accuracy or eer (default far)")
    p.add_argument("--target", type=float, default=1e-3, help="target FAR for --objective far (default 1e-3)")
    p.add_argument("--open-objective", default="fpir",
                   help="1:N objective: fpir or open_set_accuracy (default fpir)")
    p.add_argument("--open-target", type=float, default=1e-2, help="target FPIR (default 1e-2)")
    p.add_argument("--score", default="cosine", help="score type: cosine or squared_l2 (default cosine)")
    _add_embed_options(p)


def _add_hw2p2(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("hw2p2", help="CMU 11-785 HW2P2 layouts: classify, known/unknown verify, pair-list AUC",
                       description="classify: test folder -> id,label CSV. verify: ROOT/known/<id>/, "
                       "ROOT/unknown_dev/, ROOT/verification_dev.csv -> dev accuracy and submission.csv (unknowns "
                       "get n000000). pairs: 'img1 img2 [label]' list -> AUC and Id,Category submission.")
    modes = p.add_subparsers(dest="mode", required=True, metavar="MODE", help="classify, verify or pairs")
    c = modes.add_parser("classify", help="predict a training identity for every test image",
                         description="Predict a training identity for every image of a flat test folder.")
    add_run_argument(c)
    c.add_argument("--test", required=True, metavar="DIR", help="flat folder of test images")
    c.add_argument("--out", required=True, metavar="CSV", help="where to write the id,label CSV")
    c.add_argument("--data", metavar="ROOT", help="training data (metric losses predict by class centres)")
    c.add_argument("--index-labels", action="store_true",
                   help="write class indices (sorted-folder order) instead of identity names")
    v = modes.add_parser("verify", help="open-set known/unknown verification with n000000 for unknowns",
                         description="Match each unknown image to a known identity, or n000000 below the threshold.")
    add_run_argument(v)
    v.add_argument("--root", required=True, metavar="DIR",
                   help="folder with known/, unknown_dev/, verification_dev.csv")
    v.add_argument("--csv", metavar="FILE", help="dev CSV (default ROOT/verification_dev.csv)")
    v.add_argument("--test", metavar="DIR", help="images for the submission (default ROOT/unknown_test or unknown_dev)")
    v.add_argument("--threshold", type=float, help="accept threshold (default: thresholds.json, else best on dev)")
    v.add_argument("--score", default="cosine", help="score type: cosine or squared_l2 (default cosine)")
    v.add_argument("--out", metavar="DIR", help="report folder (default: RUN/hw2p2)")
    q = modes.add_parser("pairs", help="score an 'img1 img2 [label]' pair list; AUC when labelled",
                         description="Score every pair of a pair list; report ROC AUC when labels are given.")
    add_run_argument(q)
    q.add_argument("--pairs", required=True, metavar="FILE", help="pair list, one 'img1 img2 [label]' per line")
    q.add_argument("--data", metavar="ROOT", help="image root (default: the pair file's folder)")
    q.add_argument("--out", metavar="DIR", help="report folder (default: RUN/hw2p2)")
    for m in (c, v, q):
        m.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the training device setting)")
        m.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facelab", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('facelab').__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="run facelab COMMAND --help")
    _add_train(sub)
    _add_eval(sub)
    _add_demo(sub)
    _add_models(sub)
    _add_pairs(sub)
    _add_identify_eval(sub)
    _add_calibrate(sub)
    _add_hw2p2(sub)
    add_serving_parsers(sub)  # bundle, export, embed, verify, enroll, identify, gallery, serve
    return parser


TRAIN_FLAGS = {
    "data": "data.root", "out": "out_dir", "epochs": "optim.epochs", "backbone": "model.backbone",
    "loss": "loss.name", "batch_size": "data.batch_size", "lr": "optim.lr", "input_size": "data.input_size",
    "device": "device",
}


def _cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from facelab.config import load_config
    from facelab.engine import train

    overrides = [f"{key}={getattr(args, flag)}" for flag, key in TRAIN_FLAGS.items()
                 if getattr(args, flag) is not None]
    if args.resume:
        if args.config is None and args.out is None:
            raise FacelabError("--resume needs --out DIR (the run folder to continue)")
        if args.overrides or any(getattr(args, f) is not None for f in TRAIN_FLAGS if f != "out"):
            raise FacelabError("--resume continues with the config stored in the checkpoint; drop other options")
    cfg = load_config(args.config, [*overrides, *args.overrides])
    result = train(cfg, resume=args.resume, quiet=args.quiet)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        print(f"trained {len(result.history)} epochs; checkpoint: {result.checkpoint}")
        print(f"next: facelab eval {Path(result.out_dir)}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from facelab.evaluation.protocol import evaluate, format_table

    metrics = evaluate(args.run, args.data, args.out, args.device, False if args.no_flip else None, args.quiet)
    print(format_table(metrics))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from facelab.demo import run_demo, summary

    overrides = list(args.overrides)
    if args.epochs is not None:
        overrides.append(f"optim.epochs={args.epochs}")
    print(summary(run_demo(args.out, overrides, args.quiet)))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from facelab.config import apply_overrides
    from facelab.models.summary import compare_conv, conv_table, models_table, parse_conv_spec

    if args.conv:
        print(conv_table(compare_conv(**parse_conv_spec(args.conv))))
    else:
        options = apply_overrides({}, args.options)
        print(models_table(args.input_size, args.embedding_dim, args.width, options))
    return 0


def _flip(args: argparse.Namespace) -> bool | None:
    return False if args.no_flip else None


def _cmd_pairs(args: argparse.Namespace) -> int:
    from facelab.evaluation.pairs import evaluate_pairs, format_pairs_table

    scorers = tuple(x.strip() for x in args.scores.split(",") if x.strip())
    doc = evaluate_pairs(args.run, args.pairs, args.data, args.format, scorers, out_dir=args.out,
                         device=args.device, flip=_flip(args), folds=args.folds, cache=not args.no_cache,
                         quiet=args.quiet)
    print(format_pairs_table(doc))
    return 0


def _cmd_identify_eval(args: argparse.Namespace) -> int:
    from facelab.evaluation.identification import evaluate_gallery_probes, format_identification

    doc = evaluate_gallery_probes(args.run, args.gallery, args.probes, args.score, args.threshold,
                                  max_rank=args.max_rank, out_dir=args.out, device=args.device, flip=_flip(args),
                                  cache=not args.no_cache, quiet=args.quiet)
    print(format_identification(doc))
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from facelab.evaluation.calibration import calibrate_run, format_calibration

    result = calibrate_run(args.run, pairs=args.pairs, data=args.data, gallery=args.gallery, probes=args.probes,
                           objective=args.objective, target=args.target, open_objective=args.open_objective,
                           open_target=args.open_target, score=args.score, device=args.device, flip=_flip(args),
                           quiet=args.quiet)
    print(format_calibration(result))
    return 0


def _cmd_hw2p2(args: argparse.Namespace) -> int:
    from facelab.evaluation import hw2p2

    if args.mode == "classify":
        r = hw2p2.classify_folder(args.run, args.test, args.out, args.data, args.index_labels, args.device,
                                  args.quiet)
        print(f"wrote {r['csv']}: {r['images']} images over {r['classes']} classes")
    elif args.mode == "verify":
        r = hw2p2.verify_known_unknown(args.run, args.root, args.csv, args.threshold, args.score, args.out,
                                       args.test, args.device, args.quiet)
        print(f"dev accuracy {r['dev_accuracy']:.4f} at threshold {r['threshold']:.4f} ({r['threshold_source']}); "
              f"submission: {r['submission']} ({r['submission_images']} images)")
    else:
        r = hw2p2.score_pair_file(args.run, args.pairs, args.data, args.out, args.device, args.quiet)
        auc = f"AUC {r['auc']:.4f}; " if r["auc"] is not None else ""
        print(f"{r['pairs']} pairs; {auc}submission: {r['submission']}")
    return 0


COMMANDS = {"train": _cmd_train, "eval": _cmd_eval, "demo": _cmd_demo, "models": _cmd_models,
            "pairs": _cmd_pairs, "identify-eval": _cmd_identify_eval, "calibrate": _cmd_calibrate,
            "hw2p2": _cmd_hw2p2}
COMMANDS.update(SERVING_COMMANDS)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="facelab: %(message)s")
    args = build_parser().parse_args(argv)
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
