"""CLI: training commands -- ``facelab train | demo | models``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from facelab.cli.common import Handler
from facelab.errors import FacelabError


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on an identity folder (by default: fine-tune a pretrained one)",
                       description="Train on ROOT/<identity>/<image>. With only --data (no --config, --backbone, "
                       "--init or model/init settings) it fine-tunes the pretrained SFace model on the folder's "
                       "aligned faces (recipe: configs/finetune.yaml); --init MODEL fine-tunes another model, "
                       "--init none trains --backbone from scratch. The split is seeded and saved (split.json) so "
                       "`facelab eval` scores exactly the held-out images; --train/--val use given sets instead "
                       "(labels in ImageFolder order), validated after every epoch with the best epoch kept in "
                       "best.pt. A checkpoint is written atomically after "
                       "every epoch; --resume continues a stopped run.")
    p.add_argument("--data", metavar="ROOT", help="identity folder to train on (sets data.root)")
    p.add_argument("--train", metavar="DIR|LIST",
                   help="a given training set instead of the seeded split of --data: an identity folder (labels in "
                   "torchvision ImageFolder's sorted order over all class folders) or a list (.csv path,label or "
                   ".txt 'path label'; paths relative to --data, default the list's folder) or an insightface "
                   "train.rec (sets data.train)")
    p.add_argument("--val", metavar="DIR|LIST",
                   help="a given validation set (same forms as --train): accuracy after every epoch, best.pt, "
                   "early stopping with --patience (sets data.val)")
    p.add_argument("--val-pairs", metavar="FILE",
                   help="labelled pair list (any facelab pairs format) scored by ROC AUC after every epoch; "
                   "best.pt is then chosen by val_auc (sets validation.pairs)")
    p.add_argument("--val-metric", choices=("auto", "val_acc", "val_auc", "val_loss"),
                   help="what chooses best.pt: auto (val_auc with --val-pairs, else val_acc), val_acc, val_auc, "
                   "val_loss (sets validation.metric)")
    p.add_argument("--patience", type=int, metavar="N",
                   help="stop after N validated epochs without improvement (sets validation.patience; 0 = never)")
    p.add_argument("--out", metavar="DIR", help="run folder for checkpoint, logs and reports (sets out_dir)")
    add_training_options(p)
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out (or out_dir of --config) from its last checkpoint, with the "
                   "config stored in it; only --lr/--epochs/--device and --set optim.lr, optim.epochs, "
                   "optim.grad_clip, train.checkpoint_every_steps, train.log_every_steps, device, threads may "
                   "change it (e.g. a lower optim.lr after a NaN loss)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")


def add_training_options(p: argparse.ArgumentParser) -> None:
    """The recipe options shared by ``facelab train`` and ``facelab fit`` (each sets a config key)."""
    p.add_argument("--config", metavar="YAML", help="YAML config (see configs/); unknown keys are errors")
    p.add_argument("--epochs", type=int, help="number of epochs (sets optim.epochs)")
    p.add_argument("--backbone", help="backbone name, e.g. resnet18, mobilefacenet (sets model.backbone; trains from "
                   "scratch)")
    p.add_argument("--init", metavar="MODEL", help="fine-tune MODEL: a pretrained name (facelab pretrained list), an "
                   "ONNX file, a bundle or a run folder (sets init.model; default recipe configs/finetune.yaml); "
                   "'none' = train from scratch. Without --config/--backbone/--init, the pretrained sface is "
                   "fine-tuned")
    p.add_argument("--accept-licence", action="store_true",
                   help="accept the weights' licence of a gated pretrained --init model (sets init.accept_licence)")
    p.add_argument("--loss", help="loss name, e.g. arcface, softmax (sets loss.name)")
    p.add_argument("--batch-size", type=int, help="images per step (sets data.batch_size)")
    p.add_argument("--lr", type=float, help="peak learning rate (sets optim.lr)")
    p.add_argument("--input-size", type=int, help="square input side in pixels (sets data.input_size)")
    p.add_argument("--align", metavar="DETECTOR",
                   help="the photos are not face crops: detect and align each face (yunet, retinaface) once, "
                   "cache the crops, and record it with the model so evaluation and inference do the same "
                   "(sets data.align; options: --set data.align_options.several=centre, see docs/faces.md)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (sets device)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set loss.options.margin=0.3 (repeatable)")


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
                       "compare the parameters and MACs of one standard convolution with its depthwise, pointwise "
                       "and depthwise-separable counterparts instead.")
    p.add_argument("--input-size", type=int, default=112, help="square input side in pixels (default 112)")
    p.add_argument("--embedding-dim", type=int, default=512, help="embedding size (default 512)")
    p.add_argument("--width", type=int, default=64, help="width (64 = the papers' channel counts; default 64)")
    p.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="backbone option for every row, e.g. --set norm=group (repeatable)")
    p.add_argument("--conv", nargs="+", metavar="KEY=N",
                   help="compare standard, depthwise, pointwise and depthwise-separable convolution: "
                   "in=M out=N k=K hw=SIDE [s=STRIDE]")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    _add_train(sub)
    _add_demo(sub)
    _add_models(sub)


TRAIN_FLAGS = {
    "data": "data.root", "out": "out_dir", "epochs": "optim.epochs", "backbone": "model.backbone",
    "loss": "loss.name", "batch_size": "data.batch_size", "lr": "optim.lr", "input_size": "data.input_size",
    "device": "device", "align": "data.align", "train": "data.train", "val": "data.val",
    "val_pairs": "validation.pairs", "val_metric": "validation.metric", "patience": "validation.patience",
}


def training_overrides(args: argparse.Namespace) -> list[str]:
    """``key=value`` strings for the options of :func:`add_training_options` that were given (--set excluded)."""
    return [f"{key}={getattr(args, flag)}" for flag, key in TRAIN_FLAGS.items()
            if getattr(args, flag, None) is not None]


SCRATCH = ("none", "scratch", "")


def finetune_config_path() -> Path:
    from importlib import resources

    return Path(str(resources.files("facelab") / "configs" / "finetune.yaml"))


def chooses_model(args: argparse.Namespace) -> bool:
    """Whether the command line says which model to train (otherwise the pretrained default is fine-tuned)."""
    return (args.config is not None or args.backbone is not None or args.init is not None
            or any(o.strip().startswith(("model.", "init.model=")) for o in args.overrides))


def training_recipe(args: argparse.Namespace) -> tuple[dict[str, Any] | None, list[str]]:
    """(base config, overrides) for the options of :func:`add_training_options`, --set last: the fine-tune recipe
    (configs/finetune.yaml) as the base when fine-tuning without --config, including when nothing chooses a model.

    Raises:
        FacelabError: --backbone together with --init.
    """
    from facelab.config import load_yaml

    overrides = training_overrides(args)
    scratch = args.init is not None and args.init.lower() in SCRATCH
    if args.init is not None and not scratch and args.backbone is not None:
        raise FacelabError("--backbone trains a new network from scratch and --init fine-tunes an existing one: "
                           "pass one of them")
    base = None
    if scratch:
        overrides.append("init.model=''")
    elif args.init is not None or not chooses_model(args):  # the trainer says what it fine-tunes and how to opt out
        base = None if args.config is not None else load_yaml(finetune_config_path())
        if args.init is not None:
            overrides.append(f"init.model={args.init}")
    if args.accept_licence:
        overrides.append("init.accept_licence=true")
    return base, [*overrides, *args.overrides]


def train_config_from_args(args: argparse.Namespace) -> Any:
    """The TrainConfig ``facelab train`` runs with (see :func:`training_recipe`).

    Raises:
        FacelabError: contradictory flags (--resume with other options, --backbone with --init).
    """
    from facelab.config import load_config

    if args.resume:  # the checkpoint's config; _cmd_train passes the changes the trainer allows (RESUME_KEYS)
        if args.config is None and args.out is None:
            raise FacelabError("--resume needs --out DIR (the run folder to continue)")
        if args.init is not None or args.accept_licence:
            raise FacelabError("--resume continues with the config stored in the checkpoint, its init model "
                               "included; drop --init / --accept-licence")
        return load_config(args.config, [o for o in training_overrides(args) if o.startswith("out_dir=")])
    base, overrides = training_recipe(args)
    return load_config(args.config, overrides, base=base)


def _cmd_train(args: argparse.Namespace) -> int:
    from facelab.engine import train
    from facelab.evaluation.pairs import validation_pairs

    cfg = train_config_from_args(args)
    if args.resume:
        changes = [o for o in training_overrides(args) if not o.startswith("out_dir=")] + list(args.overrides)
        result = train(cfg, resume=True, quiet=args.quiet, resume_overrides=changes, pair_reader=validation_pairs)
    else:
        result = train(cfg, quiet=args.quiet, pair_reader=validation_pairs)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        print(f"trained {len(result.history)} epochs; checkpoint: {result.checkpoint}")
        print(f"next: facelab eval {Path(result.out_dir)}")
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


COMMANDS: dict[str, Handler] = {"train": _cmd_train, "demo": _cmd_demo, "models": _cmd_models}
