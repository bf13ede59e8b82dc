"""LFW pairs.txt, all 10 folds, with two facelab models that never saw the identities they score.

Run A (trained on the people of folds 6-10) embeds the images of folds 1-5, run B (trained on folds 1-5) those of
folds 6-10; then the standard protocol runs on all 6000 pairs: per fold, the threshold with the best accuracy on the
other 9 folds. Embeddings come from each run's cache when `facelab pairs` has already scored its half. See
docs/evaluation.md for the commands that make the crops and the runs (benchmarks/lfw_eval_prep.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from facelab.evaluation.pairs import PairList, format_pairs_table, read_pairs, score_pairs
from facelab.evaluation.report import write_verification_report
from facelab.inference.model import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=Path, required=True, help="LFW pairs.txt, or the CSV of all 10 folds that "
                    "lfw_eval_prep.py writes (pairs_folds_1-10.csv)")
    ap.add_argument("--crops", type=Path, required=True, help="image root the pairs resolve in (the crops)")
    ap.add_argument("--run-a", type=Path, required=True, help="run that scores folds 1-5 (trained on 6-10)")
    ap.add_argument("--run-b", type=Path, required=True, help="run that scores folds 6-10 (trained on 1-5)")
    ap.add_argument("--out", type=Path, required=True, help="report folder")
    ap.add_argument("--scores", default="cosine,squared_l2", help="fixed score types to report")
    args = ap.parse_args()
    pairs = read_pairs(args.pairs, args.crops)
    pairs.folds = pairs.folds - pairs.folds.min()  # pairs.txt folds count from 0, a CSV's fold column from 1
    embs, first, second = [], np.zeros(len(pairs), int), np.zeros(len(pairs), int)
    offset, calls = 0, 0
    for run, half in ((args.run_a, range(0, 5)), (args.run_b, range(5, 10))):
        rows = np.isin(pairs.folds, list(half))
        used = np.unique(np.r_[pairs.first[rows], pairs.second[rows]])
        local = {int(g): i for i, g in enumerate(used)}
        embedder = load_model(run).embedder(progress=True, cache=True)
        embs.append(embedder.embed_all([pairs.images[i] for i in used], desc=f"{run.name}: folds {half[0] + 1}-"
                                       f"{half[-1] + 1}"))
        calls += embedder.calls
        first[rows] = [offset + local[int(i)] for i in pairs.first[rows]]
        second[rows] = [offset + local[int(i)] for i in pairs.second[rows]]
        offset += len(used)
    combined = PairList(pairs.source, [], first, second, pairs.labels, pairs.folds)
    results = score_pairs(np.concatenate(embs), combined, tuple(args.scores.split(",")))
    meta = {"name": "LFW pairs.txt (cross-trained halves)", "pairs_file": str(args.pairs), "run_a": str(args.run_a),
            "run_b": str(args.run_b), "images": offset, "pairs_total": len(pairs), "images_embedded_now": calls}
    doc = write_verification_report(args.out, meta, results, prefix="lfw")
    doc["out_dir"] = str(args.out)
    print(format_pairs_table(doc))


if __name__ == "__main__":
    main()
