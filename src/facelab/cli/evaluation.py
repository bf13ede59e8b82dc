"""CLI: evaluation commands -- ``facelab eval | pairs | verifier | identify-eval | calibrate | hw2p2``."""

from __future__ import annotations

import argparse

from facelab.cli.common import Handler, add_model_argument, add_run_argument, open_model


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
    p.add_argument("--compare-init", action="store_true",
                   help="fine-tuned run: also score the model it started from (zero-shot) on the same split")
    p.add_argument("--reference-pairs", metavar="FILE",
                   help="fine-tuned run: forgetting check on this pair list (e.g. LFW pairs.txt): k-fold accuracy "
                   "of the init model and of the run")
    p.add_argument("--reference-data", metavar="ROOT",
                   help="folder the --reference-pairs image paths are relative to (default: the file's folder)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_embed_options(p: argparse.ArgumentParser) -> None:
    """Options shared by the commands that embed images with a trained run."""
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the training device setting)")
    p.add_argument("--no-flip", action="store_true", help="disable horizontal-flip test-time augmentation")
    p.add_argument("--no-cache", action="store_true",
                   help="do not read or write the run's embedding cache (RUN/embedding_cache/)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_pairs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pairs", help="1:1 verification on a pair list (LFW pairs.txt, Kaggle LFW CSVs, CSV, .bin)",
                       description="Embed every image of a pair list (cached), then per score type: k-fold accuracy "
                       "(threshold chosen on the other folds, mean and std), ROC AUC, EER, TAR at FAR 1e-1..1e-6 with "
                       "thresholds. Writes pairs.json, pairs.md, ROC/DET/histogram PNGs. Lists without folds (View 1 "
                       "pairsDevTest.txt, Kaggle match/mismatch CSVs) are cut into --folds blocks per class.")
    add_model_argument(p)
    p.add_argument("--pairs", required=True, action="append", metavar="FILE",
                   help="pairs.txt / pairsDevTest.txt (LFW), Kaggle LFW pairs.csv or matchpairsDevTest.csv + "
                   "mismatchpairsDevTest.csv (repeat --pairs, or give one: its sibling beside it is read too), "
                   ".csv (img1,img2,label[,fold]) or insightface .bin")
    p.add_argument("--data", metavar="ROOT", help="folder the pair list's image paths are relative to "
                   "(default: the pair file's folder)")
    p.add_argument("--format", help="pair-list format if the suffix does not say: lfw, kaggle, csv, bin, hw2p2")
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
    add_model_argument(p)
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
    add_model_argument(p)
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
    p.add_argument("--open-dev", default="gallery", choices=("gallery", "unseen"),
                   help="without --gallery/--probes, the run's own open-set dev searches: 'gallery' enrolls the "
                   "training identities and searches with their held-out images and the unseen identities (the "
                   "deployment facelab fit builds; default), 'unseen' enrolls every other unseen identity")
    p.add_argument("--out", metavar="FILE", help="for a model that is not a run: the calibrated bundle to write "
                   "(.safetensors); a run's thresholds go to RUN/thresholds.json")
    _add_embed_options(p)


def _add_hw2p2(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("hw2p2", help="CMU 11-785 HW2P2 layouts: classify, known/unknown verify, pair-list AUC",
                       description="classify: test folder -> id,label CSV. verify: ROOT/known/<id>/, "
                       "ROOT/unknown_dev/, ROOT/verification_dev.csv -> dev accuracy and submission.csv (unknowns "
                       "get n000000). pairs: 'img1 img2 [label]' list -> AUC and Id,Category submission.")
    modes = p.add_subparsers(dest="mode", required=True, metavar="MODE", help="classify, verify or pairs")
    c = modes.add_parser("classify", help="predict a training identity for every test image",
                         description="Predict a training identity for every image of a flat test folder (or of "
                         "its only sub-folder). --index-labels numbers classes as torchvision's ImageFolder does over "
                         "every class folder of the training folder, as HW2P2's grader does.")
    add_run_argument(c)
    c.add_argument("--test", required=True, metavar="DIR", help="flat folder of test images")
    c.add_argument("--out", required=True, metavar="CSV", help="where to write the id,label CSV")
    c.add_argument("--data", metavar="ROOT", help="training data (metric losses predict by class centres)")
    c.add_argument("--index-labels", action="store_true",
                   help="write class indices in ImageFolder order (sorted names of every class folder of the "
                   "training folder) instead of identity names")
    v = modes.add_parser("verify", help="open-set known/unknown verification with n000000 for unknowns",
                         description="Match each unknown image to a known identity, or n000000 below the threshold.")
    add_model_argument(v)
    v.add_argument("--root", required=True, metavar="DIR",
                   help="folder with known/, unknown_dev/, verification_dev.csv")
    v.add_argument("--csv", metavar="FILE", help="dev CSV (default ROOT/verification_dev.csv)")
    v.add_argument("--test", metavar="DIR", help="images for the submission (default ROOT/unknown_test or unknown_dev)")
    v.add_argument("--threshold", type=float, help="accept threshold (default: thresholds.json, else best on dev)")
    v.add_argument("--score", default="cosine", help="score type: cosine or squared_l2 (default cosine)")
    v.add_argument("--out", metavar="DIR", help="report folder (default: RUN/hw2p2)")
    q = modes.add_parser("pairs", help="score an 'img1 img2 [label]' pair list; AUC when labelled",
                         description="Score every pair of a pair list; report ROC AUC when labels are given.")
    add_model_argument(q)
    q.add_argument("--pairs", required=True, metavar="FILE", help="pair list, one 'img1 img2 [label]' per line")
    q.add_argument("--data", metavar="ROOT", help="image root (default: the pair file's folder)")
    q.add_argument("--out", metavar="DIR", help="report folder (default: RUN/hw2p2)")
    for m in (c, v, q):
        m.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the training device setting)")
        m.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_verifier(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verifier", help="fit the DeepFace chi-square + SVM verifier on a pair list into a bundle",
                       description="Fit the DeepFace verifier (Taigman et al. 2014: weighted chi-square distance of "
                       "[0,1]-normalised embeddings, weights learned by a linear SVM) on a labelled pair list and "
                       "write MODEL as a bundle carrying it. Its threshold is chosen at --target-far on out-of-fold "
                       "scores; the k-fold accuracy of the verifier and of cosine on the same pairs is printed. Use "
                       "it with `facelab verify A B --scorer deepface`, the API (model.verify(a, b, "
                       "scorer='deepface')) or the service (/verify with scorer=deepface).")
    add_model_argument(p)
    p.add_argument("--pairs", required=True, action="append", metavar="FILE",
                   help="labelled pair list in any `facelab pairs` format (repeat for a list split in two files)")
    p.add_argument("--data", metavar="ROOT", help="folder the pair list's image paths are relative to")
    p.add_argument("--format", help="pair-list format if the suffix does not say: lfw, kaggle, csv, bin, hw2p2")
    p.add_argument("--target-far", type=float, default=1e-3, help="FAR the threshold is chosen at (default 1e-3)")
    p.add_argument("--folds", type=int, default=10, help="folds for lists without fold information (default 10)")
    p.add_argument("-o", "--out", required=True, metavar="BUNDLE", help="bundle to write (.safetensors)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no-flip", action="store_true", help="disable horizontal-flip test-time augmentation")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    _add_eval(sub)
    _add_pairs(sub)
    _add_verifier(sub)
    _add_identify_eval(sub)
    _add_calibrate(sub)
    _add_hw2p2(sub)


def _cmd_eval(args: argparse.Namespace) -> int:
    from facelab.evaluation.protocol import evaluate, format_table

    metrics = evaluate(args.run, args.data, args.out, args.device, False if args.no_flip else None, args.quiet,
                       compare_init=args.compare_init, reference_pairs=args.reference_pairs,
                       reference_data=args.reference_data)
    print(format_table(metrics))
    return 0


def _flip(args: argparse.Namespace) -> bool | None:
    return False if args.no_flip else None


def _cmd_pairs(args: argparse.Namespace) -> int:
    from facelab.evaluation.pairs import evaluate_pairs, format_pairs_table

    scorers = tuple(x.strip() for x in args.scores.split(",") if x.strip())
    doc = evaluate_pairs(open_model(args), args.pairs, args.data, args.format, scorers, out_dir=args.out,
                         device=args.device, flip=_flip(args), folds=args.folds, cache=not args.no_cache,
                         quiet=args.quiet)
    print(format_pairs_table(doc))
    return 0


def _cmd_verifier(args: argparse.Namespace) -> int:
    from facelab.evaluation.deepface import fit_verifier

    model, r = fit_verifier(open_model(args), args.pairs, args.data, args.format, target_far=args.target_far,
                            folds=args.folds, flip=_flip(args), quiet=args.quiet)
    path = model.save_bundle(args.out)
    note = "" if r["reliable"] else f" (too few impostor pairs to measure FAR {args.target_far:g} reliably)"
    print(f"deepface verifier on {r['pairs']} pairs: k-fold accuracy {r['accuracy']:.4f} +- {r['accuracy_std']:.4f} "
          f"(cosine {r['cosine_accuracy']:.4f}); threshold {r['threshold']:.4f} at FAR {r['far']:.4g}, TAR "
          f"{r['tar']:.4f}{note}")
    print(f"bundle: {path}  (facelab verify A B --model {path} --scorer deepface)")
    return 0


def _cmd_identify_eval(args: argparse.Namespace) -> int:
    from facelab.evaluation.identification import evaluate_gallery_probes, format_identification

    doc = evaluate_gallery_probes(open_model(args), args.gallery, args.probes, args.score, args.threshold,
                                  max_rank=args.max_rank, out_dir=args.out, device=args.device, flip=_flip(args),
                                  cache=not args.no_cache, quiet=args.quiet)
    print(format_identification(doc))
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from facelab.evaluation.calibration import calibrate, format_calibration

    result = calibrate(open_model(args), pairs=args.pairs, data=args.data, gallery=args.gallery, probes=args.probes,
                       objective=args.objective, target=args.target, open_objective=args.open_objective,
                       open_target=args.open_target, open_dev=args.open_dev, score=args.score, device=args.device,
                       flip=_flip(args), out=args.out, quiet=args.quiet)
    print(format_calibration(result))
    return 0


def _cmd_hw2p2(args: argparse.Namespace) -> int:
    from facelab.evaluation import hw2p2

    if args.mode == "classify":
        r = hw2p2.classify_folder(args.run, args.test, args.out, args.data, args.index_labels, args.device,
                                  args.quiet)
        print(f"wrote {r['csv']}: {r['images']} images over {r['classes']} classes"
              + (f" (indices of {r['grader_classes']} ImageFolder classes)" if "grader_classes" in r else ""))
        if r.get("never_predicted"):
            print(f"note: {r['never_predicted']} of the training folder's {r['grader_classes']} classes were not "
                  f"trained on (held out as unseen identities, or without images) and are never predicted; for a "
                  f"submission train on every class (--train DIR, or --set data.split.open_identities=0)")
    elif args.mode == "verify":
        r = hw2p2.verify_known_unknown(open_model(args), args.root, args.csv, args.threshold, args.score, args.out,
                                       args.test, args.device, args.quiet)
        print(f"dev accuracy {r['dev_accuracy']:.4f} at threshold {r['threshold']:.4f} ({r['threshold_source']}); "
              f"submission: {r['submission']} ({r['submission_images']} images)")
    else:
        r = hw2p2.score_pair_file(open_model(args), args.pairs, args.data, args.out, args.device, args.quiet)
        auc = f"AUC {r['auc']:.4f}; " if r["auc"] is not None else ""
        print(f"{r['pairs']} pairs; {auc}submission: {r['submission']}")
    return 0


COMMANDS: dict[str, Handler] = {"eval": _cmd_eval, "pairs": _cmd_pairs, "verifier": _cmd_verifier,
                                "identify-eval": _cmd_identify_eval,
                                "calibrate": _cmd_calibrate, "hw2p2": _cmd_hw2p2}
