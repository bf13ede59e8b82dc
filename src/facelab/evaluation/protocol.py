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

from facelab.data import SplitManifest
from facelab.errors import FacelabError
from facelab.evaluation.metrics import all_pairs, normalize, roc_curve, topk_accuracy, verification_report
from facelab.evaluation.plots import plot_histogram, plot_roc, score_histogram
from facelab.inference.model import FaceModel, load_model
from facelab.losses import FaceLoss
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


def score_split(model: FaceModel, manifest: SplitManifest, root: Path, far_targets: tuple[float, ...],
                loss_fn: FaceLoss | None = None, *, flip: bool | None = None, batch_size: int | None = None,
                quiet: bool = False, label: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """Closed-set and open-set figures of ``model`` on the held-out images of ``manifest`` (embedded through the
    model's embedder, cached in its run's ``embedding_cache/``).

    Closed set: the loss's class scores, or (a metric loss, or ``loss_fn=None`` for a model that never saw these
    identities, e.g. a pretrained one scored zero-shot) the nearest class centre of the training embeddings.
    Returns (metrics, curves); curves holds the open-set scores for the plots.
    """
    embedder = model.embedder(progress=not quiet, cache=True, flip=flip, batch_size=batch_size)
    prefix = f"{label}: " if label else ""

    def embed(items: list[tuple[str, int]], desc: str) -> np.ndarray:
        return embedder.embed_all([root / p for p, _ in items], prefix + desc)

    metrics: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    if manifest.closed_test:
        emb = embed(manifest.closed_test, "closed set")
        labels = np.array([y for _, y in manifest.closed_test])
        logits = None
        if loss_fn is not None:
            with torch.no_grad():
                logits = loss_fn.logits(torch.from_numpy(emb).to(model.device))
        if logits is None:  # nearest class centre of the training embeddings
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
        report = verification_report(scores, same, far_targets)
        metrics["open_set"] = {
            "identities": len(manifest.open_identities),
            "images": len(labels),
            "verification": report,
            "identification": identification_rank1(emb, labels, manifest.seed),
        }
        curves = {"scores": scores, "same": same, "report": report}
    metrics["flip_tta"] = embedder.flip
    return metrics, curves


def evaluate(run: str | Path | FaceModel, data_root: str | None = None, out_dir: str | Path | None = None,
             device: str | None = None, flip: bool | None = None, quiet: bool = False, *,
             compare_init: bool = False, reference_pairs: str | Path | None = None,
             reference_data: str | Path | None = None) -> dict[str, Any]:
    """``facelab eval``: score a run on the held-out images of its own split (see the module docstring); writes
    metrics.json, roc.png/.json and scores_hist.png into ``out_dir`` (default: the run folder).

    For a fine-tuned run (``init.model``): ``compare_init`` adds the init model's figures on the same split and
    crops (``init_model``: zero-shot, closed set by nearest class centre), and ``reference_pairs`` (e.g. LFW
    pairs.txt) a forgetting check (``forgetting``): k-fold accuracy of the init model and of the run on that list.

    Raises:
        FacelabError: not a training run, data folder missing, a held-out image that cannot be used (named), or
            --compare-init / --reference-pairs for a run trained from scratch.
    """
    model = load_model(run, device=device)
    if model.run is None:
        raise FacelabError(f"facelab eval scores a training run on its own split; {model.kind} {model.source} has "
                           f"none (use facelab pairs / identify-eval for other data)")
    loaded = model.run
    cfg, manifest, loss_fn = loaded.cfg, loaded.manifest, loaded.loss
    root = Path(data_root or cfg.data.root)
    if not root.is_dir():
        raise FacelabError(f"data folder not found: {root} (pass --data to point at the folder trained on)")
    if (compare_init or reference_pairs) and not cfg.init.model:
        raise FacelabError(f"{run} was trained from scratch: --compare-init and --reference-pairs compare a "
                           f"fine-tuned run with the model it started from")
    out = Path(out_dir) if out_dir else loaded.path
    split, curves = score_split(model, manifest, root, cfg.eval.far_targets, loss_fn, flip=flip,
                                batch_size=cfg.eval.batch_size, quiet=quiet)
    metrics: dict[str, Any] = {
        "run": str(run),
        "epochs": loaded.epoch,
        "backbone": cfg.model.backbone,
        "loss": cfg.loss.name,
        "flip_tta": split.pop("flip_tta"),
        "score": "cosine",
        **({"init": cfg.init.model} if cfg.init.model else {}),
        **split,
    }
    if curves:
        scores, same, report = curves["scores"], curves["same"], curves["report"]
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
    if compare_init or reference_pairs:
        from facelab.evaluation.finetune import forgetting_check, init_model_like

        init = init_model_like(model)
        if compare_init:
            zero_shot, _ = score_split(init, manifest, root, cfg.eval.far_targets, None, flip=flip,
                                       batch_size=cfg.eval.batch_size, quiet=quiet, label="init model")
            zero_shot.pop("flip_tta")
            metrics["init_model"] = {"model": cfg.init.model, **zero_shot}
        if reference_pairs:
            metrics["forgetting"] = forgetting_check(model, init, reference_pairs, reference_data, flip=flip,
                                                     quiet=quiet)
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


def _split_rows(metrics: dict[str, Any], label: str = "") -> list[tuple[str, str, str]]:
    rows = []
    tag = f" ({label})" if label else ""
    if "closed_set" in metrics:
        c = metrics["closed_set"]
        rows.append((f"closed set{tag}", f"{c['classes']} identities, {c['images']} held-out images", ""))
        rows.append(("", "top-1 accuracy", f"{c['top1']:.4f}"))
        rows.append(("", "top-5 accuracy", f"{c['top5']:.4f}"))
    if "open_set" in metrics:
        o = metrics["open_set"]
        v = o["verification"]
        rows.append((f"open set{tag}", f"{o['identities']} unseen identities, {o['images']} images", ""))
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
    return rows


def format_table(metrics: dict[str, Any]) -> str:
    rows = _split_rows(metrics)
    if "init_model" in metrics:
        rows += _split_rows(metrics["init_model"], f"init model {metrics['init_model']['model']}, zero-shot")
    if "forgetting" in metrics:
        f = metrics["forgetting"]
        rows.append(("forgetting", f"{f['name']}: {f['pairs']} pairs, {f['folds']}-fold accuracy", ""))
        rows.append(("", f"init model {f['init']}", f"{f['before']['accuracy']:.4f} ± {f['before']['std']:.4f}"))
        rows.append(("", "this run", f"{f['after']['accuracy']:.4f} ± {f['after']['std']:.4f}"))
        rows.append(("", "change (points)", f"{f['change_points']:+.2f}"))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows)
