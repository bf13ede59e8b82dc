"""``facelab pretrained get``: a pretrained model as an ordinary facelab bundle."""

from __future__ import annotations

from pathlib import Path

from facelab.config import DataConfig, ModelConfig, from_dict
from facelab.errors import FacelabError
from facelab.inference.spec import InputSpec
from facelab.pretrained import PretrainedModel, load


def write_bundle(ref: str, out: str | Path, *, spec: InputSpec | None = None, threshold: float | None = None,
                 accept_licence: bool = False) -> tuple[Path, PretrainedModel]:
    """Convert ``ref`` (a registered name or an ONNX file) and write it as a bundle at ``out`` (atomically).

    The accept threshold is ``threshold``, else the registry's reference threshold for the model.

    Raises:
        FacelabError: as :func:`facelab.pretrained.load`; no threshold for a model without a reference one.
    """
    from facelab.serving.bundle import Bundle

    pm = load(ref, accept_licence=accept_licence, spec=spec)
    if threshold is None:
        threshold, source = pm.info.get("threshold"), pm.info.get("threshold_source", "")
        if threshold is None:
            raise FacelabError(f"{ref} has no reference threshold: pass --threshold (a cosine score), or calibrate "
                               f"one later with facelab calibrate")
        source = f"pretrained reference: {source}"
    else:
        source = "explicit"
    if not -1.0 <= float(threshold) <= 1.0:
        raise FacelabError(f"--threshold must be a cosine score in [-1, 1], got {threshold}")
    model_cfg = from_dict(ModelConfig, dict(pm.architecture), "architecture")
    data_cfg = DataConfig(input_size=pm.spec.input_size, mean=pm.spec.mean, std=pm.spec.std)
    bundle = Bundle.from_model(pm.module, model_cfg, data_cfg, float(threshold), source, pm.spec.flip_tta,
                               source=f"pretrained:{pm.name} sha256:{pm.info['sha256']}")
    return bundle.save(out), pm
