"""CLI: ``facelab cluster DIR --model MODEL --out OUT`` -- group unlabelled faces by person."""

from __future__ import annotations

import argparse
import sys

from facelab.cli.common import Handler, add_model_argument, dumps, open_model


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cluster", help="group the faces under a folder by person (agglomerative, DBSCAN or HDBSCAN)",
        description="Embed every image under DIR (aligned when the model says so), cluster the embeddings and write "
        "OUT/clusters.csv (path,cluster), OUT/clusters.json, OUT/clusters/cluster_NNNN/ (symlinks or copies, "
        "largest cluster first) and OUT/contact_sheet.png. The default, agglomerative average linkage on cosine "
        "distance, merges groups while their average distance is below 1 - the model's calibrated 1:1 threshold. "
        "When every image is in an identity subfolder the clustering is scored against them (pairwise and BCubed "
        "precision/recall/F, NMI). Needs scikit-learn: pip install 'facelab[cluster]'.")
    p.add_argument("dir", metavar="DIR", help="folder of face photos (any depth)")
    add_model_argument(p, positional=False)
    p.add_argument("--out", "-o", required=True, metavar="OUT", help="output folder (outside DIR)")
    p.add_argument("--method", default="agglomerative", choices=("agglomerative", "dbscan", "hdbscan"),
                   help="clustering algorithm (default agglomerative)")
    p.add_argument("--threshold", type=float, metavar="COS",
                   help="1:1 accept threshold (cosine score) instead of the model's calibrated one; the distance "
                   "threshold (agglomerative) or eps (dbscan) is 1 - COS")
    p.add_argument("--target-far", type=float, metavar="FAR",
                   help="re-target the calibrated threshold to this false accept rate instead")
    p.add_argument("--min-samples", type=int, default=2,
                   help="dbscan: neighbours for a core point; hdbscan: smallest cluster (default 2)")
    p.add_argument("--link", default="symlink", choices=("symlink", "copy", "none"),
                   help="per-cluster folders of symlinks (default), copies, or none")
    p.add_argument("--sheet-clusters", type=int, default=20, metavar="N",
                   help="clusters shown on the contact sheet, largest first (default 20)")
    p.add_argument("--batch-size", type=int, help="images per forward pass (default: 8 on CPU, 64 on a GPU)")
    p.add_argument("--json", action="store_true", help="print clusters.json's summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _cmd_cluster(args: argparse.Namespace) -> int:
    from facelab.evaluation.cluster_folder import cluster_folder
    from facelab.utils.extras import require

    require("sklearn", "cluster")  # before loading the model: a missing extra is a one-line error at once
    model = open_model(args)
    report = cluster_folder(args.dir, model, args.out, method=args.method, threshold=args.threshold,
                            target_far=args.target_far, min_samples=args.min_samples, link=args.link,
                            sheet_clusters=args.sheet_clusters, batch_size=args.batch_size,
                            progress=not args.quiet)
    print(dumps(report.to_dict()) if args.json else report.summary())
    print(report.tally.summary(), file=sys.stderr)
    return 0


COMMANDS: dict[str, Handler] = {"cluster": _cmd_cluster}
