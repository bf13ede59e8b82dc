"""Faces in real photos through the real command line and HTTP paths.

* Two faces, no face, a 6000x4000 and a 40x40 photo: any model whose input spec says ``align: yunet`` (here random
  weights in a bundle: the answers checked are boxes, counts and errors, not identities).
* A tight crop vs the same face pasted into 640x480 scenes: ``facelab verify`` gives the same decision with scores
  within 0.05, and ``facelab identify SCENE`` names the enrolled person. That needs a real recogniser: the pretrained
  SFace (``facelab.pretrained``); skipped where it is not installed.

Slow: every case runs the CLI or the service end to end, with detection, on multi-megapixel photos.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from scenes import background, paste

from facelab.cli import main
from facelab.config import ModelConfig, to_dict
from facelab.images import read_image
from facelab.inference.model import FaceModel
from facelab.inference.spec import InputSpec
from facelab.inference.thresholds import IDENTIFICATION, VERIFICATION, Threshold, Thresholds
from facelab.models import build_backbone

pytestmark = pytest.mark.slow

PEOPLE = ["s31", "s32", "s34", "s35", "s37", "s38"]
#: (x, y, scale) of a face in a 640 x 480 scene
PLACES = [(20, 20, 1.0), (480, 300, 1.3), (250, 60, 2.5), (60, 250, 1.8)]
#: OpenCV Zoo's cosine accept threshold for SFace
SFACE_THRESHOLD = "0.363"


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, orl_root: Path) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for ident in PEOPLE:
        face = read_image(orl_root / ident / "1.pgm")
        face.save(root / f"{ident}_tight.png")
        for i, (x, y, s) in enumerate(PLACES):
            paste(face, background(seed=i), x, y, s).save(root / f"{ident}_scene{i}.jpg", quality=95)
    two = paste(read_image(orl_root / "s32" / "1.pgm"), background(seed=7), 30, 60, 2.0)
    paste(read_image(orl_root / "s35" / "1.pgm"), two, 400, 150, 2.0).save(root / "two.jpg", quality=95)
    background(seed=8).save(root / "empty.jpg")
    paste(read_image(orl_root / "s34" / "1.pgm"), background(6000, 4000, seed=9), 2600, 1500, 8.0).save(
        root / "huge.jpg", quality=90)
    read_image(orl_root / "s33" / "1.pgm").resize((40, 40)).save(root / "tiny.png")
    return root


@pytest.fixture(scope="module")
def aligned_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random tiny weights whose spec detects and aligns (enough to check boxes, counts and errors)."""
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="resnet18", width=8, embedding_dim=32)
    spec = InputSpec(input_size=64, align="yunet")
    thresholds = Thresholds(Threshold(VERIFICATION, 0.5, "test value"), Threshold(IDENTIFICATION, 0.0, "test value"))
    model = FaceModel.from_module(build_backbone(cfg, 64), to_dict(cfg), spec, thresholds=thresholds,
                                  source="random", kind="module", device="cpu")
    return model.save_bundle(tmp_path_factory.mktemp("bundle") / "aligned.safetensors")


def enroll_all(model: str, db: Path, orl_root: Path) -> None:
    for ident in PEOPLE:
        files = [str(orl_root / ident / f"{n}.pgm") for n in (2, 3, 4, 5)]
        assert main(["enroll", "--model", model, "--gallery", str(db), ident, *files, "--quiet"]) == 0


def cli_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> object:
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# -- structure: boxes, counts, errors ---------------------------------------------------------------------------------
def test_two_faces_no_face_huge_and_tiny_on_the_command_line(aligned_bundle: Path, photos: Path, orl_root: Path,
                                                             tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    db = tmp_path / "g.db"
    enroll_all(str(aligned_bundle), db, orl_root)
    model = ["--model", str(aligned_bundle), "--gallery", str(db)]
    out = cli_json(capsys, ["identify", str(photos / "two.jpg"), *model])
    faces = out[0]["faces"]
    assert len(faces) == 2 and all(len(f["box"]) == 4 and f["method"] == "aligned" for f in faces)
    left, right = sorted(faces, key=lambda f: f["box"][0])
    assert left["box"][0] < 200 < 400 < right["box"][0] + right["box"][2]
    capsys.readouterr()
    assert main(["identify", str(photos / "empty.jpg"), *model]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "empty.jpg" in err and "no face found" in err
    [face] = cli_json(capsys, ["identify", str(photos / "huge.jpg"), *model])[0]["faces"]
    assert 2600 < face["box"][0] + face["box"][2] / 2 < 2600 + 92 * 8
    [tiny] = cli_json(capsys, ["identify", str(photos / "tiny.png"), *model])[0]["faces"]
    assert tiny["method"] in ("aligned", "undetected")
    both = cli_json(capsys, ["verify", str(photos / "s31_tight.png"), str(photos / "s31_scene2.jpg"),
                             "--model", str(aligned_bundle)])
    assert [f["method"] for f in both["faces"]] == ["aligned", "aligned"]
    capsys.readouterr()
    assert main(["verify", str(photos / "s31_tight.png"), str(photos / "empty.jpg"), "--model",
                 str(aligned_bundle)]) == 2
    assert "no face found" in capsys.readouterr().err


def test_http_two_faces_and_no_face(aligned_bundle: Path, photos: Path, orl_root: Path, tmp_path: Path) -> None:
    pytest.importorskip("httpx", reason="the serve extra is not installed")
    from fastapi.testclient import TestClient

    from facelab.serving.recognition import FaceGallery
    from facelab.serving.service import create_app

    db = tmp_path / "g.db"
    enroll_all(str(aligned_bundle), db, orl_root)
    with FaceGallery(db, str(aligned_bundle), create=False) as g:
        client = TestClient(create_app(g), base_url="http://localhost")

        def post(path: str, name: str, **data: str) -> object:
            return client.post(path, files={"image" if path == "/identify" else "image_a":
                                            (name, (photos / name).read_bytes(), "image/jpeg")}, data=data)

        r = post("/identify", "two.jpg")
        assert r.status_code == 200, r.text
        faces = r.json()["faces"]
        assert len(faces) == 2 and all(len(f["box"]) == 4 and f["box"][2] > 50 for f in faces)
        r = post("/identify", "empty.jpg")
        assert r.status_code == 422 and "no face found" in r.json()["detail"]
        r = post("/verify", "s34_scene2.jpg", identity="s34")
        assert r.status_code == 200 and r.json()["faces"][0]["method"] == "aligned"
        r = post("/identify", "huge.jpg")
        assert r.status_code == 200 and len(r.json()["faces"]) == 1


# -- scores and identities: a real recogniser -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sface() -> str:
    if importlib.util.find_spec("facelab.pretrained") is None:
        pytest.skip("needs the pretrained SFace model (facelab.pretrained)")
    return "sface"


def test_verify_tight_crop_and_scenes_agree(sface: str, photos: Path, orl_root: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    for ident in ("s31", "s34", "s37"):
        ref = str(orl_root / ident / "2.pgm")
        argv = ["--model", sface, "--threshold", SFACE_THRESHOLD]
        tight = cli_json(capsys, ["verify", ref, str(photos / f"{ident}_tight.png"), *argv])
        for i, (x, y, s) in enumerate(PLACES):
            scene = cli_json(capsys, ["verify", ref, str(photos / f"{ident}_scene{i}.jpg"), *argv])
            assert scene["same_person"] == tight["same_person"]
            assert abs(scene["score"] - tight["score"]) <= 0.05, (ident, i, scene["score"], tight["score"])
            bx, by, bw, bh = scene["faces"][1]["box"]
            assert x <= bx + bw / 2 <= x + 92 * s and y <= by + bh / 2 <= y + 112 * s


def test_identify_scenes_names_the_enrolled_person(sface: str, photos: Path, orl_root: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "people.db"
    enroll_all(sface, db, orl_root)
    scenes = [str(photos / f"{ident}_scene{i}.jpg") for ident in PEOPLE for i in range(len(PLACES))]
    out = cli_json(capsys, ["identify", *scenes, "--model", sface, "--gallery", str(db), "--threshold",
                            SFACE_THRESHOLD])
    named = [r["faces"][0]["identity"] for r in out]
    assert named == [ident for ident in PEOPLE for _ in PLACES]
