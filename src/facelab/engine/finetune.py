"""Fine-tuning from a trained model: the ``init`` config section (``facelab train --init NAME|BUNDLE|RUN``).

* :func:`resolve_init` opens the init model: a pretrained name or ONNX file (:mod:`facelab.pretrained`), a bundle,
  or a run folder / checkpoint; :func:`apply_init` makes the run's config describe it (architecture, input size,
  normalisation, alignment), so checkpoints, ``facelab eval`` and bundles rebuild the fine-tuned model like any
  other. The loss is built fresh for the folder's identities (a new head).
* :class:`FinetuneSchedule`: the backbone's learning rate is ``init.backbone_lr`` x ``optim.lr``; for the first
  ``init.freeze_epochs`` it is frozen (eval mode, no gradients: only the head learns), and with ``init.freeze_bn``
  its BatchNorm statistics stay those of the init model throughout.
* :func:`distill_targets`: the init model's embeddings of every training image (un-augmented, computed once and
  saved in the run folder), the targets of the ``distill`` loss that keeps the model close to the original.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from facelab.config import InitConfig, ModelConfig, TrainConfig, from_dict, to_dict
from facelab.errors import FacelabError
from facelab.inference.spec import InputSpec
from facelab.utils import distributed as D
from facelab.utils.device import default_batch_size
from facelab.utils.io import load_torch, save_torch

log = logging.getLogger(__name__)

DISTILL_TARGETS = "distill_targets.pt"
#: ``init.align`` value: the init model's own alignment
AUTO = "auto"


@dataclass
class InitModel:
    """The model a run starts from: ``module`` (eval, CPU) described by ``architecture`` (a ModelConfig dict) and
    fed as ``spec`` says."""

    module: nn.Module
    architecture: dict[str, Any]
    spec: InputSpec
    source: str
    info: dict[str, Any] = field(default_factory=dict)


def resolve_init(ref: str, accept_licence: bool = False) -> InitModel:
    """The init model ``ref`` names: anything :func:`facelab.inference.model.load_model` opens -- a pretrained
    name or ``.onnx`` file, a bundle (``.safetensors``), a run folder or checkpoint -- on the CPU.

    Raises:
        FacelabError: none of those, or what opening it raises (licence not accepted, missing package, ...).
    """
    from facelab.inference.model import load_model

    try:
        fm = load_model(ref, device="cpu", accept_licence=accept_licence)
    except FacelabError as exc:
        raise FacelabError(f"init.model: {exc}") from None
    return InitModel(fm.backbone.eval(), dict(fm.architecture), fm.spec, f"{fm.kind} {fm.source}", dict(fm.info))


def apply_init(cfg: TrainConfig, init: InitModel) -> list[str]:
    """Make ``cfg`` describe the init model (in place); returns what changed, for the log."""
    if init.spec.colour_order != "RGB":
        raise FacelabError(f"init.model {init.source} takes {init.spec.colour_order} input; facelab trains on RGB")
    changes = []
    model = from_dict(ModelConfig, dict(init.architecture), "init model architecture")
    if to_dict(model) != to_dict(cfg.model):
        changes.append(f"model {model.backbone} ({model.embedding_dim}-d)")
    cfg.model = model
    d, s = cfg.data, init.spec
    if (d.input_size, tuple(d.mean), tuple(d.std)) != (s.input_size, tuple(s.mean), tuple(s.std)):
        changes.append(f"input {s.input_size}x{s.input_size}, mean {list(s.mean)}, std {[round(v, 4) for v in s.std]}")
    d.input_size, d.mean, d.std = s.input_size, tuple(s.mean), tuple(s.std)  # type: ignore[assignment]
    align = s.align if cfg.init.align == AUTO else cfg.init.align
    if (d.align, d.align_options) != (align, dict(s.align_options)):
        changes.append(f"alignment {align}")
    d.align, d.align_options = align, dict(s.align_options) if align == s.align else dict(d.align_options)
    return changes


def validate_init(cfg: InitConfig) -> None:
    if not 0.0 <= cfg.backbone_lr <= 10.0:
        raise FacelabError(f"init.backbone_lr is a multiplier of optim.lr in [0, 10], got {cfg.backbone_lr}")
    if cfg.freeze_epochs < 0:
        raise FacelabError(f"init.freeze_epochs must be >= 0, got {cfg.freeze_epochs}")
    if cfg.distill < 0:
        raise FacelabError(f"init.distill is a loss weight >= 0, got {cfg.distill}")
    if not 0.0 <= cfg.interpolate <= 1.0:
        raise FacelabError(f"init.interpolate is a mixing coefficient in [0, 1], got {cfg.interpolate}")


def interpolate_weights(init: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor],
                        alpha: float) -> dict[str, torch.Tensor]:
    """Weight-space ensemble of a fine-tuned model with the model it started from (WiSE-FT: Wortsman et al.,
    *Robust fine-tuning of zero-shot models*, CVPR 2022): ``init + alpha * (tuned - init)`` for every floating
    tensor (BatchNorm statistics included), integer buffers (``num_batches_tracked``) from ``tuned``. Fine-tuning
    on a narrow folder moves the weights towards what that folder needs and away from everyone else; part of the
    way along that line keeps most of the gain on the folder and most of the original's accuracy elsewhere
    (docs/pretrained.md: on a relit 38-identity folder, alpha 0.25 raised TAR at FAR 1e-3 0.19 -> 0.36 with LFW
    -0.05 points, where alpha 1 reached 0.55 at -2.08). ``alpha`` 1 returns ``tuned``'s tensors, 0 ``init``'s;
    where ``tuned == init`` the result is exact.

    Raises:
        FacelabError: the two state dicts do not hold the same tensors (names, shapes).
    """
    if init.keys() != tuned.keys():
        diff = sorted(set(init) ^ set(tuned))
        raise FacelabError(f"init.interpolate: the init model and the trained backbone differ in {len(diff)} "
                           f"tensors (e.g. {diff[0]})")
    out = {}
    for k, t in tuned.items():
        i = init[k].to(t.device)
        if i.shape != t.shape:
            raise FacelabError(f"init.interpolate: {k} is {tuple(i.shape)} in the init model, {tuple(t.shape)} "
                               f"trained")
        out[k] = torch.lerp(i.to(t.dtype), t, alpha) if t.is_floating_point() else t.clone()
    return out


class FinetuneSchedule:
    """When the backbone is frozen and how its BatchNorms run (see the module docstring)."""

    def __init__(self, cfg: InitConfig, steps_per_epoch: int) -> None:
        self.freeze_steps = round(cfg.freeze_epochs * steps_per_epoch)
        self.freeze_bn = cfg.freeze_bn

    def frozen(self, step: int) -> bool:
        return step < self.freeze_steps

    def set_modes(self, backbone: nn.Module, step: int) -> None:
        """``backbone.train()`` as the loop expects, then frozen parts back to eval."""
        if self.frozen(step):
            backbone.eval()
            return
        backbone.train()
        if self.freeze_bn:
            for m in backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()


def scale_backbone_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Multiply the learning rate of the backbone's parameter groups (call before building the scheduler)."""
    for group in optimizer.param_groups:
        if str(group.get("name", "")).startswith("backbone"):
            group["lr"] *= factor


class Indexed(Dataset[tuple[torch.Tensor, int, int]]):
    """``(image, label, index)``: the index finds each image's distillation target."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        image, label = self.dataset[i]
        return image, label, i


@torch.no_grad()
def _embed(model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int, progress: bool) -> torch.Tensor:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    out = [model(images.to(device)).float().cpu()
           for images, _ in tqdm(loader, desc="distillation targets", unit="batch", disable=not progress, leave=False)]
    return torch.cat(out) if out else torch.zeros(0)


def distill_targets(teacher: nn.Module, eval_view: Dataset, items: list[tuple[str, int]], run_dir: Path,
                    ctx: D.DistContext, device: torch.device, batch_size: int | None = None,
                    progress: bool = True) -> torch.Tensor:
    """(N, D) float32 embeddings of the training images by the frozen init model, un-augmented.

    Saved as ``RUN/distill_targets.pt`` with the list of images they belong to and reused on resume; under torchrun
    each process embeds its share and the shares are exchanged.
    """
    path = run_dir / DISTILL_TARGETS
    if path.is_file():
        saved = load_torch(path)
        if isinstance(saved, dict) and saved.get("items") == [list(x) for x in items]:
            return saved["targets"]
        log.warning("%s belongs to another split; recomputing it", path)
    teacher = teacher.to(device).eval()
    start, end = D.shard_range(len(items), ctx.rank, ctx.world)
    local = _embed(teacher, Subset(eval_view, range(start, end)), device, batch_size or default_batch_size(device),
                   progress)
    targets = torch.cat([torch.as_tensor(np.asarray(p)) for p in D.all_gather_objects(ctx, local.numpy())])
    if ctx.is_main:
        save_torch(path, {"items": [list(x) for x in items], "targets": targets})
    return targets
