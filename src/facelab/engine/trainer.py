"""``facelab train``: fit a backbone + loss on an identity folder, checkpointing so it can resume.

Each epoch reseeds every RNG from ``(seed, epoch)``, so a run resumed after a kill reproduces, bit for bit on the
same machine, the epochs an uninterrupted run would have produced. Step checkpoints (``train.checkpoint_every_steps``)
also store the random state and the position in the epoch, so a mid-epoch resume continues the same batches.

Under ``torchrun`` each process trains on its slice of every global batch (``facelab.utils.distributed``) with
PyTorch's DistributedDataParallel; rank 0 logs and writes merged checkpoints that resume on any number of processes.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from facelab.config import TrainConfig, apply_overrides, from_dict, save_yaml, to_dict, validate, validation_metric
from facelab.data import FaceDataset, SplitManifest, eval_transform, make_split, scan_folder, train_transform
from facelab.data.batch_augment import BatchAugment, BatchCollate, batchable
from facelab.data.folder import align_faces
from facelab.data.given import given_manifest, load_given
from facelab.data.sampler import SAMPLERS, PKBatchSampler, build_batch_sampler
from facelab.data.transforms import augmentation_steps
from facelab.engine.amp import Precision, resolve_precision
from facelab.engine.ema import ModelEMA
from facelab.engine.finetune import (
    DISTILL_TARGETS,
    FinetuneSchedule,
    Indexed,
    InitModel,
    apply_init,
    distill_targets,
    interpolate_weights,
    resolve_init,
    scale_backbone_lr,
    validate_init,
)
from facelab.engine.optim import OPTIMIZERS, SCHEDULERS, build_optimizer, build_scheduler
from facelab.engine.state import (
    gather_rng_states,
    load_module_state,
    load_optimizer_state,
    merged_module_state,
    merged_optimizer_state,
    set_rng_state,
    sharded_parameters,
)
from facelab.engine.tracking import StepLog, plot_training_curves
from facelab.engine.validation import BestTracker, PairReader, Validator
from facelab.errors import FacelabError
from facelab.losses import LOSSES, DistillLoss, FaceLoss, build_loss
from facelab.models import BACKBONES, count_parameters
from facelab.models.base import MIN_INPUT
from facelab.models.onnx_graph import ONNX_BACKBONE
from facelab.runs import BEST, CHECKPOINT, CONFIG, SPLIT, build_model_and_loss, load_checkpoint, save_checkpoint
from facelab.utils import distributed as D
from facelab.utils.device import default_batch_size, loader_workers, resolve_device
from facelab.utils.extras import require_tensorboard
from facelab.utils.io import atomic_open, write_json

log = logging.getLogger(__name__)

#: the config keys ``--resume`` may change: how fast and how long it learns from here, and where it runs -- never what
#: it learns (data, split, model, loss), which the checkpoint's weights and optimizer state are tied to
RESUME_KEYS = ("optim.lr", "optim.epochs", "optim.grad_clip", "train.checkpoint_every_steps",
               "train.log_every_steps", "device", "threads")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class TrainResult:
    out_dir: Path
    checkpoint: Path
    history: list[dict[str, Any]]
    seconds: float


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        tqdm.write(msg, file=sys.stderr)


def loss_term_keys(loss_fn: nn.Module) -> list[str]:
    """The component names a joint loss reports in ``last_terms`` after each call (``<index>.<loss name>``), logged
    per epoch as ``loss.<index>.<name>``; [] for a single loss."""
    names = getattr(loss_fn, "names", None)
    if not isinstance(names, list) or not hasattr(loss_fn, "last_terms"):
        return []
    return [f"{i}.{name}" for i, name in enumerate(names)]


@dataclass
class EpochTally:
    """Running sums of one epoch (this rank's, plus the global sums restored from a mid-epoch checkpoint)."""

    loss_sum: float = 0.0
    correct: float = 0.0
    seen: float = 0.0
    no_accuracy: float = 0.0
    #: micro-batches whose loss was not exactly 0
    nonzero: float = 0.0
    #: pair/triplet terms the batches offered, and the micro-batches that reported them (``LossOutput.terms``)
    terms: float = 0.0
    counted: float = 0.0
    seconds: float = 0.0

    def as_list(self) -> list[float]:
        return [self.loss_sum, self.correct, self.seen, self.no_accuracy, self.nonzero, self.terms, self.counted]

    @classmethod
    def from_list(cls, values: list[float], seconds: float) -> EpochTally:
        values = list(values)
        if len(values) == 4:  # a checkpoint from before the last three sums: whether a loss was non-zero is unknown,
            values += [1.0 if values[2] > 0 else 0.0, 0.0, 0.0]  # so do not call the epoch empty
        return cls(*values[:7], seconds=seconds)


def _validate(cfg: TrainConfig, world: int) -> None:
    """Everything that can be checked before the data folder is read, so a typo costs no scan."""
    validate(cfg)
    if cfg.data.input_size < MIN_INPUT:
        raise FacelabError(f"config key 'data.input_size' must be >= {MIN_INPUT} (the smallest input a backbone "
                           f"takes), got {cfg.data.input_size}")
    if cfg.model.backbone != ONNX_BACKBONE:  # a resumed fine-tune of an ONNX model rebuilds from its graph
        BACKBONES.get(cfg.model.backbone)
    LOSSES.get(cfg.loss.name)
    augmentation_steps(cfg.data)  # step names and options
    OPTIMIZERS.get(cfg.optim.name)
    SCHEDULERS.get(cfg.optim.scheduler)
    if cfg.data.sampler != "auto":
        SAMPLERS.get(cfg.data.sampler)
    build_loss(cfg.loss, cfg.model.embedding_dim, max(2, world))  # its options, on a throwaway 2-class head
    from facelab.faces.cache import check_align

    try:
        check_align(cfg.data.align, cfg.data.align_options)
    except FacelabError as exc:
        raise FacelabError(f"data.align: {exc}") from None


def resume_config(stored: dict[str, Any], overrides: list[str]) -> tuple[TrainConfig, dict[str, Any]]:
    """The checkpoint's config with ``key=value`` overrides applied; only :data:`RESUME_KEYS` may change.

    Returns the config and the changed keys with their new values. Raises FacelabError naming a refused key.
    """
    changed: dict[str, Any] = {}
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key not in RESUME_KEYS:
            raise FacelabError(f"--resume keeps the config the run was trained with; '{key}' cannot change (only "
                               f"{', '.join(RESUME_KEYS)} can)")
    data = apply_overrides(json.loads(json.dumps(stored)), overrides)
    cfg = from_dict(TrainConfig, data)
    for key in RESUME_KEYS:
        section, _, name = key.rpartition(".")
        old = stored.get(section, {}).get(name) if section else stored.get(name)
        new = getattr(getattr(cfg, section), name) if section else getattr(cfg, name)
        if old != new:
            changed[key] = new
    return cfg, changed


def train(cfg: TrainConfig, resume: bool = False, quiet: bool = False, stop_after_epochs: int | None = None,
          stop_after_steps: int | None = None, resume_overrides: list[str] | None = None,
          pair_reader: PairReader | None = None) -> TrainResult:
    """Train per ``cfg``; with ``resume`` continue from ``cfg.out_dir/checkpoint.pt`` with the config stored there.

    ``resume_overrides`` (``key=value``, only :data:`RESUME_KEYS`) change that stored config, e.g. a lower
    ``optim.lr`` after the loss became NaN; the schedule continues from the same step with the new peak rate (and
    the new length, for ``optim.epochs``). ``stop_after_epochs`` / ``stop_after_steps`` end the process' work early,
    without a final checkpoint (as a kill would) -- used by tests of resume. Under torchrun every process calls
    this; only rank 0 writes files.

    With validation (``data.val``, ``validation.*``) every epoch is scored after training, ``best.pt`` holds the
    best epoch by ``validation.metric`` and ``validation.patience`` stops early; ``pair_reader`` reads
    ``validation.pairs`` (``facelab.evaluation.pairs.validation_pairs``; facelab.api and the CLI pass it).

    Raises:
        FacelabError: an invalid config (naming the key), a data folder or split that cannot train the loss, a loss
            that became NaN or stayed exactly 0 for a whole epoch, or an override ``--resume`` refuses.
    """
    if resume_overrides and not resume:
        raise FacelabError("resume_overrides only apply with resume=True")
    ctx = D.setup(resolve_device(cfg.device).type)
    try:
        run = _Run(cfg, ctx, resume, quiet or not ctx.is_main, resume_overrides, pair_reader)
        return run.fit(stop_after_epochs, stop_after_steps)
    finally:
        D.teardown(ctx)


class _Run:
    """One training run in one process: built in ``__init__``, trained by ``fit``."""

    def __init__(self, cfg: TrainConfig, ctx: D.DistContext, resume: bool, quiet: bool,
                 resume_overrides: list[str] | None = None, pair_reader: PairReader | None = None) -> None:
        self.ctx, self.quiet = ctx, quiet
        self.out = Path(cfg.out_dir)
        self.ckpt_path = self.out / CHECKPOINT
        state: dict[str, Any] | None = None
        self.changed: dict[str, Any] = {}
        if resume:
            state = load_checkpoint(self.ckpt_path)
            cfg, self.changed = resume_config(state["config"], resume_overrides or [])
            cfg.out_dir = str(self.out)  # the run folder may have moved since
            if cfg.optim.epochs < int(state["epoch"]):
                raise FacelabError(f"config key 'optim.epochs' cannot be {cfg.optim.epochs}: the run has already "
                                   f"trained {state['epoch']} epochs")
            self.say(f"resuming {self.ckpt_path} after epoch {state['epoch']} of {cfg.optim.epochs}"
                     + (f" (+{state['batches_done']} batches)" if state.get("batches_done") else "")
                     + (f", changing {', '.join(f'{k}={v}' for k, v in self.changed.items())}"
                        if self.changed else ""))
        elif self.ckpt_path.exists():
            raise FacelabError(f"{self.ckpt_path} already exists: pass --resume to continue it or choose another "
                               f"--out")
        self.cfg = cfg
        _validate(cfg, ctx.world)
        if self.changed and ctx.is_main:
            save_yaml(cfg, self.out / CONFIG)  # the run folder's config says what the run continues with
        self.init_model: InitModel | None = None
        init_note = ""
        if cfg.init.model:
            validate_init(cfg.init)
            if state is None:  # a resumed run's config already describes the init model
                self.init_model = resolve_init(cfg.init.model, cfg.init.accept_licence)
                changes = apply_init(cfg, self.init_model)
                init_note = (f"init: fine-tuning {self.init_model.source}" + (f"; {', '.join(changes)}" if changes
                             else "") + " (--init none trains from scratch)")
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device, ctx.local_rank)
        self.precision: Precision = resolve_precision(cfg.train.amp, self.device)
        if not cfg.data.root and not cfg.data.train:
            raise FacelabError("no data folder given: set data.root in the config or pass --data (or --train DIR)")
        if cfg.train.tensorboard and ctx.is_main:
            require_tensorboard()
        if cfg.train.sync_bn and ctx.enabled and self.device.type != "cuda":
            raise FacelabError("train.sync_bn needs CUDA devices (torch's SyncBatchNorm does not run on CPU)")
        if state is not None:
            manifest = SplitManifest.from_dict(state["manifest"])
        else:
            prepare = self._prepare_given if cfg.data.train else self._prepare_folder
            manifest = SplitManifest.from_dict(D.run_on_main(ctx, prepare))
            if cfg.data.train:  # manifest paths are relative to the common folder of the given sets
                cfg.data.root = manifest.root
        self.manifest = manifest
        if init_note:  # said once the data is known to be there, so a bad folder stays a one-line error
            self.say(init_note)
        r = manifest.report
        if r.get("given"):
            self.say(f"data: given split: {r['train_images']} training images of {manifest.num_classes} classes "
                     f"(ImageFolder order; {len(r['empty_classes'])} without images), {r['closed_test_images']} "
                     f"validation images")
            if r.get("hidden_folders"):
                self.say(f"note: {len(r['hidden_folders'])} hidden folder(s) in {r['given']['train']} "
                         f"({', '.join(r['hidden_folders'][:3])}) are not classes here, but torchvision's ImageFolder "
                         f"counts them: remove them so a grader's labels match")
        else:
            self.say(f"data: {r['train_images']} training images of {manifest.num_classes} identities; held out "
                     f"{r['closed_test_images']} closed-set images and {r['open_identities']} unseen identities "
                     f"({r['open_test_images']} images)")
        if r.get("closed_capped"):
            self.say(f"data: held out fewer than {cfg.data.split.closed_images_per_identity} closed-set images of "
                     f"{len(r['closed_capped'])} identities with few photos, to keep at least "
                     f"{cfg.data.split.min_train_images} for training and take at most "
                     f"{cfg.data.split.closed_max_fraction:.0%} (split.json: report.closed_capped)")
        self._build(state)
        self._setup_validation(pair_reader)
        self.state = state
        if state is not None:
            self._restore(state)
        self.say(f"model: {cfg.model.backbone} ({count_parameters(self.backbone) / 1e6:.2f}M parameters), "
                 f"loss: {cfg.loss.name}, device: {self.device}"
                 + (f" x {ctx.world} processes" if ctx.enabled else "")
                 + (f", amp {self.precision.name}" if self.precision.dtype is not None else "")
                 + f", {cfg.optim.epochs} epochs x {self.steps} steps of {self.global_batch * cfg.optim.accumulate}"
                 f" images")
        memory = getattr(self.loss_fn, "memory_summary", None)
        if memory is not None:
            self.say(memory(self.global_batch, cfg.optim.name))

    def say(self, msg: str) -> None:
        _say(msg, self.quiet)

    def _prepare_folder(self) -> dict[str, Any]:
        cfg = self.cfg
        folder = scan_folder(cfg.data.root, min_images=max(1, cfg.data.split.min_images_per_identity))
        if cfg.data.align != "none":
            self.say(f"faces: {align_faces(folder, cfg.data, progress=not self.quiet)}")
        self.say(f"data: {folder.report.summary(folder.num_images)}")
        manifest = make_split(folder, cfg.data.split)
        self.out.mkdir(parents=True, exist_ok=True)
        manifest.save(self.out / SPLIT)
        save_yaml(cfg, self.out / CONFIG)
        return manifest.to_dict()

    def _prepare_given(self) -> dict[str, Any]:
        """The manifest of a given split (``data.train`` / ``data.val``, see facelab.data.given)."""
        cfg = self.cfg
        if cfg.data.align != "none" and str(cfg.data.train).lower().endswith(".rec"):
            raise FacelabError(f"{cfg.data.train} holds aligned face crops (insightface RecordIO): set data.align "
                               f"none (and init.align none when fine-tuning)")
        train_set = load_given(cfg.data.train, cfg.data.root or None)
        val_set = load_given(cfg.data.val, cfg.data.root or None) if cfg.data.val else None
        for given in (train_set, val_set):
            if given is None:
                continue
            if cfg.data.align != "none":
                folder = given.to_folder()
                self.say(f"faces ({given.source}): {align_faces(folder, cfg.data, progress=not self.quiet)}")
                given.keep(folder)
            self.say(f"data ({given.source}): {given.report.summary(len(given.items))}")
        manifest = given_manifest(train_set, val_set)
        self.out.mkdir(parents=True, exist_ok=True)
        manifest.save(self.out / SPLIT)
        cfg.data.root = manifest.root
        save_yaml(cfg, self.out / CONFIG)
        return manifest.to_dict()

    def _setup_validation(self, pair_reader: PairReader | None) -> None:
        """The per-epoch validator and best-epoch tracker, when validation is on (``validation.enabled``; by
        default when ``data.val`` or ``validation.pairs`` is given). Raises FacelabError when the chosen metric
        cannot be measured (no validation images, a loss without class scores for val_acc)."""
        cfg, v = self.cfg, self.cfg.validation
        self.validator: Validator | None = None
        self.best: BestTracker | None = None
        enabled = v.enabled if v.enabled is not None else bool(cfg.data.val or v.pairs)
        if not enabled:
            return
        metric = validation_metric(cfg)
        items = self.manifest.closed_test
        if not items and not v.pairs:
            raise FacelabError("validation needs validation images (data.val / --val, or the split's closed-set "
                               "hold-out) or a pair list (validation.pairs)")
        if metric in ("val_acc", "val_loss") and not items:
            raise FacelabError(f"validation.metric {metric} needs validation images (data.val / --val)")
        if metric == "val_acc" and self.loss_fn.logits(torch.zeros(1, cfg.model.embedding_dim,
                                                                   device=self.device)) is None:
            raise FacelabError(f"validation.metric val_acc needs class scores, which loss '{cfg.loss.name}' does not "
                               f"have: validate with a pair list (validation.pairs, metric val_auc) or val_loss")
        pairs = None
        if v.pairs:
            if pair_reader is None:
                raise FacelabError("validation.pairs needs a pair-list reader: train through facelab.train or the "
                                   "facelab train command")
            if self.ctx.is_main:
                pairs = pair_reader(v.pairs, v.pairs_root or None, v.pairs_format or None)
        from facelab.faces.cache import reader_for

        self.best = BestTracker(metric, v.patience, v.min_delta)
        if self.ctx.is_main:
            self.validator = Validator(Path(cfg.data.root), items, pairs, cfg.data.input_size,
                                       eval_transform(cfg.data), self.device,
                                       cfg.eval.batch_size or default_batch_size(self.device), v.flip_tta,
                                       reader_for(cfg.data.align, cfg.data.input_size, cfg.data.align_options),
                                       cfg.data.cache_images, not self.quiet)
        self.say(f"validation: {len(items)} images" + (f", pair list {pairs.name} ({len(pairs.first)} pairs)"
                                                        if pairs is not None else "")
                 + f"; best.pt by {metric}" + (f", early stop after {v.patience} epochs without improvement"
                                               if v.patience else ""))

    def _validate_epoch(self, epoch: int, record: dict[str, Any]) -> bool:
        """Score the epoch (rank 0), add the figures to ``record``; returns whether it is the best so far. Every
        rank learns whether training stops early."""
        assert self.best is not None
        improved = False
        if self.validator is not None:
            model = self.backbone
            if self.ema is not None or self.init_weights is not None:  # validate what best.pt will hold
                model = copy.deepcopy(self.backbone)
                model.load_state_dict(self._kept_state())
            sharded_ddp = bool(self.sharded) and self.ctx.enabled  # each rank holds a slice of the class head
            record.update(self.validator(model, None if sharded_ddp else self.loss_fn))
            improved = self.best.update(epoch, record.get(self.best.metric))
            record["best_epoch"] = self.best.epoch
        if self.ctx.enabled:
            self.best.stopped = D.all_reduce_sum(self.ctx, [float(self.best.stopped)], self.device)[0] > 0
        return improved

    def _build(self, state: dict[str, Any] | None) -> None:
        cfg, ctx, device = self.cfg, self.ctx, self.device
        seed_everything(cfg.seed)
        if state is not None:  # the checkpoint's weights (an ONNX backbone is rebuilt from the graph they carry)
            start: dict[str, torch.Tensor] | None = state.get("train_model", state["model"])
        else:
            start = self.init_model.module.state_dict() if self.init_model is not None else None
        backbone, loss_fn = build_model_and_loss(cfg, self.manifest.num_classes, start)
        self.init_weights = self._init_weights(state, start)
        if cfg.train.sync_bn and ctx.enabled:
            backbone = nn.SyncBatchNorm.convert_sync_batchnorm(backbone)
        backbone.to(device)
        loss_fn.to(device)
        if cfg.train.channels_last:
            backbone.to(memory_format=torch.channels_last)
        self.backbone, self.loss_fn = backbone, loss_fn
        self.sharded = list(sharded_parameters(loss_fn).values())

        from facelab.faces.cache import reader_for

        fast = cfg.data.pipeline == "fast"
        collate = BatchCollate(BatchAugment(cfg.data)) if fast and batchable(cfg.data) else None
        self.dataset = FaceDataset(cfg.data.root, self.manifest.train, cfg.data.input_size,
                                   None if collate is not None else train_transform(cfg.data),
                                   cache=cfg.data.cache_images,
                                   reader=reader_for(cfg.data.align, cfg.data.input_size, cfg.data.align_options),
                                   progress=not self.quiet, fast_decode=fast, cache_dir=cfg.data.cache_dir or None,
                                   cache_key=f"align={cfg.data.align}:{sorted(cfg.data.align_options.items())}")
        if len(self.dataset) < 2:
            raise FacelabError(f"need at least 2 training images for BatchNorm, got {len(self.dataset)}")
        self._setup_finetune(loss_fn)
        self.generator = torch.Generator()
        base = self._batch_sampler(loss_fn)
        first = next(iter(base), None)
        if first is None:
            raise FacelabError(f"sampler '{cfg.data.sampler}' yields no batch from {len(self.dataset)} training "
                               f"images")
        self.global_batch = len(first)
        if self.global_batch % ctx.world or self.global_batch // ctx.world < 2:
            raise FacelabError(f"a global batch of {self.global_batch} images cannot be split into {ctx.world} "
                               f"equal slices of at least 2 (BatchNorm): make data.batch_size a multiple of "
                               f"{ctx.world} and at least {2 * ctx.world}")
        self.batch_sampler = D.ShardedBatchSampler(base, ctx.rank, ctx.world)
        self.workers = loader_workers(cfg.data.num_workers, ctx.world)
        # workers are started afresh each epoch from a generator seeded by the epoch, so their augmentations depend
        # on (seed, epoch) only and a resume at an epoch boundary repeats them exactly. Without workers the loader
        # keeps drawing its (unused) seed from the global RNG, so runs without workers are unchanged.
        self.worker_generator = torch.Generator()
        self.loader = DataLoader(self.dataset if self.targets is None else Indexed(self.dataset),
                                 batch_sampler=self.batch_sampler, num_workers=self.workers,
                                 collate_fn=collate, generator=self.worker_generator if self.workers else None,
                                 persistent_workers=False, pin_memory=device.type == "cuda")
        self.steps = len(self.loader) // cfg.optim.accumulate
        if self.steps == 0:
            raise FacelabError(f"an epoch has {len(self.loader)} batches, fewer than optim.accumulate="
                               f"{cfg.optim.accumulate}")

        self.optimizer = build_optimizer(backbone, loss_fn, cfg.optim)
        if cfg.init.model:
            scale_backbone_lr(self.optimizer, cfg.init.backbone_lr)
            self.finetune = FinetuneSchedule(cfg.init, self.steps)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.steps)
        self.scaler = self.precision.grad_scaler(device)
        self.ema = ModelEMA(backbone, cfg.optim.ema, cfg.optim.ema_warmup) if cfg.optim.ema > 0 and ctx.is_main \
            else None
        self.replicated = [p for g in self.optimizer.param_groups for p in g["params"]
                           if all(p is not s for s in self.sharded)]

        self.model: nn.Module = backbone
        self.loss_module: nn.Module = loss_fn
        self.ddp: list[DistributedDataParallel] = []
        if ctx.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.model = DistributedDataParallel(backbone, device_ids=ids)
            self.ddp.append(self.model)  # type: ignore[arg-type]
            if not self.sharded and any(p.requires_grad for p in loss_fn.parameters()):
                self.loss_module = DistributedDataParallel(loss_fn, device_ids=ids)
                self.ddp.append(self.loss_module)  # type: ignore[arg-type]
        if cfg.train.compile:
            self.model = torch.compile(self.model)  # type: ignore[assignment]

        self.history: list[dict[str, Any]] = []
        #: overrides given to --resume, with the epoch and step they took effect
        self.resumes: list[dict[str, Any]] = []
        self.start_epoch, self.global_step, self.batches_done = 0, 0, 0
        self.partial: dict[str, Any] | None = None

    def _init_weights(self, state: dict[str, Any] | None,
                      start: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        """The init model's backbone weights that ``init.interpolate`` < 1 mixes into the kept model (None when
        not fine-tuning or interpolate is 1): from the checkpoint on resume, else the weights training starts
        from, else the init model reopened (a run resumed with a new interpolate)."""
        cfg = self.cfg
        if not cfg.init.model or cfg.init.interpolate >= 1.0:
            return None
        if state is not None and "init_weights" in state:
            return state["init_weights"]
        if state is None and start is not None:
            return {k: v.detach().to("cpu", copy=True) for k, v in start.items()}
        return resolve_init(cfg.init.model, cfg.init.accept_licence).module.state_dict()

    def _kept_state(self) -> dict[str, torch.Tensor]:
        """The backbone weights the run keeps (checkpoint ``model``: validation, eval, export, bundles): the EMA
        average with optim.ema, moved towards the init model by init.interpolate when fine-tuning
        (:func:`facelab.engine.finetune.interpolate_weights`). Training itself goes on from the raw weights."""
        weights = self.ema.state_dict() if self.ema is not None else self.backbone.state_dict()
        if self.init_weights is not None:
            weights = interpolate_weights(self.init_weights, weights, self.cfg.init.interpolate)
        return weights

    def _setup_finetune(self, loss_fn: nn.Module) -> None:
        """The distillation targets (init.distill, or a main loss that takes targets) and the fine-tune schedule."""
        cfg = self.cfg
        self.finetune: FinetuneSchedule | None = None
        self.targets: torch.Tensor | None = None
        self.loss_takes_targets = bool(getattr(loss_fn, "uses_targets", False))
        self.distill = DistillLoss(cfg.model.embedding_dim, 0) if cfg.init.model and cfg.init.distill > 0 else None
        if not (self.distill is not None or self.loss_takes_targets):
            return
        if not cfg.init.model:
            raise FacelabError(f"loss '{cfg.loss.name}' distils from a reference model: set init.model (--init)")
        teacher = self.init_model
        # resumed: the targets are normally saved in the run folder; else reopen the init model
        if teacher is None and not (self.out / DISTILL_TARGETS).is_file():
            teacher = resolve_init(cfg.init.model, cfg.init.accept_licence)
        view = copy.copy(self.dataset)  # shares the decoded (aligned) images, without augmentation
        view.transform = eval_transform(cfg.data)
        module = teacher.module if teacher is not None else nn.Identity()
        self.targets = distill_targets(module, view, self.manifest.train, self.out, self.ctx, self.device,
                                       cfg.eval.batch_size, not self.quiet)
        if self.init_model is not None:
            self.init_model.module.cpu()

    def _batch_sampler(self, loss_fn: FaceLoss) -> Any:
        """The sampler ``data.sampler`` names (``auto``: P x K batches if the loss needs them), after checking the
        training set can give the loss what it learns from -- one line naming the problem, before the first step."""
        cfg, labels = self.cfg, self.dataset.labels
        needs = loss_fn.needs()
        short = needs.short_identities(labels)
        if needs.grouped and short:
            names = ", ".join(self.manifest.classes[y] for y in list(short)[:3]) + (", ..." if len(short) > 3 else "")
            raise FacelabError(
                f"loss '{cfg.loss.name}' learns from {needs.images_per_identity} images of an identity in a batch, "
                f"but {len(short)} of {self.manifest.num_classes} training identities have fewer training images "
                f"({names}): keep more for training (data.split.min_train_images={needs.images_per_identity}), "
                f"add photos, or use a classification loss (--loss arcface)")
        if needs.identities > self.manifest.num_classes:
            raise FacelabError(f"loss '{cfg.loss.name}' needs {needs.identities} identities in a batch but the "
                               f"training set has {self.manifest.num_classes}: use more identities (fewer in "
                               f"data.split.open_identities)")
        sampler = build_batch_sampler(labels, cfg.data, self.generator, needs.images_per_identity)
        if isinstance(sampler, PKBatchSampler):
            self.say(f"batches: {sampler.p} identities x {sampler.k} images (loss '{cfg.loss.name}' needs {needs})")
        elif needs.grouped:
            self.say(f"note: loss '{cfg.loss.name}' needs {needs} per batch, which data.sampler="
                     f"{cfg.data.sampler} does not guarantee; the default (auto) draws P x K batches")
        return sampler

    def _restore(self, state: dict[str, Any]) -> None:
        load_module_state(self.loss_fn, state["loss"])
        load_optimizer_state(self.optimizer, self.loss_fn, state["optimizer"])
        fresh = list(self.scheduler.base_lrs)  # peak rates of this (possibly overridden) config
        self.scheduler.load_state_dict(state["scheduler"])
        if {"optim.lr", "optim.epochs"} & set(self.changed):  # new peak rate or length: same step, new schedule
            self.scheduler.base_lrs = fresh
            for group, base, factor in zip(self.optimizer.param_groups, fresh, self.scheduler.lr_lambdas,
                                           strict=True):
                group["initial_lr"] = base
                group["lr"] = base * factor(self.scheduler.last_epoch)
            self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]  # type: ignore[attr-defined]
        if self.ema is not None:
            if "ema" in state:
                self.ema.load(state["ema"], int(state.get("ema_updates", 0)))
            elif "train_model" in state and "init_weights" not in state:  # checkpoints before init.interpolate
                self.ema.load(state["model"], int(state.get("ema_updates", 0)))
            else:  # EMA switched on for a run that had none: start averaging from the current weights
                self.ema.load(self.backbone.state_dict(), 0)
        if "scaler" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.history = list(state["history"])
        if self.best is not None:
            self.best.load(state.get("best"))
        self.resumes = list(state.get("resumes", []))
        if self.changed:
            self.resumes.append({"epoch": int(state["epoch"]), "step": int(state.get("step", 0)),
                                 "changed": dict(self.changed)})
        self.start_epoch = int(state["epoch"])
        self.global_step = int(state.get("step", self.start_epoch * self.steps))
        self.batches_done = int(state.get("batches_done", 0))
        self.partial = state.get("partial")

    def _checkpoint(self, epoch_done: int, batches_done: int, partial: dict[str, Any] | None,
                    best: bool = False) -> None:
        """Collective: every rank calls it, rank 0 writes the merged file atomically; with ``best`` also
        ``best.pt`` (first, so a kill between the two leaves a checkpoint that redoes the epoch)."""
        loss_state = merged_module_state(self.loss_fn, self.ctx)
        opt_state = merged_optimizer_state(self.optimizer, self.loss_fn, self.ctx)
        rng = gather_rng_states(self.ctx, self.device)
        if not self.ctx.is_main:
            return
        state: dict[str, Any] = {
            "epoch": epoch_done,
            "step": self.global_step,
            "batches_done": batches_done,
            "partial": partial,
            "world_size": self.ctx.world,
            "rng": rng,
            "config": to_dict(self.cfg),
            "manifest": self.manifest.to_dict(),
            "model": self._kept_state(),
            "loss": loss_state,
            "optimizer": opt_state,
            "scheduler": self.scheduler.state_dict(),
            "history": self.history,
            "resumes": self.resumes,
        }
        if self.best is not None:
            state["best"] = self.best.state()
        # evaluation reads "model" (the kept weights); training resumes from the raw ones
        if self.ema is not None or self.init_weights is not None:
            state["train_model"] = self.backbone.state_dict()
        if self.ema is not None:
            state.update(ema=self.ema.state_dict(), ema_updates=self.ema.updates)
        if self.init_weights is not None:
            state["init_weights"] = self.init_weights
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        if best:
            save_checkpoint(self.out / BEST, state)
        save_checkpoint(self.ckpt_path, state)

    def fit(self, stop_after_epochs: int | None, stop_after_steps: int | None) -> TrainResult:
        cfg, ctx = self.cfg, self.ctx
        if self.best is not None and self.best.stopped:
            self.say(f"this run stopped early after epoch {self.start_epoch} (validation.patience "
                     f"{self.best.patience}); best.pt holds epoch {self.best.epoch} ({self.best.metric} "
                     f"{self.best.value}): nothing to resume")
            return TrainResult(self.out, self.ckpt_path, self.history, 0.0)
        k = cfg.optim.accumulate
        per_epoch = self.steps * k  # micro-batches used per epoch (a remainder short of ``k`` is skipped)
        tracker = None
        if ctx.is_main:
            _rewrite_log(self.out / "metrics.jsonl", self.history)
            tracker = StepLog(self.out, cfg.train.log_every_steps, cfg.train.tensorboard,
                              self.global_step if self.state is not None else None)
        slice_images = self.global_batch // ctx.world
        bar = tqdm(total=cfg.optim.epochs * per_epoch * self.global_batch,
                   initial=(self.start_epoch * per_epoch + self.batches_done) * self.global_batch, unit="img",
                   unit_scale=True, desc="train", disable=self.quiet, dynamic_ncols=True,
                   mininterval=0.5 if sys.stderr.isatty() else 10)
        t_start = time.perf_counter()
        last = cfg.optim.epochs if stop_after_epochs is None else min(cfg.optim.epochs,
                                                                       self.start_epoch + stop_after_epochs)
        steps_run = 0
        window = {"loss": 0.0, "n": 0, "t": time.perf_counter()}
        term_keys = loss_term_keys(self.loss_fn)
        for epoch in range(self.start_epoch, last):
            term_sums = [0.0] * (len(term_keys) + 1)  # per-term sums weighted by images, then the image count
            epoch_seed = cfg.seed * 100_003 + epoch
            seed_everything(epoch_seed + ctx.rank * 1_000_003)  # augmentations differ per rank; rank 0 as before
            self.generator.manual_seed(epoch_seed)  # the same global batches on every rank
            self.worker_generator.manual_seed(epoch_seed * 31 + ctx.rank)  # loader workers' seeds (if any)
            skip = self.batches_done if epoch == self.start_epoch else 0
            tally = EpochTally()
            if skip and self.partial is not None and ctx.is_main:
                tally = EpochTally.from_list(self.partial["sums"], self.partial["seconds"])
            self.batch_sampler.skip = skip
            self.backbone.train()
            if self.finetune is not None:
                self.finetune.set_modes(self.backbone, self.global_step)
            self.loss_fn.train()
            batches = iter(self.loader)
            rng = (self.state or {}).get("rng")
            if skip and rng is not None and len(rng) == ctx.world:
                set_rng_state(rng[ctx.rank], self.device)  # after the loader drew its seed: exact continuation
            t0 = time.perf_counter() - tally.seconds
            for micro in range(skip, per_epoch):
                batch = next(batches)
                images, labels = batch[0], batch[1]
                index = batch[2] if len(batch) > 2 else None
                self.loss_fn.set_progress(epoch + micro / per_epoch)  # margin warm-up; derived, so resume-exact
                out = self._forward_backward(images, labels, sync=(micro + 1) % k == 0, epoch=epoch, micro=micro,
                                             index=index)
                n = labels.numel()
                if term_keys:
                    last_terms = self.loss_fn.last_terms
                    for j, key in enumerate(term_keys):
                        term_sums[j] += last_terms.get(key, 0.0) * n
                    term_sums[-1] += n
                tally.loss_sum += out[0] * n
                tally.seen += n
                tally.nonzero += out[0] != 0.0
                if out[1] is None:
                    tally.no_accuracy += n
                else:
                    tally.correct += out[1]
                if out[2] is not None:
                    tally.terms += out[2]
                    tally.counted += 1
                window["loss"] += out[0] * n
                window["n"] += n
                bar.update(slice_images * ctx.world)
                bar.set_postfix(epoch=epoch + 1, loss=f"{tally.loss_sum / tally.seen:.3f}", refresh=False)
                if (micro + 1) % k:
                    continue
                self._optimizer_step()
                steps_run += 1
                if tracker is not None and tracker.due(self.global_step):
                    dt = time.perf_counter() - window["t"]
                    tracker.step(self.global_step, {
                        "epoch": epoch + 1, "loss": window["loss"] / max(window["n"], 1),
                        "lr": self.optimizer.param_groups[0]["lr"],
                        "images_per_s": window["n"] * ctx.world / dt if dt > 0 else math.nan})
                    window = {"loss": 0.0, "n": 0, "t": time.perf_counter()}
                every = cfg.train.checkpoint_every_steps
                if every and self.global_step % every == 0 and micro + 1 < per_epoch:
                    sums = D.all_reduce_sum(ctx, tally.as_list(), self.device)
                    self._checkpoint(epoch, micro + 1, {"sums": sums, "seconds": time.perf_counter() - t0})
                if stop_after_steps is not None and steps_run >= stop_after_steps:
                    bar.close()
                    if tracker is not None:
                        tracker.close()
                    return TrainResult(self.out, self.ckpt_path, self.history, time.perf_counter() - t_start)
            self.batches_done, self.partial = 0, None
            dt = time.perf_counter() - t0
            loss_sum, correct, seen, no_acc, nonzero, terms, counted = D.all_reduce_sum(ctx, tally.as_list(),
                                                                                        self.device)
            if nonzero == 0:
                self._stop_on_zero_loss(epoch, terms == 0 and counted > 0)
            record = {"epoch": epoch + 1, "loss": loss_sum / max(seen, 1),
                      "train_acc": correct / seen if no_acc == 0 and seen else None,
                      "images_per_s": seen / dt if dt > 0 else math.nan, "seconds": dt,
                      "lr": self.optimizer.param_groups[0]["lr"]}
            if term_keys:  # a joint loss: each component's unweighted mean (since a mid-epoch resume, if any)
                sums = D.all_reduce_sum(ctx, term_sums, self.device)
                record.update({f"loss.{key}": sums[j] / max(sums[-1], 1) for j, key in enumerate(term_keys)})
            improved = self._validate_epoch(epoch + 1, record) if self.best is not None else False
            self.history.append(record)
            self._checkpoint(epoch + 1, 0, None, best=improved)
            if tracker is not None:
                with open(self.out / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps(record) + "\n")
                tracker.epoch(self.global_step, record)
            acc = f" acc {record['train_acc']:.3f}" if record["train_acc"] is not None else ""
            val = "".join(f" {k} {record[k]:.4f}" for k in ("val_loss", "val_acc", "val_auc")
                          if record.get(k) is not None)
            val += " (best)" if improved else ""
            if term_keys:
                val += " (" + ", ".join(f"{key} {record[f'loss.{key}']:.4f}" for key in term_keys) + ")"
            self.say(f"epoch {epoch + 1}/{cfg.optim.epochs}: loss {record['loss']:.4f}{acc}{val} "
                     f"{record['images_per_s']:.0f} img/s")
            if self.best is not None and self.best.stopped:
                value = "none" if self.best.value is None else f"{self.best.value:.4f}"
                self.say(f"early stop: {self.best.metric} did not improve for {self.best.patience} epochs; best.pt "
                         f"holds epoch {self.best.epoch} ({self.best.metric} {value})")
                break
        bar.close()
        if tracker is not None:
            tracker.close()
        if len(self.dataset.failed):
            self.say(f"data: {len(self.dataset.failed)} image(s) failed to decode during training and were replaced: "
                     f"{', '.join(sorted(self.dataset.failed)[:5])}")
        stopped = self.best is not None and self.best.stopped
        if (len(self.history) == cfg.optim.epochs or stopped) and ctx.is_main:
            plot_training_curves(self.history, self.out / "training_curves.png")
            write_json(self.out / "training_curves.json", self.history)
        return TrainResult(self.out, self.ckpt_path, self.history, time.perf_counter() - t_start)

    def _stop_on_zero_loss(self, epoch: int, no_terms: bool) -> None:
        """An epoch whose every batch had loss exactly 0 trained nothing: say why and stop, keeping the last
        checkpoint, rather than log it as an epoch of training."""
        name = self.cfg.loss.name
        kept = "the last checkpoint is kept" if self.ckpt_path.is_file() else "no checkpoint was written"
        if no_terms:
            raise FacelabError(
                f"loss '{name}' was exactly 0 in every batch of epoch {epoch + 1}: no batch held a valid pair or "
                f"triplet (it needs {self.loss_fn.needs()} per batch); stopped, {kept} -- use the default sampler "
                f"(data.sampler=auto) or a classification loss (--loss arcface)")
        raise FacelabError(
            f"loss '{name}' was exactly 0 in every batch of epoch {epoch + 1}: nothing left to learn from these "
            f"batches (every term already meets its margin); stopped, {kept} -- raise loss.options.margin for a "
            f"harder objective, or train fewer epochs")

    def _forward_backward(self, images: torch.Tensor, labels: torch.Tensor, sync: bool, epoch: int,
                          micro: int, index: torch.Tensor | None = None) -> tuple[float, int | None, int | None]:
        """One micro-batch; gradients are all-reduced (DDP) only on the last micro-batch of an accumulation.
        While fine-tuning keeps the backbone frozen it runs without gradients and only the head learns.

        Returns the loss, the number of correct training predictions (None without class scores) and the loss's
        pair/triplet term count (None for classifiers)."""
        images = images.to(self.device, non_blocking=True)
        if self.cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(self.device, non_blocking=True)
        frozen = self.finetune is not None and self.finetune.frozen(self.global_step)
        if self.finetune is not None:
            self.finetune.set_modes(self.backbone, self.global_step)
        targets = None if self.targets is None or index is None else self.targets[index].to(self.device)
        with contextlib.ExitStack() as stack:
            if not sync:
                for ddp in self.ddp:
                    stack.enter_context(ddp.no_sync())
            with self.precision.autocast(self.device):
                if frozen:
                    with torch.no_grad():
                        embeddings = self.backbone(images)
                else:
                    embeddings = self.model(images)
                if self.loss_takes_targets:
                    out = self.loss_module(embeddings, labels, targets=targets)
                else:
                    out = self.loss_module(embeddings, labels)
                total = out.loss
                if not frozen:
                    total = total + self._auxiliary_loss(labels, targets)
                if self.distill is not None and not frozen:
                    total = total + self.cfg.init.distill * self.distill(embeddings, labels, targets=targets).loss
            loss_value = total.item()
            everywhere = D.all_reduce_sum(self.ctx, [loss_value], self.device)[0] if self.ctx.enabled else loss_value
            if not math.isfinite(everywhere):
                raise FacelabError(self._nan_message(loss_value, epoch, micro))
            loss = total / self.cfg.optim.accumulate if self.cfg.optim.accumulate > 1 else total
            self.scaler.scale(loss).backward()
        predictions = getattr(out, "predictions", None)
        if predictions is None and out.logits is not None:
            predictions = out.logits.argmax(1)
        correct = None if predictions is None else int((predictions == labels).sum())
        return loss_value, correct, out.terms

    def _auxiliary_loss(self, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor | float:
        """``aux_weight`` x the training loss of each auxiliary embedding the backbone produced in this forward
        (Inception's auxiliary classifiers, Szegedy et al. 2015); 0 for backbones without auxiliary heads."""
        take = getattr(self.backbone, "take_auxiliary", None)
        extra: torch.Tensor | float = 0.0
        for aux in take() if take is not None else []:
            out = (self.loss_module(aux, labels, targets=targets) if self.loss_takes_targets
                   else self.loss_module(aux, labels))
            extra = extra + self.backbone.aux_weight * out.loss
        return extra

    def _nan_message(self, loss_value: float, epoch: int, micro: int) -> str:
        what = loss_value if not math.isfinite(loss_value) else "nan on another process"
        lower = f"{self.cfg.optim.lr / 10:.3g}"
        head = (f"loss became {what} at epoch {epoch + 1} step {micro + 1} "
                f"(lr {self.optimizer.param_groups[0]['lr']:.3g})")
        if self.ckpt_path.is_file():
            return (f"{head}; the last good checkpoint is kept -- resume it with a lower learning rate: facelab "
                    f"train --resume --out {self.out} --set optim.lr={lower}")
        return (f"{head} before the first checkpoint -- train again with a lower learning rate (--lr {lower}) or "
                f"clip gradients (--set optim.grad_clip=5)")

    def _optimizer_step(self) -> None:
        if self.scaler.is_enabled():
            if self.sharded and self.ctx.enabled:
                D.agree_on_overflow(self.sharded, self.ctx)
            self.scaler.unscale_(self.optimizer)
        if self.cfg.optim.grad_clip > 0:
            D.clip_grad_norm(self.replicated, self.sharded, self.cfg.optim.grad_clip, self.ctx)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.global_step += 1
        if self.ema is not None:
            self.ema.update(self.backbone)


def _rewrite_log(path: Path, history: list[dict[str, Any]]) -> None:
    """The log mirrors the checkpoint's history, so a kill between checkpoint and log leaves no gap or duplicate."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as fh:
        for rec in history:
            fh.write(json.dumps(rec) + "\n")
