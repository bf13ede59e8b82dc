"""A gallery together with the model that fills it: enroll people, identify every face in a photo (1:N), verify a
photo against one enrolled identity (1:1). The CLI, the HTTP service and the Python API (``facelab.Gallery``) all
go through this class, so a decision is made the same way wherever it is asked for.

Decisions use the threshold of their task (:mod:`facelab.inference.thresholds`): identification the model's 1:N
threshold (FPIR-calibrated), verification against an identity the 1:1 threshold (FAR-calibrated); either can be
overridden by a value or re-targeted to another FPIR/FAR, and every result says which threshold was used and why.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facelab.errors import FacelabError
from facelab.images import ImageInput, source_name
from facelab.inference.model import FaceEmbedding, FaceModel, load_model
from facelab.inference.thresholds import IDENTIFICATION, VERIFICATION, Threshold
from facelab.serving.gallery import Gallery as Store
from facelab.serving.gallery import IdentityInfo, Match, check_name, content_hash


def _bytes_hash(src: ImageInput) -> str | None:
    """SHA-256 of an image's encoded bytes (the gallery's duplicate key); None for decoded pixels."""
    if isinstance(src, tuple):
        return content_hash(bytes(src[1]))
    if isinstance(src, bytes | bytearray):
        return content_hash(bytes(src))
    if isinstance(src, str | os.PathLike):
        try:
            return content_hash(Path(src).read_bytes())
        except OSError:
            return None
    return None


@dataclass(frozen=True)
class FaceIdentification:
    """1:N answer for one face of a photo: the top-k identities at or above the threshold (best first; empty =
    unknown), the nearest identity even below it, and the face's box."""

    face: FaceEmbedding
    matches: tuple[Match, ...]
    nearest: Match | None
    threshold: float
    threshold_source: str

    @property
    def identity(self) -> str | None:
        return self.matches[0].name if self.matches else None

    def to_dict(self) -> dict[str, Any]:
        return {"identity": self.identity or "unknown", "known": bool(self.matches),
                "matches": [{"name": m.name, "score": round(m.score, 6)} for m in self.matches],
                "nearest": None if self.nearest is None else {"name": self.nearest.name,
                                                               "score": round(self.nearest.score, 6)},
                "threshold": round(self.threshold, 6), "threshold_source": self.threshold_source,
                **self.face.face_dict()}


@dataclass(frozen=True)
class IdentityVerification:
    """1:1 answer to "is this photo NAME?": the best cosine score of the photo's face against NAME's enrolled
    images, the threshold in force and the decision."""

    name: str
    score: float
    threshold: float
    threshold_source: str
    same_person: bool
    face: FaceEmbedding

    def to_dict(self) -> dict[str, Any]:
        return {"identity": self.name, "score": round(self.score, 6), "threshold": round(self.threshold, 6),
                "threshold_source": self.threshold_source, "same_person": self.same_person, **self.face.face_dict()}


@dataclass(frozen=True)
class Enrollment:
    """What ``enroll`` stored: images ``added`` for ``name`` (``images`` now enrolled in all), the ones that
    failed (path, reason) when not strict, and how faces were found (method -> count)."""

    name: str
    added: int
    images: int
    failed: tuple[tuple[str, str], ...] = ()
    methods: tuple[tuple[str, int], ...] = ()
    duplicates: tuple[tuple[str, str], ...] = ()  # (image, already-enrolled image with the same bytes): skipped

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "added": self.added, "images": self.images,
                "failed": [{"image": p, "reason": r} for p, r in self.failed], "methods": dict(self.methods),
                "duplicates": [{"image": p, "same_as": q} for p, q in self.duplicates]}


class FaceGallery:
    """``FaceGallery(path, model)``: the gallery file ``path`` (SQLite; created on first enroll) used with
    ``model`` (any model reference or a :class:`FaceModel`). Opening a gallery built with another model is an
    error: scores between two models' embeddings mean nothing."""

    def __init__(self, path: str | Path, model: str | Path | FaceModel, *, index: str = "exact",
                 create: bool = True, read_only: bool = False, busy_timeout: float | None = None,
                 **index_options: Any) -> None:
        self.model = load_model(model)
        kwargs: dict[str, Any] = {"index": index, "create": create, "index_options": index_options,
                                  "read_only": read_only}
        if busy_timeout is not None:
            kwargs["busy_timeout"] = busy_timeout
        self.store = Store(Path(path), self.model.fingerprint, self.model.embedding_dim, **kwargs)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> FaceGallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- thresholds -------------------------------------------------------------------------------------------------
    def identification_threshold(self, threshold: float | None = None, target_fpir: float | None = None
                                 ) -> Threshold:
        return self.model.threshold(IDENTIFICATION, threshold, target_fpir)

    def verification_threshold(self, threshold: float | None = None, target_far: float | None = None) -> Threshold:
        return self.model.threshold(VERIFICATION, threshold, target_far)

    # -- writes -----------------------------------------------------------------------------------------------------
    def enroll(self, name: str, images: Sequence[ImageInput], *, strict: bool = True,
               names: Sequence[str] | None = None, cache: bool = False) -> Enrollment:
        """Embed one face per image and add them to ``name`` in one transaction (all or nothing). ``strict``
        refuses the whole enrollment on the first unusable image; otherwise unusable images are skipped and
        listed (nothing is stored when none is usable). ``cache`` reuses a run's embedding cache."""
        if not images:
            raise FacelabError(f"no images given for {name!r}")
        name = check_name(name)  # refused before anything is decoded
        labels = list(names) if names is not None else [source_name(s) for s in images]
        res = self.model.embedder(cache=cache).embed(list(images), desc=f"enroll {name}", strict=strict,
                                                      names=labels)
        failed = tuple((labels[i], r) for i, r in res.failed)
        if not res.done:
            raise FacelabError(f"nothing to enroll for {name!r}: none of its {len(images)} image(s) is usable"
                               + (f" ({failed[0][1]})" if failed else ""))
        emb = res.embeddings / np.linalg.norm(res.embeddings, axis=1, keepdims=True).clip(1e-12)
        stored = self.store.enroll(name, [(labels[i], e, _bytes_hash(images[i]))
                                          for i, e in zip(res.done, emb, strict=True)])
        counts: dict[str, int] = {}
        for m in res.methods:
            counts[m] = counts.get(m, 0) + 1
        return Enrollment(stored.name, stored.added, stored.images, failed, tuple(sorted(counts.items())),
                          tuple(stored.duplicates))

    def remove(self, name: str) -> int:
        return self.store.remove(name)

    # -- reads ------------------------------------------------------------------------------------------------------
    def identities(self) -> list[IdentityInfo]:
        return self.store.identities()

    def identify(self, image: ImageInput, k: int = 5, *, threshold: float | None = None,
                 target_fpir: float | None = None, name: str | None = None) -> list[FaceIdentification]:
        """1:N for every face in the photo (one for a pre-cropped model), largest first as the detector orders
        them. Raises when the photo holds no face or cannot be read."""
        t = self.identification_threshold(threshold, target_fpir)
        faces = self.model.embed_faces(image, name)
        tops = self.store.search(np.stack([f.embedding for f in faces]), k)
        return [FaceIdentification(f, tuple(m for m in top if m.score >= t.value), top[0] if top else None, t.value,
                                   t.source) for f, top in zip(faces, tops, strict=True)]

    def verify(self, image: ImageInput, name: str, *, threshold: float | None = None,
               target_far: float | None = None, image_name: str | None = None) -> IdentityVerification:
        """1:1 against an enrolled identity: the photo's face (the policy's choice) vs NAME's best image."""
        t = self.verification_threshold(threshold, target_far)
        enrolled = self.store.embeddings_of(name)
        face = self.model.embed_face(image, image_name)
        score = float(np.clip((enrolled @ face.embedding).max(), -1.0, 1.0))
        return IdentityVerification(name, score, t.value, t.source, score >= t.value, face)

    def thresholds_in_force(self) -> dict[str, Any]:
        """Which thresholds decisions use and why (for /health and ``gallery check``)."""
        out: dict[str, Any] = {}
        for task in (VERIFICATION, IDENTIFICATION):
            t = self.model.thresholds.get(task)
            out[task] = None if t is None else {"value": t.value, "source": t.source, "target": t.target,
                                                "rate": t.rate_name}
        return out
