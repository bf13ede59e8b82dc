"""What ``facelab eval`` adds for a fine-tuned run (``init.model``): the init model scored on the same split, and a
forgetting check -- k-fold accuracy of the init model and of the run on a reference pair list (e.g. LFW
``pairs.txt``): fine-tuning on a few identities should not make the model worse on everyone else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from facelab.evaluation.pairs import PairList, read_pairs, score_pairs
from facelab.inference.model import FaceModel, load_model


def init_model_like(run_model: FaceModel) -> FaceModel:
    """The model a fine-tuned run started from, fed exactly like the run (its input spec: same crops, same
    normalisation), on the run's device; its embeddings are cached in the run's ``embedding_cache/`` under its own
    fingerprint."""
    assert run_model.run is not None
    cfg = run_model.run.cfg
    init = load_model(cfg.init.model, device=str(run_model.device), accept_licence=cfg.init.accept_licence)
    return FaceModel.from_module(init.backbone, init.architecture, run_model.spec, source=init.source,
                                 kind=init.kind, device=run_model.device, info=init.info, run=run_model.run)


def _kfold(model: FaceModel, pairs: PairList, flip: bool | None, quiet: bool, label: str) -> dict[str, float]:
    embedder = model.embedder(progress=not quiet, cache=True, flip=flip)
    emb = embedder.embed_all(pairs.images, desc=f"{label}, {pairs.source.name}")
    result = score_pairs(emb, pairs, ("cosine",))["cosine"]
    kf, report = result["kfold"], result["report"]
    return {"accuracy": kf["accuracy_mean"], "std": kf["accuracy_std"], "roc_auc": report["roc_auc"]}


def forgetting_check(run_model: FaceModel, init: FaceModel, pairs_file: str | Path,
                     data_root: str | Path | None = None, *, flip: bool | None = None,
                     quiet: bool = False) -> dict[str, Any]:
    """k-fold accuracy (cosine, threshold chosen on the other folds: LFW's protocol) of ``init`` and of the run on
    a pair list, both embedded with the run's input spec. ``change_points`` = 100 x (after - before)."""
    assert run_model.run is not None
    pairs = read_pairs(pairs_file, data_root)
    before = _kfold(init, pairs, flip, quiet, "init model")
    after = _kfold(run_model, pairs, flip, quiet, "this run")
    return {"name": Path(pairs_file).name, "pairs_file": str(pairs_file), "pairs": len(pairs),
            "folds": len(set(pairs.folds.tolist())), "init": run_model.run.cfg.init.model, "before": before,
            "after": after, "change_points": 100.0 * (after["accuracy"] - before["accuracy"])}
