"""``facelab eval``: score a trained run on the split it was trained with.

* closed set: top-1/top-5 classification of held-out images of training identities;
* open set 1:1: every pair of images of the unseen identities, cosine score, ROC AUC / EER / TAR@FAR;
* open set 1:N: rank-1 identification of unseen identities against a one-image-per-identity gallery.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facelab.errors import FacelabError
from facelab.evaluation.metrics import all_pairs, normalize, roc_curve, topk_accuracy, verification_report
from facelab.evaluation.plots import plot_histogram, plot_roc, score_histogram
from facelab.inference.model import FaceModel, load_model
from facelab.utils.io import write_json

log = logging.getLogger(__name__)


def identification_rank1(emb: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """One randomly chosen (seeded) gallery image per identity; every other image is a probe."""
    rng = random.Random(seed)
    gallery_idx = []
    for ident in np.unique(labels):
        gallery_idx.append(rng.choice(np.nonzero(labels == ident)[0].tolist()))
    gallery_idx = np.array(sorted(gallery_idx))
    probe_mask = np.ones(len(labels), bool)
    probe_mask[gallery_idx] = False
    if not probe_mask.any():
        raise FacelabError("rank-1 identification needs at least 2 images of some unseen identity")
    sims = normalize(emb[probe_mask]) @ normalize(emb[gallery_idx]).T
    predicted = labels[gallery_idx][np.argmax(sims, axis=1)]
    return {"rank1": float(np.mean(predicted == labels[probe_mask])), "gallery": len(gallery_idx),
            "probes": int(probe_mask.sum())}


def evaluate(run: str | Path | FaceModel, data_root: str | None = None, out_dir: str | Path | None = None,
             device: str | None = None, flip: bool | None = None, quiet: bool = False) -> dict[str, Any]:
    """``facelab eval``: score a run on the held-out images of its own split (see the module docstring); writes
    metrics.json, roc.png/.json and scores_hist.png into ``out_dir`` (default: the run folder).

    Raises:
        FacelabError: not a training run, data folder missing, or a held-out image that cannot be used (named).
    """
    model = load_model(run, device=device)
    if model.run is None:
        raise FacelabError(f"facelab eval scores a training run on its own split; {model.kind} {model.source} has "
                           f"none (use facelab pairs / identify-eval for other data)")
    loaded = model.run
    cfg, manifest, loss_fn, dev = loaded.cfg, loaded.manifest, loaded.loss, loaded.device
    root = Path(data_root or cfg.data.root)
    if not root.is_dir():
        raise FacelabError(f"data folder not found: {root} (pass --data to point at the folder trained on)")
    out = Path(out_dir) if out_dir else loaded.path
    embedder = model.embedder(progress=not quiet, cache=True, flip=flip, batch_size=cfg.eval.batch_size)
    use_flip = embedder.flip

    def embed(items: list[tuple[str, int]], desc: str) -> np.ndarray:
        return embedder.embed_all([root / p for p, _ in items], desc)

    metrics: dict[str, Any] = {
        "run": str(run),
        "epochs": loaded.epoch,
        "backbone": cfg.model.backbone,
        "loss": cfg.loss.name,
        "flip_tta": use_flip,
        "score": "cosine",
    }
    if manifest.closed_test:
        emb = embed(manifest.closed_test, "closed set")
        labels = np.array([y for _, y in manifest.closed_test])
        with torch.no_grad():
            logits = loss_fn.logits(torch.from_numpy(emb).to(dev))
        if logits is None:  # metric loss: nearest class centre of the training embeddings
            train_emb = normalize(embed(manifest.train, "class centres"))
            train_y = np.array([y for _, y in manifest.train])
            centres = normalize(np.stack([train_emb[train_y == c].mean(0) for c in range(manifest.num_classes)]))
            scores = normalize(emb) @ centres.T
        else:
            scores = logits.float().cpu().numpy()
        metrics["closed_set"] = {"images": len(labels), "classes": manifest.num_classes,
                                 **topk_accuracy(scores, labels)}
    if manifest.open_test:
        emb = normalize(embed(manifest.open_test, "open set"))
        labels = np.array([y for _, y in manifest.open_test])
        scores, same = all_pairs(emb, labels)
        report = verification_report(scores, same, cfg.eval.far_targets)
        metrics["open_set"] = {
            "identities": len(manifest.open_identities),
            "images": len(labels),
            "verification": report,
            "identification": identification_rank1(emb, labels, manifest.seed),
        }
        roc = roc_curve(scores, same)
        plot_roc(roc, report, out / "roc.png")
        hist = score_histogram(scores, same)
        thresholds = {"EER": report["eer_threshold"]}
        thresholds.update({f"FAR {op['far_target']:g}": op["threshold"] for op in report["tar_at_far"]
                           if op["reliable"]})
        plot_histogram(hist, thresholds, out / "scores_hist.png")
        keep = np.unique(np.linspace(0, len(roc.fpr) - 1, min(len(roc.fpr), 2000)).astype(int))
        write_json(out / "roc.json", {
            "score": "cosine",
            "fpr": roc.fpr[keep].tolist(),
            "tpr": roc.tpr[keep].tolist(),
            "thresholds": [float(t) if np.isfinite(t) else None for t in roc.thresholds[keep]],
            "histogram": hist,
            "histogram_thresholds": thresholds,
        })
    write_json(out / "metrics.json", metrics)
    if cfg.train.tensorboard:
        log_to_tensorboard(loaded.path / "tensorboard", metrics, loaded.epoch)
    return metrics


def log_to_tensorboard(logdir: Path, metrics: dict[str, Any], epoch: int) -> None:
    """Evaluation figures beside the training curves of a run trained with ``train.tensorboard`` (x axis: epoch)."""
    from facelab.utils.extras import require_tensorboard

    scalars: dict[str, float] = {}
    if "closed_set" in metrics:
        scalars["eval/closed_top1"] = metrics["closed_set"]["top1"]
        scalars["eval/closed_top5"] = metrics["closed_set"]["top5"]
    if "open_set" in metrics:
        v = metrics["open_set"]["verification"]
        scalars["eval/open_roc_auc"] = v["roc_auc"]
        scalars["eval/open_eer"] = v["eer"]
        scalars["eval/open_rank1"] = metrics["open_set"]["identification"]["rank1"]
        for op in v["tar_at_far"]:
            scalars[f"eval/open_tar_at_far_{op['far_target']:g}"] = op["tar"]
    writer = require_tensorboard()(str(logdir))
    try:
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, epoch)
    finally:
        writer.close()


def format_table(metrics: dict[str, Any]) -> str:
    rows = []
    if "closed_set" in metrics:
        c = metrics["closed_set"]
        rows.append(("closed set", f"{c['classes']} identities, {c['images']} held-out images", ""))
        rows.append(("", "top-1 accuracy", f"{c['top1']:.4f}"))
        rows.append(("", "top-5 accuracy", f"{c['top5']:.4f}"))
    if "open_set" in metrics:
        o = metrics["open_set"]
        v = o["verification"]
        rows.append(("open set", f"{o['identities']} unseen identities, {o['images']} images", ""))
        rows.append(("", "pairs (genuine / impostor)", f"{v['pairs']['genuine']} / {v['pairs']['impostor']}"))
        rows.append(("", "verification ROC AUC", f"{v['roc_auc']:.4f}"))
        rows.append(("", "EER", f"{v['eer']:.4f} (threshold {v['eer_threshold']:.3f})"))
        for op in v["tar_at_far"]:
            note = "" if op["reliable"] else " (too few impostor pairs)"
            rows.append(("", f"TAR @ FAR={op['far_target']:g}",
                         f"{op['tar']:.4f} (threshold {op['threshold']:.3f}){note}"))
        ident = o["identification"]
        rows.append(("", f"rank-1 identification ({ident['gallery']} gallery, {ident['probes']} probes)",
                     f"{ident['rank1']:.4f}"))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows)
