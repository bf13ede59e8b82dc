"""The aligned-crop cache behind ``data.align``: computed once, keyed by file and settings, no-face remembered,
used by datasets and by the embedder instead of detecting again."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from scenes import background, paste

from facelab.data import FaceDataset
from facelab.errors import FacelabError
from facelab.faces import NoFaceFound, pipeline
from facelab.faces.cache import CropCache, cache_root, check_align, reader_for
from facelab.images import read_image


@pytest.fixture()
def scene_files(tmp_path: Path, orl_root: Path) -> dict[str, Path]:
    out = {}
    for i, (x, y, s) in enumerate([(30, 40, 1.5), (300, 200, 2.0)]):
        out[f"face{i}"] = tmp_path / f"face{i}.jpg"
        paste(read_image(orl_root / "s3" / f"{i + 1}.pgm"), background(), x, y, s).save(out[f"face{i}"], quality=95)
    out["empty"] = tmp_path / "empty.png"
    background(seed=9).save(out["empty"])
    out["tiny"] = tmp_path / "tiny.png"
    background(80, 96, seed=1).save(out["tiny"])
    return out


@pytest.fixture()
def no_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    """After this, detecting anything is a test failure: crops must come from the cache."""
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("detected again instead of reading the cache")

    monkeypatch.setattr(pipeline, "find_faces", boom)


def test_crops_are_computed_once_and_keyed_by_file_and_settings(scene_files: dict[str, Path],
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    cache = CropCache.create("yunet", 64, {}, root=tmp_path / "c")
    records = cache.prepare(list(scene_files.values()), workers=1, progress=False)
    assert [records[str(scene_files[k])]["status"] for k in ("face0", "face1", "empty", "tiny")] == \
        ["aligned", "aligned", "no_face", "undetected"]
    direct = pipeline.faces_in(read_image(scene_files["face0"]), "yunet", 64, pipeline.AlignOptions())[0]
    with monkeypatch.context() as m:
        m.setattr(pipeline, "find_faces", lambda *a, **k: pytest.fail("detected again"))
        crop = cache.crop(scene_files["face0"])
        assert crop.image.size == (64, 64) and crop.method == "aligned"
        np.testing.assert_array_equal(np.asarray(crop.image), np.asarray(direct.image))  # PNG: lossless
        np.testing.assert_allclose(crop.transform, direct.transform)
        with pytest.raises(NoFaceFound, match=r"empty\.png: no face found"):  # remembered, not detected again
            cache.crop(scene_files["empty"])
    # an edited file is detected again; other settings live in another folder
    st = os.stat(scene_files["face1"])
    os.utime(scene_files["face1"], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache.lookup(scene_files["face1"]) is None
    other = CropCache.create("yunet", 64, {"several": "centre"}, root=tmp_path / "c")
    assert other.folder != cache.folder and other.lookup(scene_files["face0"]) is None
    assert CropCache.create("yunet", 112, {}, root=tmp_path / "c").folder != cache.folder
    # a torn entry (record without its crop) is recomputed, not trusted
    assert cache.lookup(scene_files["tiny"]) is not None
    cache._entry(scene_files["tiny"])[0].unlink()
    assert cache.lookup(scene_files["tiny"]) is None
    assert cache.crop(scene_files["tiny"]).method == "undetected"  # recomputed


def test_dataset_reads_aligned_crops(scene_files: dict[str, Path], no_detection: None, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACELAB_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env" / "faces"
    monkeypatch.undo()  # detection allowed again to fill the cache
    monkeypatch.setenv("FACELAB_CACHE", str(tmp_path / "env"))
    CropCache.create("yunet", 64, {}).prepare([scene_files["face0"], scene_files["face1"]], workers=1,
                                              progress=False)
    monkeypatch.setattr(pipeline, "find_faces", lambda *a, **k: pytest.fail("detected again"))
    reader = reader_for("yunet", 64, {})
    ds = FaceDataset(tmp_path, [("face0.jpg", 0), ("face1.jpg", 0)], 64, reader=reader, cache=True)
    x, y = ds[0]
    assert tuple(x.shape) == (3, 64, 64) and y == 0
    assert reader_for("none", 64, {}) is None


def test_bad_align_settings_fail_early() -> None:
    with pytest.raises(FacelabError, match="unknown face detector 'yunet2'"):
        check_align("yunet2", {})
    with pytest.raises(FacelabError, match="unknown align option 'sevral'"):
        check_align("yunet", {"sevral": "largest"})
    check_align("none", {})


@pytest.mark.slow
def test_train_with_align_then_evaluate_from_the_cache(small_faces: Path, tmp_path: Path, orl_root: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capfd: pytest.CaptureFixture[str]) -> None:
    """``facelab train --align yunet`` on raw photos: the photo without a face is dropped before the split (and
    counted), the run's spec records the alignment, and evaluation embeds the crops training cached."""
    from facelab.cli import main
    from facelab.inference.model import load_model

    background(seed=2).save(small_faces / "s1" / "holiday_no_face.jpg")
    paste(read_image(orl_root / "s2" / "1.pgm"), background(seed=3), 200, 100, 2.0).save(
        small_faces / "s2" / "at_the_beach.jpg")
    out = tmp_path / "run"
    assert main(["train", "--data", str(small_faces), "--out", str(out), "--align", "yunet", "--input-size", "64",
                 "--epochs", "1", "--set", "model.width=8", "--set", "model.embedding_dim=32",
                 "--set", "data.batch_size=16", "--set", "threads=1", "--set", "data.split.open_identities=2"]) == 0
    captured = capfd.readouterr()
    log = captured.out + captured.err
    assert "faces: 81 aligned" in log and "1 no face" in log and "1 image(s) unusable" in log
    assert "holiday_no_face.jpg: no face found" in log
    split = json.loads((out / "split.json").read_text())
    used = [item[0] for key in ("train", "closed_test", "open_test") for item in split[key]]
    assert "s2/at_the_beach.jpg" in used and "s1/holiday_no_face.jpg" not in used and len(used) == 81
    model = load_model(out)
    assert model.spec.align == "yunet" and model.spec.input_size == 64
    monkeypatch.setattr(pipeline, "find_faces", lambda *a, **k: pytest.fail("detected again"))
    emb = model.embedder(cache=True).embed([small_faces / "s2" / "at_the_beach.jpg", small_faces / "s3" / "1.pgm"])
    assert emb.embeddings.shape == (2, 32) and emb.methods == ["aligned", "aligned"]
