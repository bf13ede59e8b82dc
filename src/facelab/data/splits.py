"""Deterministic, seeded splits frozen into a JSON manifest.

Training writes the manifest and evaluation reads it back, so the images scored are exactly those never trained on.
Two held-out sets are made at once:

* closed set: up to ``closed_images_per_identity`` images of every training identity (N-way classification), but
  never more than ``closed_max_fraction`` of the identity's images and never so many that fewer than
  ``min_train_images`` are left to train on -- a small identity keeps its photos for training (the manifest's report
  lists every identity whose hold-out was cut, under ``closed_capped``);
* open set: whole identities never seen in training (1:1 verification and 1:N identification).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facelab.config import SplitConfig, check_split
from facelab.data.folder import FaceFolder
from facelab.errors import FacelabError
from facelab.utils.io import write_json

MANIFEST_VERSION = 1


@dataclass
class SplitManifest:
    classes: list[str]  # training identities; the list index is the class label
    train: list[tuple[str, int]]
    closed_test: list[tuple[str, int]]
    open_identities: list[str]
    open_test: list[tuple[str, int]]  # label indexes open_identities
    seed: int = 0
    root: str = ""
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "seed": self.seed,
            "root": self.root,
            "classes": list(self.classes),
            "open_identities": list(self.open_identities),
            "train": [list(x) for x in self.train],
            "closed_test": [list(x) for x in self.closed_test],
            "open_test": [list(x) for x in self.open_test],
            "report": self.report,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SplitManifest:
        if d.get("version") != MANIFEST_VERSION:
            raise FacelabError(f"split manifest version {d.get('version')!r} is not supported")
        return cls(
            classes=list(d["classes"]),
            train=[(str(p), int(y)) for p, y in d["train"]],
            closed_test=[(str(p), int(y)) for p, y in d["closed_test"]],
            open_identities=list(d["open_identities"]),
            open_test=[(str(p), int(y)) for p, y in d["open_test"]],
            seed=int(d.get("seed", 0)),
            root=str(d.get("root", "")),
            report=dict(d.get("report", {})),
        )

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())


def _num_open(cfg: SplitConfig, total: int) -> int:
    k = cfg.open_identities
    n = round(k * total) if 0 < k < 1 else int(k)
    if n >= total:
        raise FacelabError(
            f"data.split.open_identities={k} leaves no training identity out of {total}; use fewer"
        )
    return n


def closed_hold_out(count: int, cfg: SplitConfig) -> int:
    """Closed-set images held out of an identity with ``count`` images: ``closed_images_per_identity``, capped to
    ``floor(closed_max_fraction * count)`` and to ``count - min_train_images`` (never below 0)."""
    by_fraction = math.floor(cfg.closed_max_fraction * count + 1e-9)  # 1/3 of 9 is 3, not 2.9999...
    return max(0, min(cfg.closed_images_per_identity, by_fraction, count - cfg.min_train_images))


def make_split(folder: FaceFolder, cfg: SplitConfig) -> SplitManifest:
    """Split ``folder`` per ``cfg`` (seeded: the same folder and config give the same manifest).

    Raises:
        FacelabError: an identity with fewer than ``min_train_images`` images (naming it and the key that drops such
            identities), more open identities than the folder allows, or an impossible split setting.
    """
    check_split(cfg)
    names = sorted(folder.identities)
    need = cfg.min_train_images
    for name in names:
        count = len(folder.identities[name])
        if count < need:
            raise FacelabError(
                f"identity '{name}' has {count} image(s) but training needs at least {need} "
                f"(data.split.min_train_images); set data.split.min_images_per_identity={need} to drop such "
                f"identities"
            )
    rng = random.Random(cfg.seed)
    open_ids = sorted(rng.sample(names, _num_open(cfg, len(names))))
    open_set = set(open_ids)
    classes = [n for n in names if n not in open_set]
    train: list[tuple[str, int]] = []
    closed: list[tuple[str, int]] = []
    capped: list[list[Any]] = []
    for label, name in enumerate(classes):
        images = sorted(folder.identities[name])
        rng.shuffle(images)
        k = closed_hold_out(len(images), cfg)
        if k < cfg.closed_images_per_identity:
            capped.append([name, k, len(images)])
        closed.extend((p, label) for p in sorted(images[:k]))
        train.extend((p, label) for p in sorted(images[k:]))
    open_test = [(p, i) for i, name in enumerate(open_ids) for p in sorted(folder.identities[name])]
    report = {
        "identities": len(names),
        "train_identities": len(classes),
        "open_identities": len(open_ids),
        "train_images": len(train),
        "closed_test_images": len(closed),
        "open_test_images": len(open_test),
        # identities whose closed-set hold-out was cut to keep training images: [identity, held out, images]
        "closed_capped": capped,
        "bad_images": [list(x) for x in folder.report.bad_images],
        "ignored_files": len(folder.report.ignored_files),
        "dropped_identities": [list(x) for x in folder.report.dropped_identities],
    }
    return SplitManifest(classes, train, closed, open_ids, open_test, cfg.seed, str(folder.root), report)
