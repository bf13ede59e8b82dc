"""The deployable DeepFace verifier: the formula, its storage in a bundle (validated, tamper-evident), and its use by
`facelab verifier`, `facelab verify --scorer deepface`, the API and the HTTP service."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_serving_support import one_thread, tiny_model  # noqa: F401  (one_thread: autouse)

from facelab.cli import main
from facelab.errors import FacelabError
from facelab.evaluation.deepface import DeepFaceChiSquare
from facelab.inference.bundle import META_KEY
from facelab.inference.model import load_model
from facelab.inference.verifiers import ChiSquareVerifier


def _random_verifier(dim: int, seed: int = 0) -> ChiSquareVerifier:
    rng = np.random.default_rng(seed)
    return ChiSquareVerifier(rng.normal(size=dim) - 2, rng.uniform(1, 4, dim), rng.uniform(0.5, 2, dim),
                             rng.normal(size=dim), float(rng.normal()), 0.25, "test")


def test_score_matches_the_deepface_formula_in_float64() -> None:
    v = _random_verifier(6)
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(3, 6)), rng.normal(size=(3, 6))
    for i in range(3):
        fa = np.array([min(max((a[i, j] - v.lo[j]) / v.span[j], 0.0), 1.0) for j in range(6)])
        fb = np.array([min(max((b[i, j] - v.lo[j]) / v.span[j], 0.0), 1.0) for j in range(6)])
        fa, fb = fa / np.sqrt((fa**2).sum()), fb / np.sqrt((fb**2).sum())
        expected = sum(v.w[j] * (fa[j] - fb[j]) ** 2 / (fa[j] + fb[j]) / v.scale[j] for j in range(6)) + v.b
        assert v.score(a[i:i + 1], b[i:i + 1])[0] == pytest.approx(expected, rel=1e-6)
    np.testing.assert_allclose(v.score(a, b), v.score(b, a))  # symmetric in the two faces


def test_the_pair_scorer_and_the_stored_verifier_are_one_computation() -> None:
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(10, 16))
    a = centres[np.arange(200) % 10] + 0.3 * rng.normal(size=(200, 16))
    same = rng.random(200) < 0.5
    b = np.where(same[:, None], centres[np.arange(200) % 10], centres[(np.arange(200) + 3) % 10])
    b = b + 0.3 * rng.normal(size=(200, 16))
    scorer = DeepFaceChiSquare()
    scorer.fit(a[:150], b[:150], same[:150])
    held = scorer.score(a[150:], b[150:])
    assert ((held > np.median(held)) == same[150:]).mean() > 0.8  # it learned the task
    stored = ChiSquareVerifier.from_dict(json.loads(json.dumps(scorer.fitted.to_dict())), "x", 16)
    np.testing.assert_allclose(stored.score(a[150:], b[150:]), held)


@pytest.mark.parametrize(("edit", "message"), [
    ({"w": [1.0] * 5}, "w must be 6 finite numbers"),
    ({"lo": [float("nan")] * 6}, "lo must be 6 finite numbers"),
    ({"span": [0.0] * 6}, "span must be > 0"),
    ({"b": "1"}, "b must be a finite number"),
    ({"kind": "svm"}, "verifier kind must be one of deepface"),
    ({"extra": 1}, "unknown verifier key"),
])
def test_stored_parameters_are_validated(edit: dict, message: str) -> None:
    raw = {**_random_verifier(6).to_dict(), **edit}
    with pytest.raises(FacelabError, match=message):
        ChiSquareVerifier.from_dict(raw, "m.safetensors", 6)


def _tiny_with_verifier(tmp_path: Path) -> tuple[Path, ChiSquareVerifier]:
    model = tiny_model()
    verifier = _random_verifier(model.embedding_dim)
    path = model.with_verifier(verifier).save_bundle(tmp_path / "m.safetensors")
    return path, verifier


def test_a_bundle_carries_the_verifier_and_refuses_an_edited_one(tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path, verifier = _tiny_with_verifier(tmp_path)
    loaded = load_model(path, device="cpu")
    assert loaded.verifier is not None and loaded.verifier.threshold == verifier.threshold
    np.testing.assert_array_equal(loaded.verifier.w, verifier.w)
    assert load_model(loaded.save_bundle(tmp_path / "again.safetensors"), device="cpu").verifier is not None
    with pytest.raises(FacelabError, match="carries no deepface verifier"):
        tiny_model().require_verifier("deepface")
    with pytest.raises(FacelabError, match="does not fit"):
        tiny_model().with_verifier(_random_verifier(3))
    # lower the stored threshold without re-signing: refused, not used
    with safe_open(str(path), "pt") as fh:
        meta = json.loads(fh.metadata()[META_KEY])
    meta["verifier"]["threshold"] = -100.0
    save_file(load_file(str(path)), str(tmp_path / "edited.safetensors"), metadata={META_KEY: json.dumps(meta)})
    with pytest.raises(FacelabError, match="integrity"):
        load_model(tmp_path / "edited.safetensors", device="cpu")


def test_verify_with_the_deepface_scorer(tmp_path: Path, orl_root: Path) -> None:
    path, verifier = _tiny_with_verifier(tmp_path)
    model = load_model(path, device="cpu")
    a, b = orl_root / "s1" / "1.pgm", orl_root / "s2" / "1.pgm"
    v = model.verify(a, b, scorer="deepface")
    ea, eb = model.embed([a, b])
    assert v.score == pytest.approx(float(verifier.score(ea[None], eb[None])[0]), rel=1e-5, abs=1e-6)
    assert v.threshold == verifier.threshold and v.threshold_source.startswith("deepface verifier")
    assert v.same_person == (v.score >= verifier.threshold)
    assert model.verify(a, b, scorer="deepface", threshold=v.score + 1).same_person is False
    with pytest.raises(FacelabError, match="unknown scorer"):
        model.verify(a, b, scorer="euclid")


@pytest.mark.slow
def test_verifier_command_then_verify_cli_and_http(tmp_path: Path, orl_root: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from facelab.serving.recognition import FaceGallery
    from facelab.serving.service import create_app

    rng = np.random.default_rng(0)
    rows = ["img1,img2,label"]
    for i in range(120):  # 60 genuine, 60 impostor pairs of 12 ORL identities
        s = 1 + i % 12
        if i % 2 == 0:
            x, y = rng.choice(10, 2, replace=False) + 1
            rows.append(f"s{s}/{x}.pgm,s{s}/{y}.pgm,1")
        else:
            rows.append(f"s{s}/{rng.integers(1, 11)}.pgm,s{1 + (s + 4) % 12}/{rng.integers(1, 11)}.pgm,0")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("\n".join(rows) + "\n")
    out = tmp_path / "sface_deepface.safetensors"
    assert main(["verifier", "sface", "--pairs", str(pairs), "--data", str(orl_root), "--folds", "4",
                 "--target-far", "0.05", "-o", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "deepface verifier on 120 pairs" in text and "cosine" in text
    same = ["verify", str(orl_root / "s20" / "1.pgm"), str(orl_root / "s20" / "2.pgm"), "--model", str(out),
            "--scorer", "deepface", "--json"]
    assert main(same) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["same_person"] is True and answer["threshold_source"].startswith("deepface verifier")
    other = [*same[:1], str(orl_root / "s20" / "1.pgm"), str(orl_root / "s30" / "1.pgm"), *same[3:]]
    assert main(other) == 0 and json.loads(capsys.readouterr().out)["same_person"] is False
    assert main([*same[:4], "sface", "--scorer", "deepface"]) == 2  # the pretrained model has no verifier
    assert "carries no deepface verifier" in capsys.readouterr().err
    gallery = FaceGallery(tmp_path / "g.db", load_model(out, device="cpu"))
    with TestClient(create_app(gallery, "t" * 20), base_url="http://localhost") as client:
        files = [("image_a", ("a.pgm", (orl_root / "s20" / "1.pgm").read_bytes())),
                 ("image_b", ("b.pgm", (orl_root / "s20" / "3.pgm").read_bytes()))]
        r = client.post("/verify", files=files, data={"scorer": "deepface"})
        assert r.status_code == 200 and r.json()["same_person"] is True
        assert r.json()["threshold_source"].startswith("deepface verifier")
        assert client.post("/verify", files=files, data={"scorer": "svm"}).status_code == 422
