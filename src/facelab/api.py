"""The short Python API, re-exported from the package root::

    import facelab

    model = facelab.load("runs/mine")          # a run, checkpoint, bundle, pretrained name or .onnx file
    emb = model.embed(["a.jpg", "b.jpg"])      # (2, D) unit-length float32; paths, bytes, PIL images, arrays
    result = model.verify("a.jpg", "b.jpg")    # Verification(score, threshold, threshold_source, same_person)

    gallery = facelab.Gallery("people.db", model)
    gallery.enroll("alice", ["alice1.jpg", "alice2.jpg"])
    for face in gallery.identify("group.jpg", k=3):   # one result per face, with its box
        print(face.identity or "unknown", face.face.box)

    run = facelab.train("my.yaml", data="my_faces", out="runs/mine", epochs=10)
    report = facelab.evaluate(run.out_dir)

Everything here is a thin door onto the packages that do the work (inference, serving, engine, evaluation, models,
losses); errors the user can fix are :class:`facelab.FacelabError` with a one-line message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facelab.config import LossConfig, ModelConfig, TrainConfig, apply_overrides, from_dict, load_config, to_dict
from facelab.engine import TrainResult
from facelab.errors import FacelabError
from facelab.inference.model import FaceModel, Verification, load_model
from facelab.losses import FaceLoss, build_loss
from facelab.models import Backbone, build_backbone
from facelab.serving.recognition import FaceGallery as Gallery

__all__ = ["Evaluation", "FaceModel", "Gallery", "Verification", "create_backbone", "create_loss", "evaluate",
           "load", "train"]


def load(model: str | Path | FaceModel, *, device: str | None = None, accept_licence: bool = False) -> FaceModel:
    """Open a model: a run folder, a checkpoint (.pt), a bundle (.safetensors), a pretrained model name or an
    .onnx file. ``device``: "cpu", "cuda", "auto" (default: the run's setting, else auto). ``accept_licence``
    accepts the licence of a gated pretrained model. Raises FacelabError naming what would have worked."""
    return load_model(model, device=device, accept_licence=accept_licence)


_TRAIN_KEYWORDS = {"data": "data.root", "out": "out_dir", "epochs": "optim.epochs", "backbone": "model.backbone",
                   "loss": "loss.name", "batch_size": "data.batch_size", "lr": "optim.lr",
                   "input_size": "data.input_size", "device": "device", "align": "data.align",
                   "train": "data.train", "val": "data.val"}


def train(config: TrainConfig | dict[str, Any] | str | Path | None = None, *, resume: bool = False,
          quiet: bool = True, overrides: list[str] | None = None, **keywords: Any) -> TrainResult:
    """Train a model (what ``facelab train`` does). ``config``: a TrainConfig, a nested dict, or a YAML path (None:
    the defaults). Keywords set common keys (data, out, epochs, backbone, loss, batch_size, lr, input_size, device,
    align); ``overrides`` any key as "section.key=value" strings. Returns the run folder, checkpoint and history.

    Raises:
        FacelabError: an unknown keyword or config key (with a suggestion), bad data, or a failed run.
    """
    from facelab.engine import train as run_training
    from facelab.evaluation.pairs import validation_pairs

    unknown = set(keywords) - set(_TRAIN_KEYWORDS)
    if unknown:
        raise FacelabError(f"unknown train() keyword(s) {', '.join(sorted(unknown))}; use one of "
                           f"{', '.join(sorted(_TRAIN_KEYWORDS))} or overrides=['key.path=value']")
    sets = [f"{_TRAIN_KEYWORDS[k]}={v}" for k, v in keywords.items() if v is not None]
    sets += list(overrides or [])
    if isinstance(config, TrainConfig):
        cfg = from_dict(TrainConfig, apply_overrides(to_dict(config), sets))
    elif isinstance(config, dict):
        cfg = from_dict(TrainConfig, apply_overrides(dict(config), sets))
    else:
        cfg = load_config(config, sets)
    return run_training(cfg, resume=resume, quiet=quiet, pair_reader=validation_pairs)


@dataclass(frozen=True)
class Evaluation:
    """The figures of ``facelab eval`` on a run's own split (None where the split has no such data): closed-set
    top-1/top-5 accuracy; open-set ROC AUC, EER, TAR at each FAR target, rank-1 identification. ``metrics`` is the
    full report as written to ``out_dir/metrics.json``."""

    closed_top1: float | None
    closed_top5: float | None
    roc_auc: float | None
    eer: float | None
    tar_at_far: dict[float, float]
    rank1: float | None
    out_dir: Path
    metrics: dict[str, Any] = field(repr=False)


def evaluate(run: str | Path | FaceModel, *, data: str | Path | None = None, out: str | Path | None = None,
             device: str | None = None, flip: bool | None = None, quiet: bool = True) -> Evaluation:
    """Score a training run on the held-out images of its split (closed set) and on its unseen identities (open
    set); reports land in ``out`` (default: the run folder). Raises FacelabError for a model without a run."""
    from facelab.evaluation.protocol import evaluate as run_eval

    model = load_model(run, device=device)
    m = run_eval(model, str(data) if data else None, out, device, flip, quiet)
    closed, opened = m.get("closed_set", {}), m.get("open_set", {})
    v = opened.get("verification", {})
    return Evaluation(closed.get("top1"), closed.get("top5"), v.get("roc_auc"), v.get("eer"),
                      {op["far_target"]: op["tar"] for op in v.get("tar_at_far", [])},
                      opened.get("identification", {}).get("rank1"),
                      Path(out) if out else model.run.path, m)  # type: ignore[union-attr]


def create_backbone(name: str = "resnet18", *, embedding_dim: int = 512, width: int = 64, input_size: int = 112,
                    dropout: float = 0.0, **options: Any) -> Backbone:
    """A registered backbone (``facelab models`` lists them) as an nn.Module: (B, 3, S, S) -> (B, embedding_dim).
    ``options`` are the backbone's own (norm, head, drop_block, ...)."""
    return build_backbone(ModelConfig(backbone=name, embedding_dim=embedding_dim, width=width, dropout=dropout,
                                      options=options), input_size)


def create_loss(name: str = "arcface", *, embedding_dim: int = 512, num_classes: int, **options: Any) -> FaceLoss:
    """A registered loss (softmax, arcface, cosface, sphereface, triplet, contrastive, center, joint, ...) called
    as ``loss(embeddings (B, D), labels (B,)) -> LossOutput``; ``options`` are the loss's own (scale, margin, ...)."""
    return build_loss(LossConfig(name=name, options=options), embedding_dim, num_classes)
