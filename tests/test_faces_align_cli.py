"""``facelab align SRC DST``: layout, manifest, summary counts, contact sheet, resume, several-faces policies and
every kind of bad file."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scenes import background, paste

from facelab.cli import main
from facelab.faces.folder import MANIFEST, SHEET, SUMMARY
from facelab.images import read_image


@pytest.fixture()
def photos(tmp_path: Path, orl_root: Path) -> Path:
    """3 ORL identities (4 images each) plus a two-face scene, a photo without a face, a face-sized image without
    a face, a corrupt JPEG (not an image by content), a truncated one (header fine, pixels missing), a note and a
    hidden file."""
    root = tmp_path / "photos"
    for ident in ("s1", "s2", "s3"):
        (root / ident).mkdir(parents=True)
        for n in range(1, 5):
            shutil.copy(orl_root / ident / f"{n}.pgm", root / ident / f"{n}.pgm")
    two = paste(read_image(orl_root / "s1" / "5.pgm"), background(), 20, 40, 2.5)
    two = paste(read_image(orl_root / "s4" / "1.pgm"), two, 420, 200, 1.5)
    two.save(root / "s1" / "group.jpg", quality=95)
    background(seed=4).save(root / "s2" / "empty_room.jpg")
    background(90, 110, seed=5).save(root / "s3" / "tiny_no_face.png")
    (root / "s3" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    whole = root / "s1" / "group.jpg"
    (root / "s2" / "truncated.jpg").write_bytes(whole.read_bytes()[: whole.stat().st_size // 3])
    (root / "s3" / "notes.txt").write_text("taken at the party")
    (root / "s2" / ".DS_Store").write_bytes(b"\0")
    return root


def records(dst: Path) -> dict[str, dict]:
    lines = [json.loads(x) for x in (dst / MANIFEST).read_text().splitlines()]
    assert "settings" in lines[0]
    return {r["image"]: r for r in lines[1:]}


def test_align_folder(photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dst = tmp_path / "aligned"
    assert main(["align", str(photos), str(dst), "--workers", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "aligned 12, several faces 1, used without detection 1, no face 1, failed 2" in out
    assert "1 file(s) ignored (not images), 2 unusable, 1 hidden entry skipped" in out
    summary = json.loads((dst / SUMMARY).read_text())
    assert summary["counts"] == {"aligned": 12, "several": 1, "undetected": 1, "no_face": 1, "failed": 2}
    assert summary["files"] == {"images": 15, "ignored": 1, "failed": 2, "hidden": 1}
    assert [u["file"] for u in summary["unusable"]] == ["s3/broken.jpg", "s2/truncated.jpg"]
    recs = records(dst)
    assert "s3/broken.jpg" not in recs  # found unusable by the scan, never sent to a worker
    assert recs["s2/truncated.jpg"]["status"] == "failed" and "truncated.jpg" in recs["s2/truncated.jpg"]["error"]
    crop = read_image(dst / "s1" / "1.png")
    assert crop.size == (112, 112)
    r = recs["s1/1.pgm"]
    assert r["status"] == "aligned" and r["faces_found"] == 1 and len(r["crops"][0]["landmarks"]) == 5
    group = recs["s1/group.jpg"]
    assert group["status"] == "several" and group["faces_found"] == 2
    assert group["crops"][0]["file"] == "s1/group.png" and group["crops"][1]["file"] is None  # found, not kept
    assert group["crops"][0]["box"][2] > group["crops"][1]["box"][2]  # default policy kept the larger face
    assert recs["s2/empty_room.jpg"]["status"] == "no_face" and not (dst / "s2" / "empty_room.png").exists()
    assert recs["s3/tiny_no_face.png"]["status"] == "undetected" and (dst / "s3" / "tiny_no_face.png").is_file()
    assert "no face: s2/empty_room.jpg" in out
    sheet = Image.open(dst / SHEET)
    assert sheet.width == 8 * 116 + 4 and sheet.height == 2 * 116 + 4  # 14 crops on an 8-column grid


def test_align_resumes_and_recomputes_changed_files(photos: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    dst = tmp_path / "aligned"
    assert main(["align", str(photos), str(dst), "--workers", "1", "--quiet", "--sheet", "0"]) == 0
    first = (dst / "s2" / "1.png").stat().st_mtime_ns
    capsys.readouterr()
    (dst / "s1" / "2.png").unlink()  # a crop lost
    (dst / "s2" / "3.png").write_bytes(b"")  # a crop left empty (a power cut after the unsynced rename)
    st = os.stat(photos / "s3" / "1.pgm")
    os.utime(photos / "s3" / "1.pgm", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a source edited
    assert main(["align", str(photos), str(dst), "--workers", "1", "--quiet", "--sheet", "0"]) == 0
    out = capsys.readouterr().out
    # the three above and the truncated file (failures are retried); everything else skipped
    assert "(4 processed" in out and "12 already done" in out
    assert (dst / "s1" / "2.png").is_file() and (dst / "s2" / "1.png").stat().st_mtime_ns == first
    assert read_image(dst / "s2" / "3.png").size == (112, 112)
    assert len(records(dst)) == 16  # compacted: one record per image
    # other settings: refused, nothing overwritten
    assert main(["align", str(photos), str(dst), "--workers", "1", "--quiet", "--size", "64"]) == 2
    err = capsys.readouterr().err
    assert "holds crops made with other settings" in err and len(err.strip().splitlines()) == 1


def test_align_all_faces_and_policies(photos: Path, tmp_path: Path) -> None:
    dst = tmp_path / "all"
    assert main(["align", str(photos), str(dst), "--several", "all", "--workers", "1", "--quiet",
                 "--sheet", "0", "--format", "jpg"]) == 0
    group = records(dst)["s1/group.jpg"]
    assert [c["file"] for c in group["crops"]] == ["s1/group.jpg", "s1/group_face2.jpg"]
    assert (dst / "s1" / "group_face2.jpg").is_file()
    dst2 = tmp_path / "centre"
    assert main(["align", str(photos), str(dst2), "--several", "centre", "--workers", "1", "--quiet",
                 "--sheet", "0"]) == 0
    kept = records(dst2)["s1/group.jpg"]["crops"][0]
    first = records(dst)["s1/group.jpg"]["crops"]
    assert kept["box"] == first[1]["box"]  # the smaller face nearer the centre


def test_align_undetected_error_and_bad_arguments(photos: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    dst = tmp_path / "strict"
    assert main(["align", str(photos), str(dst), "--undetected", "error", "--workers", "1", "--quiet",
                 "--sheet", "0"]) == 0
    assert records(dst)["s3/tiny_no_face.png"]["status"] == "no_face"
    capsys.readouterr()
    assert main(["align", str(photos), str(tmp_path / "x"), "--align-option", "score_treshold=0.5"]) == 2
    assert "did you mean 'score_threshold'" in capsys.readouterr().err
    assert main(["align", str(photos), str(photos / "inside")]) == 2
    assert "must not be inside the source folder" in capsys.readouterr().err
    assert main(["align", str(tmp_path / "missing"), str(tmp_path / "y")]) == 2
    assert "not a folder" in capsys.readouterr().err


@pytest.mark.slow
def test_align_in_two_processes_matches_one(photos: Path, tmp_path: Path) -> None:
    assert main(["align", str(photos), str(tmp_path / "one"), "--workers", "1", "--quiet", "--sheet", "0"]) == 0
    assert main(["align", str(photos), str(tmp_path / "two"), "--workers", "2", "--quiet", "--sheet", "0"]) == 0
    a, b = records(tmp_path / "one"), records(tmp_path / "two")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k]["status"] == b[k]["status"]
        for ca, cb in zip(a[k]["crops"], b[k]["crops"], strict=True):
            assert ca["file"] == cb["file"]
            np.testing.assert_allclose(ca["box"], cb["box"], atol=0.05)
