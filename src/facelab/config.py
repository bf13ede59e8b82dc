"""Typed configs: dataclasses that round-trip through YAML and reject unknown keys with a suggestion.

A typo such as ``optim.lerning_rate`` must fail loudly before training starts, not be silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from facelab.errors import FacelabError

T = TypeVar("T")


@dataclass
class SplitConfig:
    """How identities and images are divided; the result is frozen into a manifest for evaluation to reuse."""

    seed: int = 0
    #: identities held out entirely for open-set evaluation (a count, or a fraction if < 1)
    open_identities: float = 0.25
    #: images of every training identity held out for closed-set evaluation (at most; see the two caps below)
    closed_images_per_identity: int = 2
    #: the closed-set hold-out never takes more than this fraction of an identity's images (rounded down) ...
    closed_max_fraction: float = 1 / 3
    #: ... and always leaves at least this many images of the identity for training
    min_train_images: int = 2
    #: identities with fewer images are dropped (and counted) instead of raising an error; 0 = strict
    min_images_per_identity: int = 0


@dataclass
class DataConfig:
    root: str = ""
    #: square input side; 64 keeps a from-scratch run on a few hundred photos to minutes on a CPU (see
    #: docs/training.md, "From-scratch defaults")
    input_size: int = 64
    #: 32 gives a few-hundred-image folder ~7 optimizer steps per epoch (64 gave 3: too few steps to learn)
    batch_size: int = 32
    #: how batches are drawn: "auto" (P x K batches if the loss needs several images per identity, else shuffled),
    #: "random" (shuffle) or another registered sampler (see facelab.data.sampler)
    sampler: str = "auto"
    #: extra keyword arguments for the sampler
    sampler_options: dict[str, Any] = field(default_factory=dict)
    #: loader processes: "auto" (0 on machines with <= 2 usable cores, where they only compete with the model; else
    #: one per core left after the training processes, at most 4) or a count
    num_workers: int | str = "auto"
    #: decode every image once up front (fast epochs, finds every corrupt file before training)
    cache_images: bool = False
    #: with cache_images: keep the decoded images in a memory-mapped file in this folder instead of RAM (datasets
    #: larger than memory; shared by loader processes, reused by resumes and runs on the same files); "" = RAM
    cache_dir: str = ""
    #: "exact": every JPEG decoded at full size, augmentation per image (torchvision.transforms.v2) -- the reference
    #: the documented results were measured with; "fast": JPEGs decoded at a reduced DCT scale that still covers
    #: input_size (Pillow draft) and augmentation applied to whole batches (facelab.data.batch_augment; per image
    #: when a step cannot be batched). See docs/training.md, "Input pipeline"
    pipeline: str = "exact"
    #: light augmentation: random crop scale range, horizontal flip, colour jitter strength
    crop_scale: tuple[float, float] = (0.85, 1.0)
    hflip: bool = True
    color_jitter: float = 0.2
    #: the augmentation steps in order, replacing the three keys above when given: a step name or a mapping
    #: ``{name: ..., option: value}`` (random_resized_crop, hflip, color_jitter, grayscale, blur, random_erasing,
    #: randaugment; see facelab.data.transforms)
    augment: tuple[str | dict[str, Any], ...] = ()
    #: per-channel normalisation applied after scaling pixels to [0, 1]
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    #: how a photo becomes a face crop: "none" (images are face crops, resized) or a detector name ("yunet"):
    #: detect + 5-point alignment, done once and cached; recorded with the model so inference does the same
    align: str = "none"
    #: options for the detector/crop policy (see facelab.faces)
    align_options: dict[str, Any] = field(default_factory=dict)
    split: SplitConfig = field(default_factory=SplitConfig)
    #: a given training set instead of the seeded split of ``root``: an identity folder (labels in ImageFolder's
    #: sorted order over all its class folders) or a list file (``.csv`` with a ``path,label`` header, or ``.txt``
    #: lines ``path label``; paths relative to ``root``, default the list's folder); see facelab.data.given
    train: str = ""
    #: a given validation set (same forms as ``train``, its classes named as in ``train``): closed-set accuracy per
    #: epoch, the best checkpoint and early stopping (see ``validation``)
    val: str = ""


@dataclass
class ValidationConfig:
    """Per-epoch validation: closed-set accuracy on the validation images (``data.val``, or the seeded split's
    closed-set hold-out when ``enabled`` is true), verification ROC AUC on a pair list, the best checkpoint
    (``best.pt``) and early stopping."""

    #: None = on when ``data.val`` or ``pairs`` is given; true also validates on the seeded split's closed set
    enabled: bool | None = None
    #: the figure that chooses best.pt and drives early stopping: auto (val_auc with a pair list, else val_acc),
    #: val_acc, val_auc or val_loss (lower is better)
    metric: str = "auto"
    #: stop after this many validated epochs without an improvement larger than ``min_delta`` (0 = never stop early)
    patience: int = 0
    min_delta: float = 0.0
    #: a labelled pair list (any ``facelab pairs`` format): verification ROC AUC after every epoch
    pairs: str = ""
    #: its format when the suffix does not say (lfw, kaggle, csv, bin, hw2p2)
    pairs_format: str = ""
    #: folder the pair list's image paths are relative to (default: the list's folder)
    pairs_root: str = ""
    #: also embed the horizontally flipped image (slower, as in ``eval.flip_tta``)
    flip_tta: bool = False


#: validation metrics and whether higher is better
VALIDATION_METRICS = {"val_acc": True, "val_auc": True, "val_loss": False}


@dataclass
class ModelConfig:
    backbone: str = "resnet18"
    embedding_dim: int = 128
    #: channels of the first stage; later stages double it (ResNet) or scale it (others); 64 = the papers' networks
    width: int = 32
    #: dropout before the embedding layer
    dropout: float = 0.0
    #: extra keyword arguments for the chosen backbone
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossConfig:
    name: str = "arcface"
    #: extra keyword arguments for the chosen loss (e.g. scale, margin, label_smoothing)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    epochs: int = 40
    warmup_epochs: float = 2.0
    #: final learning rate as a fraction of ``lr`` at the end of the cosine schedule
    min_lr_ratio: float = 0.0
    #: clip the global gradient norm (0 = off)
    grad_clip: float = 5.0
    #: learning-rate schedule by name (see facelab.engine.optim.SCHEDULERS): cosine, step, poly, onecycle
    scheduler: str = "cosine"
    #: extra keyword arguments for the schedule (e.g. step: milestones, gamma; poly: power)
    scheduler_options: dict[str, Any] = field(default_factory=dict)
    #: micro-batches of ``data.batch_size`` images per optimizer step (gradient accumulation)
    accumulate: int = 1
    #: decay of an exponential moving average of the backbone weights, evaluated instead of them (0 = off)
    ema: float = 0.0
    #: ramp the EMA decay up as min(ema, (1 + step) / (10 + step)) so early, random weights fade out quickly
    ema_warmup: bool = True
    #: exempt normalisation weights and all biases from weight decay
    no_decay_norm_bias: bool = False


@dataclass
class EvalConfig:
    flip_tta: bool = True
    far_targets: tuple[float, ...] = (1e-1, 1e-2, 1e-3)
    #: images per forward pass when embedding; None: 8 on CPU, 64 on a GPU (facelab.inference.embedder)
    batch_size: int | None = None


@dataclass
class EngineConfig:
    """How the training loop runs (precision, memory layout, checkpoints, logging), not what it learns."""

    #: autocast precision: off, bf16, fp16 (CUDA only, with loss scaling) or auto (bf16/fp16 on CUDA, off on CPU)
    amp: str = "off"
    #: NHWC memory layout for the backbone and images (faster convolutions on tensor cores)
    channels_last: bool = False
    #: wrap the backbone in torch.compile
    compile: bool = False
    #: SyncBatchNorm across processes (CUDA only)
    sync_bn: bool = False
    #: also checkpoint every N optimizer steps, so a kill loses at most N steps (0 = once per epoch only)
    checkpoint_every_steps: int = 0
    #: append loss, lr and img/s to steps.jsonl (and TensorBoard) every N optimizer steps (0 = off)
    log_every_steps: int = 0
    #: write TensorBoard event files to <out_dir>/tensorboard (needs the ``tb`` extra)
    tensorboard: bool = False


@dataclass
class InitConfig:
    """Start from a trained model instead of random weights (transfer learning, ``facelab train --init``).

    The backbone, its input size and normalisation (``data.input_size``, ``data.mean``, ``data.std``) and its face
    alignment (``data.align``, see ``init.align``) come from the init model; the loss gets a fresh head for the
    folder's identities.
    """

    #: a pretrained name (facelab pretrained list), an ONNX file, a bundle, a run folder or checkpoint; "" = scratch
    model: str = ""
    #: accept the weights' licence of a gated pretrained model
    accept_licence: bool = False
    #: the backbone's learning rate as a fraction of optim.lr (the new head learns at optim.lr)
    backbone_lr: float = 0.1
    #: epochs (may be fractional) at the start during which only the head learns, the backbone frozen
    freeze_epochs: float = 0.0
    #: keep the backbone's BatchNorm statistics fixed (small fine-tuning batches estimate them poorly)
    freeze_bn: bool = True
    #: weight of the ``distill`` loss (1 - cosine to the init model's embeddings of the same images), 0 = off
    distill: float = 1.0
    #: WiSE-FT mixing coefficient: the model a run keeps (checkpoint, eval, bundle) is ``init + interpolate x
    #: (trained - init)`` in weight space; 1 = the fine-tuned weights as trained, 0 = the init model unchanged
    interpolate: float = 0.25
    #: data.align while fine-tuning: "auto" = the init model's (yunet for the pretrained ones), "none" = the folder
    #: holds face crops aligned already, or a detector name
    align: str = "auto"


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: EngineConfig = field(default_factory=EngineConfig)
    init: InitConfig = field(default_factory=InitConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    seed: int = 0
    out_dir: str = "runs/facelab"
    device: str = "auto"
    #: CPU threads for torch (0 = torch's default)
    threads: int = 0


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _require(key: str, ok: bool, requirement: str, value: Any) -> None:
    if not ok:
        raise FacelabError(f"config key '{key}' {requirement}, got {value!r}")


def check_split(cfg: SplitConfig, where: str = "data.split") -> None:
    """Reject a split setting that cannot work (one-line :class:`FacelabError` naming the key)."""
    _require(f"{where}.open_identities", _number(cfg.open_identities) and cfg.open_identities >= 0,
             "must be >= 0 (a count, or a fraction if < 1)", cfg.open_identities)
    _require(f"{where}.closed_images_per_identity", cfg.closed_images_per_identity >= 0, "must be >= 0",
             cfg.closed_images_per_identity)
    _require(f"{where}.closed_max_fraction", _number(cfg.closed_max_fraction) and 0 <= cfg.closed_max_fraction < 1,
             "must be in [0, 1)", cfg.closed_max_fraction)
    _require(f"{where}.min_train_images", cfg.min_train_images >= 1, "must be >= 1", cfg.min_train_images)
    _require(f"{where}.min_images_per_identity", cfg.min_images_per_identity >= 0, "must be >= 0",
             cfg.min_images_per_identity)


def validate(cfg: TrainConfig) -> None:
    """Reject values no training can use, before any data is read: one-line :class:`FacelabError` naming the key.

    Names (backbone, loss, optimizer, sampler, schedule, precision) are checked by their registries, and loss and
    backbone options by the loss or backbone itself.
    """
    d, m, o, e, t = cfg.data, cfg.model, cfg.optim, cfg.eval, cfg.train
    _require("data.input_size", d.input_size >= 1, "must be a positive number of pixels", d.input_size)
    _require("data.batch_size", d.batch_size >= 2, "must be >= 2 (BatchNorm needs 2 images per batch)",
             d.batch_size)
    _require("data.num_workers", d.num_workers == "auto" or (isinstance(d.num_workers, int)
             and not isinstance(d.num_workers, bool) and d.num_workers >= 0), "must be auto or a count >= 0",
             d.num_workers)
    _require("data.pipeline", d.pipeline in ("exact", "fast"), "must be exact or fast", d.pipeline)
    lo, hi = d.crop_scale
    _require("data.crop_scale", _number(lo) and _number(hi) and 0 < lo <= hi <= 1,
             "must be [low, high] with 0 < low <= high <= 1", list(d.crop_scale))
    _require("data.color_jitter", _number(d.color_jitter) and d.color_jitter >= 0, "must be >= 0", d.color_jitter)
    _require("data.mean", all(_number(v) for v in d.mean), "must be finite numbers", list(d.mean))
    _require("data.std", all(_number(v) and v > 0 for v in d.std), "must be positive numbers", list(d.std))
    check_split(d.split)
    _require("model.embedding_dim", m.embedding_dim >= 1, "must be >= 1", m.embedding_dim)
    _require("model.width", m.width >= 1, "must be >= 1", m.width)
    _require("model.dropout", _number(m.dropout) and 0 <= m.dropout < 1, "is a probability in [0, 1)", m.dropout)
    _require("optim.lr", _number(o.lr) and o.lr > 0, "must be a positive number", o.lr)
    _require("optim.momentum", _number(o.momentum) and 0 <= o.momentum < 1, "must be in [0, 1)", o.momentum)
    _require("optim.weight_decay", _number(o.weight_decay) and o.weight_decay >= 0, "must be >= 0", o.weight_decay)
    _require("optim.epochs", o.epochs >= 1, "must be >= 1", o.epochs)
    _require("optim.warmup_epochs", _number(o.warmup_epochs) and o.warmup_epochs >= 0, "must be >= 0",
             o.warmup_epochs)
    _require("optim.min_lr_ratio", _number(o.min_lr_ratio) and 0 <= o.min_lr_ratio <= 1, "must be in [0, 1]",
             o.min_lr_ratio)
    _require("optim.grad_clip", _number(o.grad_clip) and o.grad_clip >= 0, "must be >= 0 (0 = off)", o.grad_clip)
    _require("optim.accumulate", o.accumulate >= 1, "must be >= 1", o.accumulate)
    _require("optim.ema", _number(o.ema) and 0 <= o.ema < 1, "is a decay in [0, 1) (0 = off)", o.ema)
    _require("eval.batch_size", e.batch_size is None or e.batch_size >= 1, "must be >= 1 (or null: automatic)",
             e.batch_size)
    _require("eval.far_targets", all(_number(f) and 0 < f < 1 for f in e.far_targets),
             "must be false-accept rates in (0, 1)", list(e.far_targets))
    _require("train.checkpoint_every_steps", t.checkpoint_every_steps >= 0, "must be >= 0 (0 = per epoch only)",
             t.checkpoint_every_steps)
    _require("train.log_every_steps", t.log_every_steps >= 0, "must be >= 0 (0 = off)", t.log_every_steps)
    _require("threads", cfg.threads >= 0, "must be >= 0 (0 = torch's default)", cfg.threads)
    check_validation(cfg)


def check_validation(cfg: TrainConfig) -> None:
    """Reject a validation setting that cannot work (one-line :class:`FacelabError` naming the key)."""
    v = cfg.validation
    names = ("auto", *VALIDATION_METRICS)
    _require("validation.metric", v.metric in names, f"must be one of {', '.join(names)}", v.metric)
    _require("validation.patience", v.patience >= 0, "must be >= 0 (0 = never stop early)", v.patience)
    _require("validation.min_delta", _number(v.min_delta) and v.min_delta >= 0, "must be >= 0", v.min_delta)
    if v.metric == "val_auc" and not v.pairs:
        raise FacelabError("config key 'validation.metric' is val_auc but no pair list is given (validation.pairs)")
    if cfg.data.val and not cfg.data.train:
        raise FacelabError("config key 'data.val' needs a given training set too (data.train / --train)")
    if v.enabled is False and (v.patience or v.metric != "auto"):
        raise FacelabError("config key 'validation.enabled' is false but validation.patience or validation.metric "
                           "is set")


def validation_metric(cfg: TrainConfig) -> str:
    """The metric ``validation.metric`` names (``auto``: val_auc with a pair list, else val_acc)."""
    v = cfg.validation
    if v.metric != "auto":
        return v.metric
    return "val_auc" if v.pairs else "val_acc"


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)  # type: ignore[arg-type]
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except FacelabError as exc:
                errors.append(str(exc))
        raise FacelabError(errors[0] if errors else f"config key '{where}': invalid value {value!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise FacelabError(f"config key '{where}': expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise FacelabError(f"config key '{where}': expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is dict:
        if not isinstance(value, dict):
            raise FacelabError(f"config key '{where}': expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise FacelabError(f"config key '{where}': expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise FacelabError(f"config key '{where}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise FacelabError(f"config key '{where}': expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise FacelabError(f"config key '{where}': expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass ``cls`` from a nested mapping, rejecting unknown keys and wrong types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise FacelabError(f"config section '{where or 'root'}': expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs = {}
    for key, value in data.items():
        full = f"{where}.{key}" if where else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise FacelabError(f"unknown config key '{full}'{hint}")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) so it serialises to YAML/JSON and loads with ``weights_only``."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, list | tuple):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(cfg)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FacelabError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise FacelabError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FacelabError(f"config file {path} must hold a mapping at the top level")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings (value parsed as YAML) onto a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise FacelabError(f"override '{item}' must look like key.path=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise FacelabError(f"override '{item}': '{part}' is not a section")
        node[parts[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> TrainConfig:
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        data = _merge(data, load_yaml(path))
    data = apply_overrides(data, overrides or [])
    return from_dict(TrainConfig, data)


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def save_yaml(cfg: Any, path: str | Path) -> None:
    from facelab.utils.io import atomic_open

    with atomic_open(path, "w") as fh:
        yaml.safe_dump(to_dict(cfg), fh, sort_keys=False)


@dataclass
class PairTrainConfig:
    """``facelab siamese``: a siamese network (one backbone for both images) trained on a labelled pair list."""

    #: the pair list: LFW pairs.txt / pairsDevTrain.txt, or a CSV img1,img2,label[,fold] (paths under data.root)
    pairs: str = ""
    #: folds of the list used for training, numbered 1..K in the order of the list's fold ids (LFW pairs.txt: its
    #: 10 folds); the other folds are held out for testing
    train_folds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    #: folds a list without fold information is cut into
    folds: int = 10
    #: l1 / sq (learned weighted sum of |e1 - e2| or (e1 - e2)^2 -> sigmoid -> BCE) or contrastive
    loss: str = "l1"
    loss_options: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=10))
    #: flip test-time augmentation in the saved model (and so in the held-out test), as eval.flip_tta for runs
    flip_tta: bool = True
    seed: int = 0
    out_dir: str = "runs/siamese"
    device: str = "auto"
    #: CPU threads for torch (0 = torch's default)
    threads: int = 0


def load_pair_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PairTrainConfig:
    data = load_yaml(path) if path is not None else {}
    return from_dict(PairTrainConfig, apply_overrides(data, overrides or []))
