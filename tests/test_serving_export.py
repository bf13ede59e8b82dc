"""ONNX and TorchScript exports compute the bundle's embeddings (flip TTA + L2 norm included), any batch size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_serving_support import face_files, one_thread, tiny_model  # noqa: F401  (one_thread: autouse)

from facelab.errors import FacelabError
from facelab.inference.model import unit
from facelab.serving.export import EXPORTERS, export, parity_batch, read_export_metadata


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_torch_and_carries_metadata(fmt: str, tmp_path: Path, orl_root: Path) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
        pytest.importorskip("onnxscript", reason="the onnx extra is not installed")
    model = tiny_model()
    result = export(model, fmt, tmp_path, images=face_files(orl_root, "s7", 2))
    assert result.path == tmp_path / f"model{EXPORTERS.build(fmt).suffix}" and result.batch == 6
    assert result.max_abs_diff <= 1e-4
    assert read_export_metadata(result.path)["model_fingerprint"] == model.fingerprint
    batch = parity_batch(model, face_files(orl_root, "s8", 3), random=0)  # 3 != the traced batch of 2
    run = EXPORTERS.build(fmt).load(result.path)
    assert np.abs(run(batch.numpy()) - unit(model.embedder().forward(batch))).max() <= 1e-4


def test_a_failed_parity_check_removes_the_export(tmp_path: Path) -> None:
    with pytest.raises(FacelabError, match="disagrees with torch"):
        export(tiny_model(flip=False), "torchscript", tmp_path / "m.pt", tolerance=-1.0)
    assert not (tmp_path / "m.pt").exists()
    with pytest.raises(FacelabError, match="unknown export format 'tflite'"):
        export(tiny_model(), "tflite", tmp_path)
