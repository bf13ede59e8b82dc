"""Model bundles: one safetensors file holding the backbone weights plus everything needed to use them.

A checkpoint is for resuming training (optimizer state, loss head, history). A bundle is what a deployment needs and
nothing more: weights, the architecture to rebuild them, the exact preprocessing (input size, colour order, mean/std),
the embedding size, the accept threshold with where it came from, and a fingerprint. The metadata lives in the
safetensors header, so loading never unpickles anything and the file cannot drift apart from its description.

The fingerprint is a SHA-256 over the weights and the preprocessing: two bundles with equal fingerprints produce
equal embeddings. Galleries record it and refuse queries from any other model. The threshold is deliberately not part
of it (re-calibrating does not change embeddings).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from facelab.config import DataConfig, ModelConfig, TrainConfig, from_dict, to_dict
from facelab.errors import FacelabError
from facelab.images import read_image
from facelab.utils.io import atomic_open

log = logging.getLogger(__name__)

FORMAT = "facelab-bundle"
VERSION = 1
META_KEY = "facelab"
#: keys of ``thresholds.json`` read, in order: a top-level float, then the 1:1 entry written by ``facelab calibrate``
THRESHOLDS_FILE = "thresholds.json"


@dataclass(frozen=True)
class BundleMeta:
    """Everything besides the weights; ``fingerprint`` is filled in by :meth:`Bundle.from_model`."""

    architecture: dict[str, Any]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embedding_dim: int
    threshold: float
    threshold_source: str
    flip_tta: bool = True
    colour_order: str = "RGB"
    score: str = "cosine"
    fingerprint: str = ""
    source: str = ""
    format: str = FORMAT
    version: int = VERSION

    def preprocessing(self) -> dict[str, Any]:
        """The fields that change embeddings besides the weights (hashed into the fingerprint)."""
        return {"architecture": self.architecture, "input_size": self.input_size, "colour_order": self.colour_order,
                "mean": list(self.mean), "std": list(self.std), "embedding_dim": self.embedding_dim,
                "flip_tta": self.flip_tta}

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "mean": list(self.mean), "std": list(self.std)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> BundleMeta:
        try:
            raw = json.loads(text)
            if raw.get("format") != FORMAT:
                raise FacelabError(f"{where} is not a facelab bundle")
            if raw.get("version") != VERSION:
                raise FacelabError(f"{where}: bundle version {raw.get('version')} is not supported (need {VERSION})")
            return cls(**{**raw, "mean": tuple(raw["mean"]), "std": tuple(raw["std"])})
        except (json.JSONDecodeError, TypeError, KeyError, AttributeError) as exc:
            raise FacelabError(f"{where}: malformed bundle metadata ({exc})") from None


def fingerprint(state: dict[str, torch.Tensor], meta: BundleMeta) -> str:
    """SHA-256 of the preprocessing and of every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256(json.dumps(meta.preprocessing(), sort_keys=True).encode())
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _finite_threshold(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _from_thresholds_json(run: Path) -> float | None:
    """``RUN/thresholds.json``: ``{"threshold": x}``, else ``tasks.verification.threshold`` for a cosine score."""
    path = run / THRESHOLDS_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return None
    if not isinstance(doc, dict):
        return None
    top = _finite_threshold(doc.get("threshold"))
    if top is not None:
        return top
    entry = (doc.get("tasks") or {}).get("verification") if isinstance(doc.get("tasks"), dict) else None
    if isinstance(entry, dict) and entry.get("score", "cosine") == "cosine":
        return _finite_threshold(entry.get("threshold"))
    return None


def _from_metrics_json(run: Path) -> float | None:
    """``RUN/metrics.json`` from ``facelab eval``: the equal-error-rate threshold of open-set verification."""
    path = run / "metrics.json"
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        return _finite_threshold(doc["open_set"]["verification"]["eer_threshold"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return None


#: where a run's threshold is looked for, most specific first
THRESHOLD_SOURCES: list[tuple[str, Callable[[Path], float | None]]] = [
    (f"{THRESHOLDS_FILE} (calibrated)", _from_thresholds_json),
    ("metrics.json (EER threshold of facelab eval)", _from_metrics_json),
]


def resolve_threshold(run_dir: Path, explicit: float | None) -> tuple[float, str]:
    """(threshold, where it came from): ``explicit``, else the first of :data:`THRESHOLD_SOURCES` that has one."""
    if explicit is not None:
        if _finite_threshold(explicit) is None or not -1.0 <= explicit <= 1.0:
            raise FacelabError(f"--threshold must be a cosine score in [-1, 1], got {explicit}")
        return float(explicit), "explicit"
    for name, source in THRESHOLD_SOURCES:
        value = source(run_dir)
        if value is not None:
            return value, name
    raise FacelabError(f"no threshold for {run_dir}: run `facelab eval {run_dir}` (or calibrate), "
                       "or pass --threshold")


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=1)


@dataclass
class Bundle:
    """A backbone in eval mode plus its metadata; embeds images exactly as evaluation does."""

    model: nn.Module
    meta: BundleMeta
    _preprocess: Callable[[Image.Image], torch.Tensor] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from facelab.data import base_transform, eval_transform

        self.model.eval()
        resize = base_transform(self.meta.input_size)
        normalize = eval_transform(DataConfig(input_size=self.meta.input_size, mean=self.meta.mean,
                                              std=self.meta.std))
        self._preprocess = lambda im: normalize(resize(im))

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: nn.Module, model_cfg: ModelConfig, data_cfg: DataConfig, threshold: float,
                   threshold_source: str = "explicit", flip_tta: bool = True, source: str = "") -> Bundle:
        meta = BundleMeta(architecture=to_dict(model_cfg), input_size=data_cfg.input_size,
                          mean=tuple(data_cfg.mean), std=tuple(data_cfg.std),  # type: ignore[arg-type]
                          embedding_dim=model_cfg.embedding_dim, threshold=float(threshold),
                          threshold_source=threshold_source, flip_tta=flip_tta, source=source)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        meta = BundleMeta(**{**asdict(meta), "fingerprint": fingerprint(state, meta)})
        return cls(model.cpu(), meta)

    @classmethod
    def from_run(cls, run: str | Path, threshold: float | None = None, flip_tta: bool | None = None) -> Bundle:
        """Bundle a trained run (folder or checkpoint file); the threshold as in :func:`resolve_threshold`."""
        from facelab.models import build_backbone
        from facelab.runs import load_checkpoint

        run = Path(run)
        run_dir = run if run.is_dir() else run.parent
        state = load_checkpoint(run)
        cfg = from_dict(TrainConfig, state["config"])
        value, where = resolve_threshold(run_dir, threshold)
        model = build_backbone(cfg.model, cfg.data.input_size)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise FacelabError(f"{run}: weights do not fit the configured backbone: "
                               f"{str(exc).splitlines()[0]}") from None
        flip = cfg.eval.flip_tta if flip_tta is None else flip_tta
        return cls.from_model(model, cfg.model, cfg.data, value, where, flip, str(run))

    @classmethod
    def load(cls, path: str | Path) -> Bundle:
        """Read a bundle (weights-only, no pickle) and check its fingerprint against the stored one."""
        from safetensors import SafetensorError, safe_open

        from facelab.models import build_backbone

        path = Path(path)
        if not path.is_file():
            raise FacelabError(f"bundle not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as fh:
                header = (fh.metadata() or {}).get(META_KEY)
                state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118  (safe_open is not a mapping)
        except (SafetensorError, OSError, ValueError) as exc:
            raise FacelabError(f"cannot read bundle {path}: {str(exc).splitlines()[0]}") from None
        if header is None:
            raise FacelabError(f"{path} is a safetensors file but not a facelab bundle (no metadata)")
        meta = BundleMeta.from_json(header, str(path))
        if fingerprint(state, meta) != meta.fingerprint:
            raise FacelabError(f"{path}: weights or metadata do not match the stored fingerprint (corrupt or edited)")
        model = build_backbone(from_dict(ModelConfig, meta.architecture), meta.input_size)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise FacelabError(f"{path}: weights do not fit the stored architecture: "
                               f"{str(exc).splitlines()[0]}") from None
        return cls(model, meta)

    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file + rename): a killed export leaves the old bundle or the new one."""
        from safetensors.torch import save

        path = Path(path)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        data = save(state, metadata={META_KEY: self.meta.to_json()})
        with atomic_open(path, "wb") as fh:
            fh.write(data)
        return path

    # -- embedding ----------------------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return self.meta.fingerprint

    @property
    def threshold(self) -> float:
        return self.meta.threshold

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> normalised (3, S, S) float tensor, the model's input."""
        return self._preprocess(image)

    @torch.inference_mode()
    def embed_tensors(self, batch: torch.Tensor) -> np.ndarray:
        """Preprocessed (B, 3, S, S) -> unit-length float32 (B, D); flip TTA as in evaluation when enabled."""
        emb = self.model(batch)
        if self.meta.flip_tta:
            emb = (emb + self.model(torch.flip(batch, dims=[3]))) / 2
        return _unit(emb).numpy()

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
        chunks = [self.embed_tensors(torch.stack([self.preprocess(im) for im in images[i:i + batch_size]]))
                  for i in range(0, len(images), batch_size)]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.meta.embedding_dim), np.float32)

    def embed_files(self, paths: Sequence[str | Path], batch_size: int = 64, progress: bool = False,
                    strict: bool = True) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
        """(embeddings, embedded paths, [(path, reason)] skipped). ``strict`` raises on the first bad file."""
        done: list[str] = []
        failed: list[tuple[str, str]] = []
        chunks: list[np.ndarray] = []
        bar = tqdm(total=len(paths), desc="embed", unit="img", disable=not progress)
        for start in range(0, len(paths), batch_size):
            tensors = []
            for p in paths[start:start + batch_size]:
                try:
                    tensors.append(self.preprocess(read_image(p)))
                    done.append(str(p))
                except FacelabError as exc:
                    if strict:
                        raise
                    failed.append((str(p), str(exc)))
            if tensors:
                chunks.append(self.embed_tensors(torch.stack(tensors)))
            bar.update(len(paths[start:start + batch_size]))
        bar.close()
        emb = np.concatenate(chunks) if chunks else np.zeros((0, self.meta.embedding_dim), np.float32)
        return emb, done, failed

    def score(self, a: np.ndarray, b: np.ndarray) -> float:
        """Cosine similarity of two unit embeddings (accept when >= the threshold)."""
        return float(np.dot(a, b))
