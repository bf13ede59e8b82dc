"""Bundle files: round trip, what the fingerprint covers, integrity of every metadata field, validation of hostile
or careless edits (each refused with one line, nothing loaded)."""

from __future__ import annotations

import contextlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from test_serving_support import face_files, one_thread, tiny_model  # noqa: F401  (one_thread: autouse)

from facelab.errors import FacelabError
from facelab.inference.bundle import META_KEY, model_fingerprint, read_bundle
from facelab.inference.model import load_model


def _rewrite_meta(path: Path, edit, fix_integrity: bool = True) -> Path:  # type: ignore[no-untyped-def]
    """Edit a bundle's JSON header in place (as a careless or hostile user would) and keep the file valid
    safetensors. With ``fix_integrity`` the integrity digest is recomputed, so only validation can refuse it."""
    from facelab.inference.bundle import _integrity

    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    meta = json.loads(header["__metadata__"][META_KEY])
    edit(meta)
    if fix_integrity:
        with contextlib.suppress(ValueError):  # NaN cannot be digested: leave the old digest
            meta["integrity"] = _integrity(meta)
    header["__metadata__"][META_KEY] = json.dumps(meta)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    out = path.with_name("edited.safetensors")
    out.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
    return out


def test_round_trip_keeps_weights_metadata_and_embeddings(tmp_path: Path, orl_root: Path) -> None:
    from safetensors import safe_open

    model = tiny_model(threshold=0.42, identification=0.61)
    path = model.save_bundle(tmp_path / "m.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left behind
    with safe_open(str(path), framework="pt") as fh:  # a plain safetensors file: loadable without facelab
        meta = json.loads(fh.metadata()["facelab"])
    assert meta["thresholds"]["verification"]["value"] == 0.42
    assert meta["thresholds"]["identification"]["value"] == 0.61
    assert meta["spec"]["colour_order"] == "RGB" and meta["spec"]["input_size"] == 64 and meta["embedding_dim"] == 32
    loaded = load_model(path, device="cpu")
    assert loaded.kind == "bundle" and loaded.fingerprint == model.fingerprint
    assert loaded.thresholds == model.thresholds and loaded.spec == model.spec
    files = face_files(orl_root, "s3")
    assert np.array_equal(loaded.embed(files), model.embed(files))


def test_fingerprint_follows_weights_and_preprocessing_not_thresholds() -> None:
    base = tiny_model(threshold=0.3)
    assert tiny_model(threshold=0.9).fingerprint == base.fingerprint  # re-calibrating keeps galleries valid
    assert tiny_model(seed=1).fingerprint != base.fingerprint
    assert tiny_model(flip=False).fingerprint != base.fingerprint
    state = {k: v.clone() for k, v in base.backbone.state_dict().items()}
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name].view(-1)[0] += 1e-6
    assert model_fingerprint(state, base.architecture, base.spec, base.embedding_dim) != base.fingerprint


def test_edited_weights_or_foreign_files_are_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tiny_model().save_bundle(tmp_path / "m.safetensors")
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # flip bits in the last tensor's bytes
    (tmp_path / "edited.safetensors").write_bytes(bytes(data))
    with pytest.raises(FacelabError, match="do not match the stored fingerprint"):
        read_bundle(tmp_path / "edited.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(FacelabError, match="not a facelab model"):
        load_model(tmp_path / "plain.safetensors")
    with pytest.raises(FacelabError, match="not a facelab bundle"):
        read_bundle(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(FacelabError, match="cannot read bundle"):
        read_bundle(tmp_path / "junk.safetensors")
    with pytest.raises(FacelabError, match="bundle not found"):
        read_bundle(tmp_path / "missing.safetensors")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m["thresholds"]["verification"].update(value=-1.0), None),  # a real value, but not the stored one
    (lambda m: m["thresholds"]["verification"].update(value=0.9), None),
    (lambda m: m["spec"].update(mean=[0.4, 0.5, 0.5]), None),
    (lambda m: m.update(source="someone else"), None),
])
def test_any_metadata_edit_breaks_the_integrity_digest(tmp_path: Path, edit, message) -> None:  # type: ignore[no-untyped-def]
    path = tiny_model().save_bundle(tmp_path / "m.safetensors")
    edited = _rewrite_meta(path, edit, fix_integrity=False)
    with pytest.raises(FacelabError, match="integrity digest"):
        load_model(edited)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m["thresholds"]["verification"].update(value=-1.5), r"verification threshold must be .* \[-1, 1\]"),
    (lambda m: m["thresholds"]["verification"].update(value="0.5"), "verification threshold must be"),
    (lambda m: m["thresholds"]["identification"].update(value=float("nan")), "finite"),
    (lambda m: m["thresholds"]["verification"].update(target=2.0), "target FAR must be"),
    (lambda m: m["spec"].update(colour_order="GBR"), "colour_order"),
    (lambda m: m["spec"].update(std=[0.5, 0.0, 0.5]), "std must be positive"),
    (lambda m: m["spec"].update(input_size=10**6), "input_size"),
    (lambda m: m["spec"].update(mean="grey"), "mean must be 3 finite numbers"),
    (lambda m: m.update(embedding_dim=31), "fingerprint"),  # covered by the fingerprint ...
    (lambda m: m.update(embedding_dim=True), "embedding_dim must be an integer"),
    (lambda m: m.update(version=1), "version 1 is not supported"),
    (lambda m: m.update(extra="x"), "unknown bundle metadata key"),
    (lambda m: m.update(thresholds={"verification": 0.5}), "threshold must be a mapping"),
])
def test_invalid_metadata_is_refused_even_with_a_recomputed_digest(tmp_path: Path, edit, message) -> None:  # type: ignore[no-untyped-def]
    path = tiny_model(identification=0.7).save_bundle(tmp_path / "m.safetensors")
    edited = _rewrite_meta(path, edit)
    with pytest.raises(FacelabError, match=message):
        load_model(edited)


def test_declared_embedding_size_must_match_the_weights(tmp_path: Path) -> None:
    """A bundle whose fingerprint was recomputed for a lie about the embedding size is still refused: the rebuilt
    model's output decides."""
    from facelab.inference.bundle import write_bundle

    model = tiny_model()
    meta = model.bundle_meta()
    fp = model_fingerprint(model.backbone.state_dict(), model.architecture, model.spec, 31)
    meta = type(meta)(meta.architecture, meta.spec, 31, meta.thresholds, fp, meta.source, meta.info)
    write_bundle(tmp_path / "lie.safetensors", model.backbone.state_dict(), meta)
    with pytest.raises(FacelabError, match="32-d embeddings but 31 are declared"):
        load_model(tmp_path / "lie.safetensors")
