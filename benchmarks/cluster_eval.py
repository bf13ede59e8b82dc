"""``facelab cluster`` measured: pairwise / BCubed F and NMI of clustering unseen faces, per model, data set and
method, with an agglomerative threshold sweep around the model's calibrated 1:1 threshold.

Data sets (folders of symlinks built under --work, identities as subfolders):

- ``orl-demo-open``: the 10 ORL identities the demo never trains on (its split: ``data.split`` of demo.yaml on the
  40 identities, computed with facelab's own ``make_split``), 100 images.
- ``orl-s31-s40``: ORL s31..s40, 100 images.
- ``lfw50``: 50 LFW (deep-funneled) identities drawn with seed 0 from the 158 with >= 10 images, their first 20
  images each (sorted names), i.e. 10-20 per identity.

Each folder is embedded once per model (kept in --work/embeddings for reruns); every method then clusters the same
embeddings, and agglomerative and DBSCAN are swept over the threshold. The agglomerative run at
the calibrated threshold also writes its OUT folder (CSV, JSON, contact sheet) under --work. Results go to --json
and a PNG of the sweep beside it.

    nice -n 10 .venv/bin/python benchmarks/cluster_eval.py --models sface [RUN ...] --json docs/clustering.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import facelab
from facelab.config import load_config
from facelab.data.folder import scan_folder
from facelab.data.splits import make_split
from facelab.demo import demo_config_path
from facelab.evaluation.cluster_folder import EmbeddedFolder, cluster_folder, embed_folder
from facelab.evaluation.clustering import cluster_embeddings, score_clustering
from facelab.images import FileTally
from facelab.inference.thresholds import VERIFICATION

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FACELAB_SHARED_DATA") or REPO.parent / "shared" / "data")  # as tests/conftest.py
SWEEP = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def link_folder(dst: Path, files: dict[str, list[Path]]) -> Path:
    for ident, paths in files.items():
        (dst / ident).mkdir(parents=True, exist_ok=True)
        for p in paths:
            link = dst / ident / p.name
            if not link.exists():
                link.symlink_to(p.resolve())
    return dst


def datasets(data: Path, work: Path) -> dict[str, Path]:
    orl, lfw = data / "att_faces", data / "lfw_deepfunneled"
    cfg = load_config(demo_config_path(), [f"data.root={orl}"])
    open_ids = make_split(scan_folder(orl, verify=False), cfg.data.split).open_identities
    out = {"orl-demo-open": link_folder(work / "orl-demo-open",
                                        {i: sorted((orl / i).glob("*.pgm")) for i in open_ids}),
           "orl-s31-s40": link_folder(work / "orl-s31-s40",
                                      {f"s{i}": sorted((orl / f"s{i}").glob("*.pgm")) for i in range(31, 41)})}
    eligible = sorted(d.name for d in lfw.iterdir() if d.is_dir() and len(list(d.glob("*.jpg"))) >= 10)
    pick = sorted(random.Random(0).sample(eligible, 50))
    out["lfw50"] = link_folder(work / "lfw50", {i: sorted((lfw / i).glob("*.jpg"))[:20] for i in pick})
    print(f"orl-demo-open: {open_ids}; lfw50 from {len(eligible)} identities with >= 10 images")
    return out


def cached_embeddings(folder: Path, ref: str, name: str, root: Path, model: Any) -> EmbeddedFolder:
    """embed_folder, kept in FOLDER/<model>-<set>-<fingerprint>.npz so a rerun (e.g. a new sweep) is instant."""
    path = folder / f"{Path(ref).name}-{name}-{model.fingerprint[:12]}.npz"
    if path.is_file():
        z = np.load(path)
        tally = FileTally([str(p) for p in z["paths"]], [], [], [])
        return EmbeddedFolder(root, list(tally.images), z["embeddings"], tally, int(z["undetected"]))
    emb = embed_folder(root, model, progress=True)
    if not emb.tally.failed:  # only complete results are kept
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(path, paths=np.array(emb.paths), embeddings=emb.embeddings, undetected=emb.undetected)
    return emb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["sface"], help="model references (default: sface)")
    ap.add_argument("--sets", nargs="+", default=["orl-demo-open", "orl-s31-s40", "lfw50"])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--work", type=Path, default=Path("/tmp/facelab-cluster-eval"))
    ap.add_argument("--json", type=Path, default=Path("docs/clustering.json"))
    args = ap.parse_args()
    folders = datasets(args.data, args.work / "data")
    results = []
    for ref in args.models:
        model = facelab.load(ref)
        t = model.threshold(VERIFICATION)
        for name in args.sets:
            start = time.perf_counter()
            emb = cached_embeddings(args.work / "embeddings", ref, name, folders[name], model)
            seconds = time.perf_counter() - start
            ids = [p.split("/", 1)[0] for p in emb.paths]
            label = Path(ref).name if Path(ref).exists() else ref
            cluster_folder(folders[name], model, args.work / "out" / f"{label}-{name}", embedded=emb,
                           progress=False)
            row = {"model": label, "set": name, "faces": len(emb.paths), "identities": len(set(ids)),
                   "undetected": emb.undetected, "unusable": len(emb.tally.failed), "embed_seconds": round(seconds, 1),
                   "threshold": t.value, "threshold_source": t.source, "methods": {}, "sweep": {}}
            for method, thr in (("agglomerative", t.value), ("dbscan", t.value), ("hdbscan", None)):
                labels = cluster_embeddings(emb.embeddings, method, thr)
                row["methods"][method] = {**score_clustering(labels, ids).to_dict(),
                                          "noise": int((labels == -1).sum())}
            for method in ("agglomerative", "dbscan"):
                row["sweep"][method] = {}
                for thr in SWEEP:
                    labels = cluster_embeddings(emb.embeddings, method, thr)
                    row["sweep"][method][str(thr)] = score_clustering(labels, ids).to_dict()
            results.append(row)
            m = row["methods"]
            print(f"\n{label:>12} {name:>14}: {row['faces']} faces / {row['identities']} ids, t={t.value:.3f}: "
                  + "; ".join(f"{k} pairF {v['pairwise_f']:.3f} BCubF {v['bcubed_f']:.3f} NMI {v['nmi']:.3f} "
                              f"K={v['clusters']}" for k, v in m.items()))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"command": "benchmarks/cluster_eval.py", "results": results}, indent=2) + "\n")
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, row in enumerate(results):
        for method, style in (("agglomerative", "-"), ("dbscan", "--")):
            sweep = row["sweep"][method]
            ax.plot([float(k) for k in sweep], [v["pairwise_f"] for v in sweep.values()], marker="o", ls=style,
                    color=f"C{i}", label=f"{row['model']} {row['set']} {method}")
        ax.axvline(row["threshold"], color="grey", lw=0.5, ls=":")
    ax.set_xlabel("1:1 threshold t (cosine); agglomerative distance threshold and DBSCAN eps = 1 - t")
    ax.set_ylabel("pairwise F")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.json.with_suffix(".png"), dpi=120)
    print(f"-> {args.json}, {args.json.with_suffix('.png')}")


if __name__ == "__main__":
    main()
