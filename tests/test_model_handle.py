"""The model handle: one resolver for run folders, checkpoints, bundles (and pretrained names), the same
embeddings whichever way a model is opened, thresholds with their provenance, and the inputs the API accepts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_serving_support import face_files, fake_run, one_thread, tiny_model  # noqa: F401  (one_thread: autouse)

from facelab.errors import FacelabError
from facelab.inference.model import load_model
from facelab.inference.thresholds import IDENTIFICATION, VERIFICATION, Threshold, operating_curve
from facelab.runs import save_thresholds


def test_run_checkpoint_and_bundle_resolve_to_the_same_model(tmp_path: Path, orl_root: Path) -> None:
    run = fake_run(tmp_path / "run")
    by_run = load_model(run, device="cpu")
    by_ckpt = load_model(run / "checkpoint.pt", device="cpu")
    bundle = by_run.save_bundle(tmp_path / "m.safetensors")
    by_bundle = load_model(bundle, device="cpu")
    assert (by_run.kind, by_ckpt.kind, by_bundle.kind) == ("run", "checkpoint", "bundle")
    assert by_run.fingerprint == by_ckpt.fingerprint == by_bundle.fingerprint == tiny_model().fingerprint
    files = face_files(orl_root, "s2")
    np.testing.assert_array_equal(by_run.embed(files), by_bundle.embed(files))
    assert by_run.run is not None and by_bundle.run is None


def test_unknown_references_name_what_would_work(tmp_path: Path) -> None:
    with pytest.raises(FacelabError, match=r"model 'no-such-model' not found: give a run folder"):
        load_model("no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FacelabError, match=r"without checkpoint\.pt"):
        load_model(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FacelabError, match="not a facelab model"):
        load_model(tmp_path / "notes.txt")
    (tmp_path / "broken.pt").write_bytes(b"garbage")
    with pytest.raises(FacelabError, match="cannot read checkpoint"):
        load_model(tmp_path / "broken.pt")


def test_run_thresholds_come_from_calibration_then_eval_and_never_from_other_weights(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run")
    m = load_model(run, device="cpu")
    assert m.thresholds.verification is None and m.thresholds.identification is None
    with pytest.raises(FacelabError, match="no identification threshold"):
        m.threshold(IDENTIFICATION)
    (run / "metrics.json").write_text(json.dumps({"open_set": {"verification": {"eer_threshold": 0.61}}}))
    v = load_model(run, device="cpu").thresholds.verification
    assert v is not None and v.value == 0.61 and "EER" in v.source
    entry = {"task": "identification", "score": "cosine", "threshold": 0.7, "objective": "fpir", "target": 0.05,
             "achieved": {"fpir": 0.04}, "searches": {"non_mated": 100}}
    save_thresholds(run, [entry], "0" * 64)  # calibrated for other weights: ignored
    assert load_model(run, device="cpu").thresholds.identification is None
    save_thresholds(run, [entry, {**entry, "task": "verification", "threshold": 0.55, "target": 1e-3,
                                  "achieved": {"far": 1e-3}, "pairs": {"impostor": 4500}}], m.fingerprint)
    t = load_model(run, device="cpu").thresholds
    assert t.identification is not None and t.identification.value == 0.7 and t.identification.target == 0.05
    assert "FPIR 0.05" in t.identification.source and "100 dev negatives" in t.identification.source
    assert t.verification is not None and t.verification.value == 0.55  # calibrated beats the EER fallback
    (run / "thresholds.json").write_text("{not json")
    assert load_model(run, device="cpu").thresholds.identification is None  # unreadable: ignored, not fatal


def test_operating_curve_matches_a_brute_force_count_and_retargets() -> None:
    rng = np.random.default_rng(0)
    neg = rng.normal(0.1, 0.15, 1000)
    curve = operating_curve(neg)
    for thr, rate in zip(curve["threshold"], curve["rate"], strict=True):
        assert rate == pytest.approx(np.mean(neg >= thr))
    assert curve["rate"] == sorted(curve["rate"]) and curve["threshold"] == sorted(curve["threshold"], reverse=True)
    t = Threshold(IDENTIFICATION, 0.5, "dev", 0.01, 0.01, curve)
    for target in (0.05, 0.01, 0.002):
        r = t.at(target)
        assert np.mean(neg >= r.value) <= target  # never above the asked rate on the dev data
        assert r.target == target and "FPIR" in r.source
    with pytest.raises(FacelabError, match="cannot be measured on 1000 dev negatives"):
        t.at(1e-4)
    with pytest.raises(FacelabError, match="no dev curve"):
        Threshold(VERIFICATION, 0.5, "given").at(0.01)


def test_thresholds_resolve_explicit_values_and_refuse_nonsense() -> None:
    m = tiny_model(threshold=0.4, identification=0.6)
    assert m.threshold(VERIFICATION).value == 0.4 and m.threshold(IDENTIFICATION).value == 0.6
    assert m.threshold(IDENTIFICATION, 0.3).source == "given explicitly"
    for bad in (float("nan"), 1.5, -2.0):
        with pytest.raises(FacelabError, match=r"--threshold .* must be a finite number in \[-1, 1\]"):
            m.threshold(VERIFICATION, bad)
    with pytest.raises(FacelabError, match="not both"):
        m.threshold(IDENTIFICATION, 0.3, 0.01)


def test_embed_accepts_paths_bytes_pil_and_arrays_alike(orl_root: Path) -> None:
    m = tiny_model()
    path = face_files(orl_root, "s5", 1)[0]
    pil = Image.open(path)
    grey = np.asarray(pil)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    rgba = np.concatenate([rgb, np.full_like(grey[:, :, None], 255)], axis=2)
    emb = m.embed([path, path.read_bytes(), (path.name, path.read_bytes()), pil, grey, rgb, rgba,
                   rgb.astype(np.float32) / 255.0])
    assert emb.shape == (8, 32)
    np.testing.assert_allclose(emb, np.repeat(emb[:1], 8, axis=0), atol=1e-5)
    with pytest.raises(FacelabError, match=r"expected an \(H, W\)"):
        m.embed([np.zeros((4, 4, 2), np.uint8)])
    with pytest.raises(FacelabError, match="image not found"):
        m.embed(["missing.jpg"])


def test_verify_returns_a_decision_with_its_threshold_and_source(orl_root: Path) -> None:
    m = tiny_model(threshold=0.999)
    a, b = face_files(orl_root, "s1", 2)
    same = m.verify(a, a)
    assert same.same_person and same.score == pytest.approx(1.0, abs=1e-5) and same.threshold_source == "test value"
    other = m.verify(a, b, threshold=1.0)
    assert other.threshold == 1.0 and other.threshold_source == "given explicitly"
    d = same.to_dict()
    assert set(d) == {"score", "threshold", "threshold_source", "same_person", "faces"}
    assert d["faces"][0]["method"] == "resized"
