"""A weighted sum of losses, e.g. ``0.7 * softmax + 0.3 * triplet`` or softmax + centre loss, built from YAML::

    loss:
      name: joint
      options:
        components:
          - {name: softmax, weight: 0.7}
          - {name: triplet, weight: 0.3, options: {mining: batch_hard}}
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from facelab.config import LossConfig, OptimConfig
from facelab.errors import FacelabError
from facelab.losses.base import BatchNeeds, FaceLoss, LossOutput, build_loss, check_option, register_loss

COMPONENT_KEYS = ("name", "weight", "options")


def _component(i: int, spec: Any) -> tuple[str, float, dict[str, Any]]:
    where = f"loss.options.components[{i}]"
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise FacelabError(f"{where} must be a mapping with a loss 'name', got {spec!r}")
    unknown = sorted(set(spec) - set(COMPONENT_KEYS))
    if unknown:
        raise FacelabError(f"{where} has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(COMPONENT_KEYS)}")
    weight, options = spec.get("weight", 1.0), spec.get("options") or {}
    if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
        raise FacelabError(f"{where}.weight must be a number >= 0, got {weight!r}")
    if not isinstance(options, dict):
        raise FacelabError(f"{where}.options must be a mapping, got {options!r}")
    return spec["name"], float(weight), options


class JointLoss(FaceLoss):
    """``sum_i weight_i * loss_i(embeddings, labels)``; logits come from the first component that has them.

    Each component keeps its own parameters and optimizer groups (e.g. centre loss's learning rate), named
    ``<index>.<loss name>.<group>``. ``last_terms`` holds the unweighted component values of the latest call.
    Its batch needs are its parts' combined (softmax + triplet needs the triplet's P x K batches).
    """

    def __init__(self, embedding_dim: int, num_classes: int, components: list[dict[str, Any]] | None = None) -> None:
        super().__init__()
        check_option(isinstance(components, list) and len(components) > 0, "components",
                     "must be a non-empty list of {name, weight, options}", components)
        specs = [_component(i, spec) for i, spec in enumerate(components)]  # type: ignore[arg-type]
        self.num_classes = num_classes
        self.names = [name for name, _, _ in specs]
        self.weights = [weight for _, weight, _ in specs]
        self.parts = nn.ModuleList(build_loss(LossConfig(name, options), embedding_dim, num_classes)
                                   for name, _, options in specs)
        self.last_terms: dict[str, float] = {}

    def needs(self) -> BatchNeeds:
        needs = BatchNeeds()
        for part in self.parts:
            needs = needs.combine(part.needs())  # type: ignore[operator]
        return needs

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        total: torch.Tensor | None = None
        logits: torch.Tensor | None = None
        terms: int | None = None
        self.last_terms = {}
        for i, (name, weight, part) in enumerate(zip(self.names, self.weights, self.parts, strict=True)):
            out = part(embeddings, labels)
            self.last_terms[f"{i}.{name}"] = float(out.loss.detach())
            total = weight * out.loss if total is None else total + weight * out.loss
            if logits is None:
                logits = out.logits
            if out.terms is not None:
                terms = (terms or 0) + out.terms
        assert total is not None
        return LossOutput(total, logits, terms)

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor | None:
        for part in self.parts:
            scores = part.logits(embeddings)
            if scores is not None:
                return scores
        return None

    def optimizer_groups(self, cfg: OptimConfig) -> list[dict]:
        return [{**group, "name": f"{i}.{name}.{group.get('name', 'params')}"}
                for i, (name, part) in enumerate(zip(self.names, self.parts, strict=True))
                for group in part.optimizer_groups(cfg)]


register_loss("joint", JointLoss)
