"""What ``facelab eval`` adds for a fine-tuned run (``init.model``): the init model scored on the same split, and a
forgetting check -- k-fold accuracy of the init model and of the run on a reference pair list (e.g. LFW
``pairs.txt``): fine-tuning on a few identities should not make the model worse on everyone else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from facelab.config import TrainConfig
from facelab.data import eval_transform
from facelab.data.align import face_preparer, resolved_align
from facelab.evaluation.embedder import Embedder, model_fingerprint
from facelab.evaluation.pairs import read_pairs, score_pairs
from facelab.runs import EMBEDDING_CACHE, LoadedRun


def init_backbone(cfg: TrainConfig, device: torch.device) -> nn.Module:
    """The model a fine-tuned run started from (its ``init.model``), in eval mode on ``device``."""
    from facelab.engine.finetune import resolve_init

    return resolve_init(cfg.init.model, cfg.init.accept_licence).module.to(device).eval()


def _kfold(emb: Any, pairs: Any) -> dict[str, float]:
    result = score_pairs(emb, pairs, ("cosine",))["cosine"]
    kf, report = result["kfold"], result["report"]
    return {"accuracy": kf["accuracy_mean"], "std": kf["accuracy_std"], "roc_auc": report["roc_auc"]}


def forgetting_check(run: LoadedRun, init: nn.Module, pairs_file: str | Path, data_root: str | Path | None,
                     flip: bool, quiet: bool = False) -> dict[str, Any]:
    """k-fold accuracy (cosine, threshold chosen on the other folds) of ``init`` and of the run on a pair list,
    embedded with the run's preprocessing and alignment; both cached in ``RUN/embedding_cache``."""
    cfg = run.cfg
    pairs = read_pairs(pairs_file, data_root)
    after = Embedder.from_run(run, flip=flip, progress=not quiet)
    align = resolved_align(cfg.data)
    extra = {} if align == "none" else {"align": align}
    before = Embedder(init, cfg.data.input_size, eval_transform(cfg.data), device=run.device, flip=flip,
                      batch_size=cfg.eval.batch_size, cache_dir=run.path / EMBEDDING_CACHE, progress=not quiet,
                      fingerprint=model_fingerprint(init, input_size=cfg.data.input_size, flip=flip,
                                                    mean=cfg.data.mean, std=cfg.data.std, **extra),
                      prepare=face_preparer(cfg.data))
    name = Path(pairs_file).name
    b = _kfold(before.embed(pairs.images, desc=f"init model, {name}"), pairs)
    a = _kfold(after.embed(pairs.images, desc=f"this run, {name}"), pairs)
    return {"name": name, "pairs_file": str(pairs_file), "pairs": len(pairs), "folds": len(set(pairs.folds.tolist())),
            "init": cfg.init.model, "before": b, "after": a,
            "change_points": 100.0 * (a["accuracy"] - b["accuracy"]),
            "images_without_face": max(before.no_face, after.no_face)}
