"""Any model reference behaves the same in every command: a run, its checkpoint file and its bundle give the same
numbers in pairs, identify-eval, calibrate, embed, verify, enroll, identify, export and bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_serving_support import one_thread  # noqa: F401  (one_thread: autouse)

from facelab.cli import main
from facelab.config import load_config, to_dict
from facelab.data import make_split, scan_folder
from facelab.errors import FacelabError
from facelab.evaluation.pairs import write_pairs_csv
from facelab.evaluation.protocol import evaluate
from facelab.inference.model import load_model
from facelab.runs import build_model_and_loss, save_checkpoint


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory, orl_root: Path) -> dict[str, str]:
    """A tiny untrained ORL run (calibrated on its own split), its checkpoint file and its bundle."""
    import torch

    out = tmp_path_factory.mktemp("refs")
    cfg = load_config(None, ["data.input_size=32", "model.width=8", "model.embedding_dim=16", "device=cpu",
                             f"data.root={orl_root}", "data.split.open_identities=10"])
    manifest = make_split(scan_folder(orl_root, verify=False), cfg.data.split)
    torch.manual_seed(0)
    backbone, loss = build_model_and_loss(cfg, manifest.num_classes)
    save_checkpoint(out / "run" / "checkpoint.pt", {
        "epoch": 1, "config": to_dict(cfg), "manifest": manifest.to_dict(), "model": backbone.state_dict(),
        "loss": loss.state_dict(), "optimizer": {}, "scheduler": {}, "history": []})
    assert main(["calibrate", str(out / "run"), "--quiet", "--open-target", "0.05"]) == 0
    assert main(["bundle", str(out / "run"), "-o", str(out / "m.safetensors")]) == 0
    return {"run": str(out / "run"), "checkpoint": str(out / "run" / "checkpoint.pt"),
            "bundle": str(out / "m.safetensors")}


def _cli(capsys: pytest.CaptureFixture[str], *argv: object) -> str:
    assert main([str(a) for a in argv]) == 0
    return capsys.readouterr().out


@pytest.mark.slow
def test_every_model_taking_command_gives_the_same_answer_for_each_reference(
        refs: dict[str, str], orl_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = orl_root / "s1" / "1.pgm", orl_root / "s2" / "1.pgm"
    write_pairs_csv(tmp_path / "p.csv", [(f"s{i}/1.pgm", f"s{i}/2.pgm", True) for i in range(31, 41)]
                    + [(f"s{i}/1.pgm", f"s{i + 1}/2.pgm", False) for i in range(30, 40)])
    for ident in ("s31", "s32"):
        shutil.copytree(orl_root / ident, tmp_path / "gallery" / ident)
        shutil.copytree(orl_root / ident, tmp_path / "probes" / ident)
    shutil.copytree(orl_root / "s33", tmp_path / "probes" / "s33")
    answers: dict[str, list[object]] = {}
    for kind, ref in refs.items():
        got: list[object] = []
        got.append(json.loads(_cli(capsys, "verify", a, b, "--model", ref, "--json"))["score"])
        _cli(capsys, "pairs", ref, "--pairs", tmp_path / "p.csv", "--data", orl_root, "--folds", "5", "--scores",
             "cosine", "--out", tmp_path / f"pairs-{kind}", "--quiet", "--no-cache")
        got.append(json.loads((tmp_path / f"pairs-{kind}" / "pairs.json").read_text())["scorers"]["cosine"]
                   ["verification"]["roc_auc"])
        _cli(capsys, "identify-eval", ref, "--gallery", tmp_path / "gallery", "--probes", tmp_path / "probes",
             "--out", tmp_path / f"id-{kind}", "--quiet", "--no-cache")
        ident = json.loads((tmp_path / f"id-{kind}" / "identify.json").read_text())["identification"]
        got += [ident["rank1"], ident["at_threshold"]["threshold"]]
        _cli(capsys, "embed", orl_root / "s5", "--model", ref, "-o", tmp_path / f"e-{kind}.npz", "--quiet")
        with np.load(tmp_path / f"e-{kind}.npz") as z:
            got.append(z["embeddings"].round(5).tolist())
        db = tmp_path / f"g-{kind}.db"
        _cli(capsys, "enroll", "--model", ref, "--gallery", db, "s1", orl_root / "s1" / "2.pgm")
        got.append(json.loads(_cli(capsys, "identify", a, "--model", ref, "--gallery", db, "--json")))
        _cli(capsys, "bundle", ref, "-o", tmp_path / f"re-{kind}.safetensors")
        got.append(load_model(tmp_path / f"re-{kind}.safetensors").fingerprint)
        answers[kind] = got
    assert answers["run"] == answers["checkpoint"] == answers["bundle"]


def test_eval_needs_a_run_and_names_an_unreadable_held_out_image(refs: dict[str, str], tmp_path: Path,
                                                                 orl_root: Path) -> None:
    with pytest.raises(FacelabError, match="facelab eval scores a training run"):
        evaluate(refs["bundle"], quiet=True)
    data = tmp_path / "faces"
    shutil.copytree(orl_root, data)
    run = load_model(refs["run"])
    held_out = run.run.manifest.open_test[0][0]  # type: ignore[union-attr]
    (data / held_out).write_bytes(b"P5 garbage")
    with pytest.raises(FacelabError, match=rf"{held_out} is not a readable image"):
        evaluate(refs["run"], str(data), out_dir=tmp_path / "r", quiet=True)
