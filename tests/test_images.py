"""The image gate: every orientation a phone writes, formats judged by content (HEIC, AVIF, a JPEG named .HEIC),
one colour model out, size checked before decoding, and the same file accounting for every folder command."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_serving_support import one_thread, tiny_model  # noqa: F401  (one_thread: autouse)

from facelab.data import scan_folder
from facelab.errors import FacelabError
from facelab.images import (
    ImageTooLarge,
    UnreadableImage,
    UnsupportedImage,
    list_images,
    open_image,
    read_image,
    sniff_format,
)

FIXTURES = Path(__file__).parent / "data"
#: EXIF Orientation value -> the transpose that turns the upright image into what the camera stored
#: (the inverse of what a viewer applies)
STORED = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
          5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
          8: Image.Transpose.ROTATE_270}


def oriented_copy(upright: Image.Image, orientation: int, path: Path, fmt: str = "JPEG") -> Path:
    """Save ``upright`` the way a phone does: pixels stored sideways/mirrored, the EXIF tag saying how to show them."""
    stored = upright.transpose(STORED[orientation]) if orientation in STORED else upright.copy()
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, format=fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))
    return path


@pytest.fixture()
def face(orl_root: Path) -> Image.Image:
    return Image.open(orl_root / "s1" / "1.pgm").convert("RGB").resize((92 * 2, 112 * 2))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied_before_anything_else(face: Image.Image, orientation: int,
                                                               tmp_path: Path) -> None:
    png = oriented_copy(face, orientation, tmp_path / "f.png", "PNG")
    img, meta = open_image(png)
    assert meta.orientation == orientation and meta.rotated == (orientation != 1)
    np.testing.assert_array_equal(np.asarray(img), np.asarray(face))  # lossless: exactly the upright pixels
    jpg = oriented_copy(face, orientation, tmp_path / "f.jpg")
    img = read_image(jpg)
    assert img.size == face.size
    assert np.abs(np.asarray(img, float) - np.asarray(face, float)).mean() < 3  # JPEG noise only


def test_rotated_copies_embed_like_the_upright_photo(face: Image.Image, tmp_path: Path) -> None:
    model = tiny_model()
    up = tmp_path / "up.jpg"
    face.save(up, quality=95)
    copies = [oriented_copy(face, o, tmp_path / f"o{o}.jpg") for o in range(2, 9)]
    emb = model.embed([up, *copies])
    scores = emb[1:] @ emb[0]
    assert np.all(scores > 1 - 0.01), scores


def test_formats_are_judged_by_content(face: Image.Image, tmp_path: Path) -> None:
    face.save(tmp_path / "a.avif")
    face.save(tmp_path / "w.webp")
    face.save(tmp_path / "jpeg_named.HEIC", format="JPEG")  # a JPEG with a phone's extension
    shutil.copy(FIXTURES / "orl_s1_1.heic", tmp_path / "real.heic")
    shutil.copy(FIXTURES / "orl_s1_1.heic", tmp_path / "heic_named.jpg")  # and the other way round
    assert sniff_format(tmp_path / "a.avif") == "AVIF" and sniff_format(tmp_path / "jpeg_named.HEIC") == "JPEG"
    for name in ("a.avif", "w.webp", "jpeg_named.HEIC", "real.heic", "heic_named.jpg"):
        assert read_image(tmp_path / name).mode == "RGB", name
    heic = np.asarray(read_image(tmp_path / "real.heic"), float)
    assert heic.shape == (112, 92, 3)
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(UnsupportedImage, match=r"notes\.jpg is not a supported image"):
        read_image(tmp_path / "notes.jpg")
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
    with pytest.raises(UnsupportedImage):
        read_image(eps, "x.eps")


def test_truncated_and_oversized_images_are_one_line_errors(face: Image.Image, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.BytesIO()
    face.save(buf, "JPEG")
    with pytest.raises(UnreadableImage, match=r"half\.jpg"):
        read_image(buf.getvalue()[: len(buf.getvalue()) // 2], "half.jpg")
    monkeypatch.setenv("FACELAB_MAX_PIXELS", "10000")
    with pytest.raises(ImageTooLarge, match=r"184x224 pixels; the limit is 10,000"):
        read_image(buf.getvalue(), "big.jpg")
    monkeypatch.setenv("FACELAB_MAX_PIXELS", "lots")
    with pytest.raises(FacelabError, match="FACELAB_MAX_PIXELS must be a positive integer"):
        read_image(buf.getvalue())


def test_modes_become_rgb(tmp_path: Path) -> None:
    grey16 = Image.fromarray(np.full((8, 8), 40000, np.uint16))
    grey16.save(tmp_path / "g16.png")
    assert np.asarray(read_image(tmp_path / "g16.png"))[0, 0].tolist() == [156, 156, 156]  # 40000 >> 8
    la = Image.new("LA", (4, 4), (200, 0))  # fully transparent: composited on black
    la.save(tmp_path / "la.png")
    assert np.asarray(read_image(tmp_path / "la.png")).max() == 0
    Image.new("CMYK", (4, 4), (0, 0, 0, 0)).save(tmp_path / "c.jpg")
    assert read_image(tmp_path / "c.jpg").mode == "RGB"


def mixed_folder(root: Path, face: Image.Image) -> Path:
    """Two identities of files as people have them: JPEG, PNG, HEIC, AVIF, a JPEG named .HEIC, a truncated JPEG,
    a text file, macOS companions and a hidden folder."""
    for ident in ("alice", "bob"):
        d = root / ident
        d.mkdir(parents=True)
        face.save(d / "a.jpg")
        face.save(d / "b.png")
        face.save(d / "c.avif")
        face.save(d / "d.HEIC", format="JPEG")
        shutil.copy(FIXTURES / "orl_s1_1.heic", d / "e.heic")
    buf = io.BytesIO()
    face.save(buf, "JPEG")
    (root / "alice" / "broken.jpg").write_bytes(buf.getvalue()[:300])
    (root / "alice" / "notes.txt").write_text("who is who")
    (root / "bob" / "._a.jpg").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble companion
    (root / ".DS_Store").write_bytes(b"\x00")
    (root / "bob" / ".thumbnails").mkdir()
    return root


def test_every_file_of_a_mixed_folder_is_accounted_for(face: Image.Image, tmp_path: Path) -> None:
    root = mixed_folder(tmp_path / "faces", face)
    tally = list_images(root)
    assert sorted(tally.images) == sorted(f"{i}/{n}" for i in ("alice", "bob") for n in
                                          ("a.jpg", "b.png", "c.avif", "d.HEIC", "e.heic"))
    assert tally.ignored == ["alice/notes.txt"]
    assert [p for p, _ in tally.failed] == ["alice/broken.jpg"]
    assert sorted(tally.hidden) == [".DS_Store", "bob/._a.jpg", "bob/.thumbnails/"]
    assert tally.summary() == ("10 image(s) used; 1 file(s) ignored, not images (alice/notes.txt); 1 image(s) "
                               f"unusable ({tally.failed[0][1]}); 3 hidden entries skipped")
    folder = scan_folder(root)  # what train and eval use
    assert folder.tally().counts() == tally.counts()
    assert {k: len(v) for k, v in folder.identities.items()} == {"alice": 5, "bob": 5}


@pytest.mark.slow
def test_folder_commands_use_the_same_images_and_print_the_same_counts(face: Image.Image, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """embed, enroll --folder and train on the same mixed folder: the same images used, the same line of counts."""
    from facelab.cli import main

    root = mixed_folder(tmp_path / "faces", face)
    expected = list_images(root).summary()
    bundle = tiny_model().save_bundle(tmp_path / "m.safetensors")
    assert main(["embed", str(root), "--model", str(bundle), "-o", str(tmp_path / "e.npz"), "--quiet"]) == 0
    embed_err = capsys.readouterr().err
    assert main(["enroll", "--model", str(bundle), "--gallery", str(tmp_path / "g.db"), "--folder", str(root),
                 "--quiet"]) == 0
    enroll_out, enroll_err = capsys.readouterr()
    assert main(["train", "--data", str(root), "--out", str(tmp_path / "run"), "--epochs", "1", "--input-size", "32",
                 "--batch-size", "4", "--set", "model.width=8", "--set", "data.split.open_identities=0",
                 "--set", "data.split.closed_images_per_identity=1", "--loss", "softmax"]) == 0
    train_err = capsys.readouterr().err
    assert expected in embed_err and expected in enroll_err and f"data: {expected}" in train_err
    with np.load(tmp_path / "e.npz") as z:
        assert sorted(z["paths"].tolist()) == sorted(list_images(root).images)
    # d.HEIC holds the same JPEG bytes as a.jpg: used, but stored once (the gallery's duplicate check)
    for name in ("alice", "bob"):
        assert (f"enrolled {name}: 4 image(s) (5 resized); 4 in all; 1 duplicate(s) skipped ({name}/d.HEIC is "
                f"already enrolled as {name}/a.jpg)") in enroll_out
