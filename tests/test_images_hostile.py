"""The image gate against hostile and careless inputs (issue 15): polyglots, EPS, decompression bombs, huge PNGs,
concurrency -- through the gate itself, folder scans, the CLI and pair-list evaluation."""

from __future__ import annotations

import pickle
import shutil
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hostile import (
    EPS,
    POLYGLOT_IM_SIZE,
    POLYGLOT_TIFF_SIZE,
    blank_png,
    png_header_only,
    polyglot_pixels,
    polyglot_tiff_im,
)
from PIL import EpsImagePlugin, Image
from test_serving_support import face_files, one_thread, tiny_model  # noqa: F401  (one_thread: autouse)

from facelab.cli import main
from facelab.data import scan_folder
from facelab.errors import FacelabError
from facelab.evaluation.pairs import read_pairs
from facelab.images import (
    ImageTooLarge,
    UnsupportedImage,
    header_check,
    list_images,
    open_image,
    read_image,
)


@pytest.mark.filterwarnings("ignore:IM image format is deprecated:DeprecationWarning")
def test_polyglot_is_decoded_as_the_format_that_passed_the_check() -> None:
    data = polyglot_tiff_im()
    # the attack: the same bytes are also an 8000x8000 IM image, which Pillow picks when IM's reader comes first
    # in its registry (plugin order depends on what was imported before, so the IM reading is asked for here)
    with Image.open(__import__("io").BytesIO(data), formats=["IM"]) as as_im:
        assert (as_im.format, as_im.size) == ("IM", (POLYGLOT_IM_SIZE, POLYGLOT_IM_SIZE))
    img, meta = open_image(data, "poly.tif")
    assert (meta.format, img.size) == ("TIFF", (POLYGLOT_TIFF_SIZE, POLYGLOT_TIFF_SIZE))
    assert np.array_equal(np.asarray(img)[:, :, 0], polyglot_pixels())  # the TIFF's pixels, nothing else


def test_eps_never_reaches_ghostscript(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def forbidden(*_: object, **__: object) -> None:
        raise AssertionError("Ghostscript was invoked")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", forbidden)
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    with pytest.raises(UnsupportedImage, match=r"x\.jpg is not a supported image"):
        read_image(("x.jpg", EPS))
    (tmp_path / "face.jpg").write_bytes(EPS)
    with pytest.raises(UnsupportedImage, match=r"face\.jpg"):
        read_image(tmp_path / "face.jpg")


def test_bomb_and_oversized_images_are_too_large_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ImageTooLarge, match=r"bomb\.png declares more pixels than the limit"):
        read_image(("bomb.png", png_header_only(20_000, 20_000)))  # over Pillow's own refusal level
    with pytest.raises(ImageTooLarge, match=r"10000x10000 pixels; the limit is 40,000,000"):
        read_image(("big.png", png_header_only(10_000, 10_000)))  # Pillow only warns here: our cap refuses
    with pytest.raises(ImageTooLarge, match=r"200x200 pixels; the limit is 10,000"):
        read_image(blank_png(200, 200), cap=10_000)
    monkeypatch.setenv("FACELAB_MAX_PIXELS", "1000")
    with pytest.raises(ImageTooLarge, match="FACELAB_MAX_PIXELS"):
        read_image(blank_png(40, 40))
    monkeypatch.setenv("FACELAB_MAX_PIXELS", "lots")
    with pytest.raises(FacelabError, match="positive integer"):
        read_image(blank_png(4, 4))


def test_a_cap_above_pillows_warning_level_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that; the configured cap is the one in force."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no stray DecompressionBombWarning either
        assert read_image(blank_png(50, 50), cap=5000).size == (50, 50)  # 2500 px: Pillow's warning zone
    with pytest.raises(ImageTooLarge, match="limit of 4,000"):
        read_image(blank_png(100, 100), cap=50_000)  # Pillow refuses outright; the message says its limit


def test_header_hook_runs_before_decoding_and_can_refuse() -> None:
    seen: list[tuple[int, int, str]] = []

    def refuse(w: int, h: int, mode: str) -> None:
        seen.append((w, h, mode))
        raise ImageTooLarge("budget says no")

    with pytest.raises(ImageTooLarge, match="budget says no"):
        read_image(blank_png(30, 20, "RGBA"), on_header=refuse)
    assert seen == [(30, 20, "RGBA")]


def test_concurrent_decodes_leave_the_warning_filters_alone() -> None:
    before = list(warnings.filters)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                read_image(blank_png(16, 16))
                with pytest.raises(ImageTooLarge):
                    read_image(png_header_only(10_000, 10_000))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and warnings.filters == before


def test_folder_scan_counts_bombs_as_unusable_never_as_non_images(tmp_path: Path, orl_root: Path) -> None:
    root = tmp_path / "faces"
    shutil.copytree(orl_root / "s1", root / "alice")
    (root / "alice" / "bomb.png").write_bytes(png_header_only(20_000, 20_000))
    (root / "alice" / "bomb_no_suffix").write_bytes(png_header_only(10_000, 10_000))
    (root / "alice" / "poly.tif").write_bytes(polyglot_tiff_im())
    (root / "alice" / "script.eps").write_bytes(EPS)
    tally = list_images(root)
    failed = dict(tally.failed)
    assert set(failed) == {"alice/bomb.png", "alice/bomb_no_suffix"}
    assert all("limit" in reason for reason in failed.values())
    assert "alice/poly.tif" in tally.images and "alice/script.eps" in tally.ignored
    folder = scan_folder(root)  # what `facelab train` uses: skipped, counted, named in the summary
    assert len(folder.identities["alice"]) == 11 and len(folder.report.bad_images) == 2
    assert "2 image(s) unusable" in folder.report.summary(folder.num_images)
    with pytest.raises(ImageTooLarge):
        header_check(root / "alice" / "bomb_no_suffix")


def _cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_bomb_is_one_line_and_embed_skips_and_counts(tmp_path: Path, orl_root: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    bundle = tiny_model().save_bundle(tmp_path / "m.safetensors")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(20_000, 20_000))
    face = face_files(orl_root, "s1", 1)[0]
    code, out, err = _cli(capsys, "verify", bomb, face, "--bundle", bundle)
    assert code == 2 and out == "" and err.count("\n") == 1 and "bomb.png declares more pixels" in err
    tree = tmp_path / "tree"
    shutil.copytree(orl_root / "s2", tree / "bob")
    shutil.copy(bomb, tree / "bob" / "zz.png")
    code, out, err = _cli(capsys, "embed", tree, "--bundle", bundle, "--out", tmp_path / "e.npz", "--quiet")
    assert code == 0 and "embedded 10 images" in out and "1 image(s) unusable" in err
    assert "bob/zz.png" in err and "Traceback" not in err
    with np.load(tmp_path / "e.npz", allow_pickle=False) as z:
        assert len(z["paths"]) == 10 and "bob/zz.png" not in z["paths"].tolist()


def _bin_file(path: Path, images: list[bytes]) -> Path:
    with open(path, "wb") as fh:
        pickle.dump((images, [True] * (len(images) // 2)), fh, protocol=4)
    return path


@pytest.mark.parametrize(("payload", "error", "message"), [
    (EPS, UnsupportedImage, "not a supported image"),
    (png_header_only(20_000, 20_000), ImageTooLarge, "declares more pixels"),
])
def test_bin_pair_file_images_go_through_the_gate(tmp_path: Path, orl_root: Path, payload: bytes,
                                                  error: type[Exception], message: str) -> None:
    face = face_files(orl_root, "s1", 1)[0].read_bytes()
    pairs = read_pairs(_bin_file(tmp_path / "lfw.bin", [face, face, face, payload]), folds=2)
    embedder = tiny_model().embedder()
    with pytest.raises(error, match=rf"lfw.bin#3.*{message}|{message}.*lfw.bin#3"):
        embedder.embed_all(pairs.images)
    # the polyglot inside a .bin is its TIFF self
    pairs = read_pairs(_bin_file(tmp_path / "poly.bin", [face, polyglot_tiff_im()]), folds=1)
    assert embedder.embed_all(pairs.images).shape == (2, 32)
    assert torch.get_num_threads() == 1
