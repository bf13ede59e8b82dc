"""The model handle: one object for a face model however it was obtained, and one place that resolves a model
reference.

Every command and the Python API take the same ``MODEL`` reference and hand it to :func:`load_model`:

* a **run folder** (``facelab train --out RUN``; holds ``checkpoint.pt``) or a **checkpoint file** (``.pt``);
* a **bundle** (``.safetensors`` written by ``facelab bundle`` / ``facelab pretrained get``);
* a **pretrained model name** (``facelab pretrained list``) or a user ONNX file (``.onnx``).

The result, a :class:`FaceModel`, carries the backbone (eval mode, on its device), its input spec (size, colours,
normalisation, flip TTA, alignment), its embedding size, both accept thresholds with their provenance, and its
fingerprint (weights + architecture + spec: equal fingerprints, equal embeddings).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from facelab.config import to_dict
from facelab.errors import FacelabError
from facelab.faces import FaceCrop
from facelab.faces.cache import CropCache
from facelab.images import ImageInput
from facelab.inference.bundle import BundleMeta, is_bundle, model_fingerprint, read_bundle, write_bundle
from facelab.inference.embedder import Embedder
from facelab.inference.spec import InputSpec
from facelab.inference.thresholds import IDENTIFICATION, VERIFICATION, Threshold, Thresholds
from facelab.inference.verifiers import VERIFIER_KINDS, ChiSquareVerifier
from facelab.models import build_from_architecture, inference_form
from facelab.runs import EMBEDDING_CACHE, LoadedRun, eer_threshold, is_run, load_run, load_thresholds
from facelab.utils.device import resolve_device

log = logging.getLogger(__name__)


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); zero rows stay zero."""
    x = np.asarray(x, np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


# -- results ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FaceEmbedding:
    """One face of a photo: where it is (``box`` x, y, w, h in the photo's pixels, after EXIF orientation), how it was
    found (``method``: resized, aligned, undetected), the detector's ``score`` and the unit ``embedding`` (D,)."""

    box: tuple[float, float, float, float]
    method: str
    score: float | None
    embedding: np.ndarray = field(repr=False)

    @classmethod
    def of(cls, crop: FaceCrop, embedding: np.ndarray) -> FaceEmbedding:
        return cls(crop.box, crop.method, crop.score, embedding)

    def face_dict(self) -> dict[str, Any]:
        return {"box": [round(float(v), 2) for v in self.box], "method": self.method,
                "detector_score": None if self.score is None else round(float(self.score), 4)}


@dataclass(frozen=True)
class Verification:
    """A 1:1 decision: cosine ``score`` of the two faces, the ``threshold`` in force and why, and the verdict."""

    score: float
    threshold: float
    threshold_source: str
    same_person: bool
    faces: tuple[FaceEmbedding, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"score": round(self.score, 6), "threshold": round(self.threshold, 6),
                "threshold_source": self.threshold_source, "same_person": self.same_person,
                "faces": [f.face_dict() for f in self.faces]}


# -- the handle -------------------------------------------------------------------------------------------------------
@dataclass
class FaceModel:
    """A face embedding model ready to use: ``embed``, ``embed_faces``, ``verify``, ``save_bundle``.

    ``kind`` says what the reference was (run, checkpoint, bundle, pretrained, onnx) and ``source`` where it came
    from; ``run`` is the opened run when there is one (evaluation needs its split and loss)."""

    backbone: nn.Module
    spec: InputSpec
    architecture: dict[str, Any]
    embedding_dim: int
    thresholds: Thresholds
    fingerprint: str
    source: str
    kind: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    info: dict[str, Any] = field(default_factory=dict)
    run: LoadedRun | None = field(default=None, repr=False)
    #: the reference as the user gave it (set by load_model)
    ref: str = ""
    #: a learned 1:1 verifier carried by the bundle (``verify(..., scorer="deepface")``)
    verifier: ChiSquareVerifier | None = field(default=None, repr=False)

    @classmethod
    def from_module(cls, backbone: nn.Module, architecture: dict[str, Any], spec: InputSpec, *,
                    embedding_dim: int | None = None, thresholds: Thresholds | None = None, source: str = "",
                    kind: str = "module", device: str | torch.device | None = None,
                    info: dict[str, Any] | None = None, run: LoadedRun | None = None) -> FaceModel:
        """Wrap a backbone; the embedding size is read from a dry run when not given, the fingerprint computed."""
        dev = resolve_device(str(device)) if device is not None else next(
            (p.device for p in backbone.parameters()), torch.device("cpu"))
        backbone = backbone.to(dev).eval()
        dim = _output_dim(backbone, spec, dev)
        if embedding_dim is not None and embedding_dim != dim:
            raise FacelabError(f"{source or 'model'}: the weights give {dim}-d embeddings but {embedding_dim} "
                               f"are declared")
        fp = model_fingerprint(backbone.state_dict(), architecture, spec, dim)
        return cls(backbone, spec, architecture, dim, thresholds or Thresholds(), fp, source, kind, dev,
                   dict(info or {}), run)

    # -- embedding --------------------------------------------------------------------------------------------------
    def embedder(self, *, progress: bool = False, cache: bool = False, batch_size: int | None = None,
                 flip: bool | None = None) -> Embedder:
        """The embedding primitive for this model. ``cache`` uses the run's ``embedding_cache/`` (runs only) and,
        for a model that aligns faces, the aligned-crop cache (:mod:`facelab.faces.cache`; files detected once,
        e.g. by training); ``flip`` overrides the spec's flip TTA (the cache then keys on a derived fingerprint)."""
        spec, fp = self.spec, self.fingerprint
        if flip is not None and flip != spec.flip_tta:
            spec = dataclasses.replace(spec, flip_tta=flip)
            fp = hashlib.sha256(f"{fp}|flip_tta={flip}".encode()).hexdigest()
        cache_dir = self.run.path / EMBEDDING_CACHE if (cache and self.run is not None) else None
        crops = CropCache.for_spec(spec) if (cache and spec.aligned) else None
        return Embedder(self.backbone, spec, device=self.device, batch_size=batch_size, progress=progress,
                        cache_dir=cache_dir, fingerprint=fp, crop_cache=crops)

    def embed(self, images: Sequence[ImageInput] | ImageInput, *, batch_size: int | None = None,
              progress: bool = False) -> np.ndarray:
        """Unit-length float32 embeddings (N, D), one face per image (the policy's choice when a photo holds
        several). Accepts paths, encoded bytes, PIL images and numpy arrays (grey, RGB, RGBA). Raises a
        FacelabError naming the first image that cannot be used (unreadable, too large, no face)."""
        if not isinstance(images, list | tuple):
            images = [images]  # type: ignore[list-item]
        return unit(self.embedder(batch_size=batch_size, progress=progress).embed_all(images))

    def embed_faces(self, image: ImageInput, name: str | None = None) -> list[FaceEmbedding]:
        """Every face in one photo with its box and unit embedding (one for a pre-cropped model)."""
        crops, emb = self.embedder().embed_faces(image, name)
        return [FaceEmbedding.of(c, e) for c, e in zip(crops, unit(emb), strict=True)]

    def embed_face(self, image: ImageInput, name: str | None = None) -> FaceEmbedding:
        """The one face the policy picks in a photo."""
        emb = self.embedder()
        (crop,) = emb.faces(image, name=name)
        return FaceEmbedding.of(crop, unit(emb.embed_crops([crop.image]))[0])

    # -- decisions --------------------------------------------------------------------------------------------------
    def threshold(self, task: str, threshold: float | None = None, target: float | None = None) -> Threshold:
        """The threshold in force for ``task`` (verification / identification): explicit, re-targeted, or stored."""
        return self.thresholds.resolve(task, threshold, target)

    def verify(self, a: ImageInput, b: ImageInput, *, threshold: float | None = None,
               target_far: float | None = None, scorer: str = "cosine") -> Verification:
        """1:1: are the faces in ``a`` and ``b`` the same person? ``scorer`` "cosine": cosine score against the 1:1
        threshold; "deepface": the learned chi-square + SVM verifier the bundle carries (its own threshold unless
        ``threshold`` is given).

        Raises:
            FacelabError: an unknown scorer, a deepface request to a model without a verifier, no face found.
        """
        if scorer == "cosine":
            t = self.threshold(VERIFICATION, threshold, target_far)
            fa, fb = self.embed_face(a), self.embed_face(b)
            score = float(np.clip(np.dot(fa.embedding, fb.embedding), -1.0, 1.0))
            return Verification(score, t.value, t.source, score >= t.value, (fa, fb))
        if scorer not in VERIFIER_KINDS:
            raise FacelabError(f"unknown scorer {scorer!r}; use cosine or {', '.join(VERIFIER_KINDS)}")
        v = self.require_verifier(scorer)
        if target_far is not None:
            raise FacelabError(f"--target-far applies to the cosine threshold; the {scorer} verifier has one "
                               f"threshold (give --threshold to override it)")
        fa, fb = self.embed_face(a), self.embed_face(b)
        score = float(v.score(fa.embedding[None], fb.embedding[None])[0])
        value, source = (v.threshold, f"{scorer} verifier: {v.source}") if threshold is None else (threshold, "given")
        return Verification(score, float(value), source, score >= value, (fa, fb))

    def require_verifier(self, kind: str) -> ChiSquareVerifier:
        """The stored learned verifier of ``kind``, or a FacelabError saying how to get one."""
        if self.verifier is None or self.verifier.kind != kind:
            raise FacelabError(f"this model carries no {kind} verifier: fit one with `facelab verifier MODEL "
                               f"--pairs PAIRS --data DIR -o model.safetensors`")
        return self.verifier

    # -- persistence ------------------------------------------------------------------------------------------------
    def with_thresholds(self, thresholds: Thresholds) -> FaceModel:
        return dataclasses.replace(self, thresholds=thresholds)

    def with_verifier(self, verifier: ChiSquareVerifier | None) -> FaceModel:
        if verifier is not None and verifier.lo.shape != (self.embedding_dim,):
            raise FacelabError(f"a verifier for {verifier.lo.shape[0]}-d embeddings does not fit this "
                               f"{self.embedding_dim}-d model")
        return dataclasses.replace(self, verifier=verifier)

    def bundle_meta(self) -> BundleMeta:
        return BundleMeta(self.architecture, self.spec, self.embedding_dim, self.thresholds, self.fingerprint,
                          self.source[:2000], self.info, self.verifier)

    def save_bundle(self, path: str | Path) -> Path:
        """Write this model as a bundle (safetensors + validated metadata), atomically."""
        state = {k: v.detach().cpu() for k, v in self.backbone.state_dict().items()}
        return write_bundle(path, state, self.bundle_meta())

    def describe(self) -> str:
        v, i = self.thresholds.verification, self.thresholds.identification
        return (f"{self.kind} {self.source}: {self.architecture.get('backbone')}, input {self.spec.input_size}x"
                f"{self.spec.input_size} {self.spec.colour_order}, align {self.spec.align}, {self.embedding_dim}-d, "
                f"fingerprint {self.fingerprint[:12]}; 1:1 threshold "
                f"{v.describe() if v else 'none'}; 1:N threshold {i.describe() if i else 'none'}")


def _output_dim(backbone: nn.Module, spec: InputSpec, device: torch.device) -> int:
    with torch.inference_mode():
        out = backbone(torch.zeros(1, 3, spec.input_size, spec.input_size, device=device))
    if out.dim() != 2:
        raise FacelabError(f"the model returns a {tuple(out.shape)} tensor, not (batch, embedding)")
    return int(out.shape[1])


# -- resolving references ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSource:
    """One kind of model reference: ``matches(ref)`` decides, ``load(ref, device, accept_licence)`` opens."""

    name: str
    matches: Callable[[str], bool]
    load: Callable[..., FaceModel]
    describe: str


#: tried in order; the first that matches a reference opens it
MODEL_SOURCES: list[ModelSource] = []


def register_source(source: ModelSource) -> ModelSource:
    if any(s.name == source.name for s in MODEL_SOURCES):
        raise ValueError(f"model source '{source.name}' registered twice")
    MODEL_SOURCES.append(source)
    return source


def spec_of_run(lr: LoadedRun) -> InputSpec:
    """The input spec a run was trained with (the eval transform of its config)."""
    d = lr.cfg.data
    return InputSpec(input_size=d.input_size, mean=tuple(d.mean), std=tuple(d.std),  # type: ignore[arg-type]
                     flip_tta=lr.cfg.eval.flip_tta, align=d.align, align_options=dict(d.align_options))


def run_thresholds(run: Path, fingerprint: str) -> Thresholds:
    """A run's thresholds: ``thresholds.json`` (if calibrated for these weights), else for 1:1 the EER threshold
    of ``facelab eval`` (metrics.json)."""
    try:
        tasks = load_thresholds(run, fingerprint)
    except FacelabError as exc:
        log.warning("ignoring thresholds: %s", exc)
        tasks = {}
    found = {task: Threshold.from_calibration(tasks[task]) if isinstance(tasks.get(task), dict) else None
             for task in (VERIFICATION, IDENTIFICATION)}
    if found[VERIFICATION] is None and (eer := eer_threshold(run)) is not None:
        found[VERIFICATION] = Threshold(VERIFICATION, max(-1.0, min(1.0, eer)),
                                        "EER threshold of facelab eval on the run's unseen identities")
    return Thresholds(found[VERIFICATION], found[IDENTIFICATION])


def _load_run_model(ref: str, device: str | None = None, **_: Any) -> FaceModel:
    lr = load_run(ref, device)
    spec = spec_of_run(lr)
    backbone, architecture = inference_form(lr.backbone, to_dict(lr.cfg.model))  # no auxiliary heads deployed
    model = FaceModel.from_module(backbone, architecture, spec, embedding_dim=lr.cfg.model.embedding_dim,
                                  source=str(ref), kind="run" if Path(ref).is_dir() else "checkpoint",
                                  device=lr.device, run=lr)
    return model.with_thresholds(run_thresholds(lr.path, model.fingerprint))


def _load_bundle_model(ref: str, device: str | None = None, **_: Any) -> FaceModel:
    state, meta = read_bundle(ref)
    try:
        backbone = build_from_architecture(meta.architecture, meta.spec.input_size, state)
        backbone.load_state_dict(state)
    except FacelabError as exc:
        raise FacelabError(f"{ref}: {exc}") from None
    except RuntimeError as exc:
        raise FacelabError(f"{ref}: weights do not fit the stored architecture: "
                           f"{str(exc).strip().splitlines()[0]}") from None
    model = FaceModel.from_module(backbone, meta.architecture, meta.spec, embedding_dim=meta.embedding_dim,
                                  thresholds=meta.thresholds, source=meta.source or str(ref), kind="bundle",
                                  device=device or "auto", info=meta.info)
    if model.fingerprint != meta.fingerprint:  # the same weights on another device hash alike; guard anyway
        raise FacelabError(f"{ref}: the rebuilt model does not match the stored fingerprint")
    return model.with_verifier(meta.verifier)


def _pretrained_module() -> Any:
    import importlib
    import importlib.util

    if importlib.util.find_spec("facelab.pretrained") is None:
        return None
    return importlib.import_module("facelab.pretrained")


def _is_pretrained(ref: str) -> bool:
    mod = _pretrained_module()
    return mod is not None and (ref.endswith(".onnx") or mod.is_pretrained(ref))


def _load_pretrained_model(ref: str, device: str | None = None, accept_licence: bool = False,
                           **_: Any) -> FaceModel:
    pm = _pretrained_module().load(ref, accept_licence=accept_licence)
    return FaceModel.from_module(pm.module, pm.architecture, pm.spec, thresholds=getattr(pm, "thresholds", None),
                                 source=ref, kind="onnx" if ref.endswith(".onnx") else "pretrained",
                                 device=device or "auto", info=dict(pm.info))


register_source(ModelSource("run", is_run, _load_run_model,
                            "a run folder (holding checkpoint.pt) or a checkpoint file (.pt)"))
register_source(ModelSource("bundle", is_bundle, _load_bundle_model, "a bundle (.safetensors)"))
register_source(ModelSource("pretrained", _is_pretrained, _load_pretrained_model,
                            "a pretrained model name (facelab pretrained list) or an ONNX file"))


def load_model(ref: str | Path | FaceModel, *, device: str | None = None, accept_licence: bool = False) -> FaceModel:
    """Resolve a model reference (see the module docstring) to a :class:`FaceModel` on ``device`` (default: the
    run's device setting, else ``auto``).

    Raises:
        FacelabError: nothing matches the reference (the message lists what would), or opening it fails (a damaged
            file, a licence not accepted, a missing extra), always naming the reference.
    """
    if isinstance(ref, FaceModel):
        return ref
    text = str(ref)
    for source in MODEL_SOURCES:
        if source.matches(text):
            model = source.load(text, device=device, accept_licence=accept_licence)
            model.ref = text
            return model
    path = Path(text)
    if path.is_dir():
        raise FacelabError(f"{text} is a folder without checkpoint.pt: not a training run")
    if path.is_file():
        raise FacelabError(f"{text} is not a facelab model (expected a checkpoint .pt, a bundle .safetensors or an "
                           f".onnx file)")
    if "/" in text or "\\" in text or path.suffix in (".pt", ".safetensors", ".onnx"):
        raise FacelabError(f"{text}: no such file or folder (expected a run folder, a checkpoint .pt, a bundle "
                           f".safetensors or an .onnx file)")
    kinds = "; ".join(s.describe for s in MODEL_SOURCES)
    names = ""
    mod = _pretrained_module()
    if mod is not None:
        names = f" (pretrained: {', '.join(mod.names())})"
    raise FacelabError(f"model '{text}' not found: give {kinds}{names}")
