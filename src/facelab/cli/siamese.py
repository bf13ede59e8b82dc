"""CLI: ``facelab siamese PAIRS --data ROOT --out RUN`` -- a siamese network trained on a labelled pair list."""

from __future__ import annotations

import argparse

from facelab.cli.common import Handler, dumps


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "siamese", help="train a siamese network on a labelled pair list (LFW pairs.txt, CSV img1,img2,label)",
        description="Train one backbone on both images of every listed pair with a pair loss -- l1 / sq: a learned "
        "weighted sum of |e1 - e2| or (e1 - e2)^2 and a sigmoid, trained with binary cross-entropy (DeepFace's "
        "siamese network); contrastive: Hadsell et al.'s margin loss on cosine distance -- on the --train-folds of "
        "the list, then test on the other folds with the standard pair-list evaluation (as `facelab pairs`) and the "
        "head's own decisions. Writes RUN/model.safetensors (a bundle), RUN/pair_head.safetensors, "
        "RUN/train_pairs.csv, RUN/test_pairs.csv, RUN/history.json and RUN/test/ (the pair report).")
    p.add_argument("pairs", metavar="PAIRS", help="labelled pair list: LFW pairs.txt or CSV img1,img2,label[,fold]")
    p.add_argument("--data", required=True, metavar="ROOT", help="folder the listed images are under")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder to write")
    p.add_argument("--config", metavar="YAML", help="a PairTrainConfig YAML (keys as --set)")
    p.add_argument("--loss", choices=("l1", "sq", "contrastive"), help="pair loss (default l1)")
    p.add_argument("--train-folds", type=int, nargs="+", metavar="K",
                   help="1-based folds to train on (default 1 2 3 4 5); the others are the test set")
    p.add_argument("--epochs", type=int, help="training epochs (default 10)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set model.backbone=mobilefacenet --set data.align=yunet")
    p.add_argument("--json", action="store_true", help="print the held-out results as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")


def _cmd_siamese(args: argparse.Namespace) -> int:
    from facelab.config import load_pair_config
    from facelab.siamese import train_siamese

    overrides = [f"pairs={args.pairs}", f"data.root={args.data}", f"out_dir={args.out}", *args.overrides]
    if args.loss:
        overrides.append(f"loss={args.loss}")
    if args.train_folds:
        overrides.append(f"train_folds={args.train_folds}")
    if args.epochs is not None:
        overrides.append(f"optim.epochs={args.epochs}")
    result = train_siamese(load_pair_config(args.config, overrides), quiet=args.quiet)
    t = result.test
    if args.json:
        print(dumps({"out_dir": str(result.out_dir), "bundle": str(result.bundle), **t}))
    else:
        print(f"held-out pairs: cosine k-fold accuracy {t['cosine_kfold_accuracy']:.4f} +- "
              f"{t['cosine_kfold_std']:.4f}, ROC AUC {t['cosine_roc_auc']:.4f}, EER {t['cosine_eer']:.4f}; "
              f"pair head accuracy {t['head_accuracy']:.4f}\n"
              f"model: {result.bundle} ({result.seconds:.0f} s); report: {t['pairs_report']}")
    return 0


COMMANDS: dict[str, Handler] = {"siamese": _cmd_siamese}
