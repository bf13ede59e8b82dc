"""Model bundles: safetensors round trip, fingerprint, tamper detection, threshold sources, safe image decoding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_serving_support import TINY_DATA, face_files, fake_run, one_thread, png_bytes, tiny_bundle  # noqa: F401  (one_thread: autouse)

from facelab.errors import FacelabError
from facelab.images import ImageTooLarge, UnsupportedImage
from facelab.images import read_image as decode_image
from facelab.serving.bundle import Bundle, fingerprint


def test_round_trip_keeps_weights_metadata_and_embeddings(tmp_path: Path, orl_root: Path) -> None:
    from safetensors import safe_open

    bundle = tiny_bundle(threshold=0.42)
    path = bundle.save(tmp_path / "m.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left behind
    with safe_open(str(path), framework="pt") as fh:  # a plain safetensors file: loadable without facelab
        meta = json.loads(fh.metadata()["facelab"])
    assert meta["threshold"] == 0.42 and meta["colour_order"] == "RGB" and meta["embedding_dim"] == 32
    assert meta["mean"] == list(TINY_DATA.mean) and meta["input_size"] == 64
    loaded = Bundle.load(path)
    assert loaded.meta == bundle.meta
    files = face_files(orl_root, "s3")
    assert np.array_equal(loaded.embed_files(files)[0], bundle.embed_files(files)[0])


def test_fingerprint_follows_weights_and_preprocessing_not_threshold() -> None:
    base = tiny_bundle(threshold=0.3)
    assert tiny_bundle(threshold=0.9).fingerprint == base.fingerprint
    assert tiny_bundle(seed=1).fingerprint != base.fingerprint
    state = {k: v.clone() for k, v in base.model.state_dict().items()}
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name].view(-1)[0] += 1e-6
    assert fingerprint(state, base.meta) != base.fingerprint
    other_mean = type(base.meta)(**{**base.meta.__dict__, "mean": (0.4, 0.5, 0.5)})
    assert fingerprint(base.model.state_dict(), other_mean) != base.fingerprint


def test_edited_or_foreign_files_are_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tiny_bundle().save(tmp_path / "m.safetensors")
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # flip bits in the last tensor's bytes
    (tmp_path / "edited.safetensors").write_bytes(bytes(data))
    with pytest.raises(FacelabError, match="do not match the stored fingerprint"):
        Bundle.load(tmp_path / "edited.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(FacelabError, match="not a facelab bundle"):
        Bundle.load(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(FacelabError, match="cannot read bundle"):
        Bundle.load(tmp_path / "junk.safetensors")
    with pytest.raises(FacelabError, match="bundle not found"):
        Bundle.load(tmp_path / "missing.safetensors")


def test_threshold_sources_in_order(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run")
    with pytest.raises(FacelabError, match=r"no threshold .* pass --threshold"):
        Bundle.from_run(run)
    (run / "metrics.json").write_text(json.dumps({"open_set": {"verification": {"eer_threshold": 0.61}}}))
    assert (Bundle.from_run(run).meta.threshold, Bundle.from_run(run).meta.threshold_source[:12]) == (0.61,
                                                                                                      "metrics.json")
    (run / "thresholds.json").write_text("{not json")  # unreadable calibration: ignored, not fatal
    assert Bundle.from_run(run).meta.threshold == 0.61
    (run / "thresholds.json").write_text(json.dumps({"tasks": {"verification": {"score": "cosine",
                                                                                "threshold": 0.7}}}))
    assert Bundle.from_run(run).meta.threshold == 0.7
    (run / "thresholds.json").write_text(json.dumps({"tasks": {"verification": {"score": "squared_l2",
                                                                                "threshold": 1.2}}}))
    assert Bundle.from_run(run).meta.threshold == 0.61  # another score's unit: not usable for cosine
    (run / "thresholds.json").write_text(json.dumps({"threshold": 0.72}))
    bundle = Bundle.from_run(run)
    assert (bundle.meta.threshold, bundle.meta.threshold_source) == (0.72, "thresholds.json (calibrated)")
    assert Bundle.from_run(run, threshold=0.33).meta.threshold == 0.33
    assert bundle.fingerprint == tiny_bundle().fingerprint  # the checkpoint's weights, unchanged
    with pytest.raises(FacelabError, match=r"in \[-1, 1\]"):
        Bundle.from_run(run, threshold=3.0)


def test_image_decoding_refuses_what_is_not_a_plain_raster(tmp_path: Path, orl_root: Path) -> None:
    assert decode_image(orl_root / "s1" / "1.pgm").mode == "RGB"
    assert decode_image(png_bytes()).size == (48, 48)
    with pytest.raises(UnsupportedImage, match="not a supported image"):
        decode_image(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "x.eps")
    with pytest.raises(FacelabError, match=r"x\.png"):
        decode_image(png_bytes()[:60], "x.png")  # truncated
    with pytest.raises(ImageTooLarge, match="limit"):
        decode_image(png_bytes((300, 200)), "big.png", cap=10_000)
    with pytest.raises(FacelabError, match="not found"):
        decode_image(tmp_path / "missing.jpg")
