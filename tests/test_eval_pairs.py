"""Pair-list readers: LFW pairs.txt, CSV, and insightface .bin through the data-only unpickler."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facelab.errors import FacelabError
from facelab.evaluation.pairs import contiguous_folds, load_bin, read_pairs, write_pairs_csv


def test_lfw_pairs_txt_by_hand(tmp_path: Path) -> None:
    (tmp_path / "pairs.txt").write_text("2\t1\nAnn\t1\t2\nBob\t1\tCid\t3\nBob\t1\t4\nAnn\t2\tBob\t1\n")
    pl = read_pairs(tmp_path / "pairs.txt", tmp_path / "imgs")
    assert pl.labels.tolist() == [True, False, True, False]
    assert pl.folds.tolist() == [0, 0, 1, 1]
    names = [str(Path(p).relative_to(tmp_path / "imgs")) for p in pl.images]
    assert names[pl.first[1]] == "Bob/Bob_0001.jpg" and names[pl.second[1]] == "Cid/Cid_0003.jpg"
    assert len(pl.images) == 5  # Ann_0002 and Bob_0001 are shared between pairs


def test_lfw_pairs_txt_rejects_a_short_file(tmp_path: Path) -> None:
    (tmp_path / "pairs.txt").write_text("2\t1\nAnn\t1\t2\n")
    with pytest.raises(FacelabError, match="header promises"):
        read_pairs(tmp_path / "pairs.txt")


def test_real_lfw_pairs_txt(lfw_root: Path) -> None:
    pl = read_pairs(lfw_root / "pairs.txt")
    assert len(pl) == 6000 and pl.labels.sum() == 3000
    assert np.bincount(pl.folds).tolist() == [600] * 10
    assert all(Path(p).is_file() for p in pl.images[:50])


def test_csv_pairs_labels_and_folds(tmp_path: Path) -> None:
    write_pairs_csv(tmp_path / "p.csv", [("a/1.png", "a/2.png", True), ("a/1.png", "b/1.png", False)] * 5)
    pl = read_pairs(tmp_path / "p.csv", folds=5)
    assert pl.labels.tolist() == [True, False] * 5 and np.bincount(pl.folds).tolist() == [2] * 5
    (tmp_path / "q.csv").write_text("img1,img2,label,fold\nx,y,same,3\nx,z,maybe,3\n")
    with pytest.raises(FacelabError, match=r"q\.csv:3"):
        read_pairs(tmp_path / "q.csv")
    (tmp_path / "t.csv").write_text("img1,img2\nx,y\n")
    assert read_pairs(tmp_path / "t.csv", folds=1).labels is None  # a test list: scored, not evaluated


def test_contiguous_folds_are_balanced() -> None:
    f = contiguous_folds(23, 10)
    assert np.all(np.diff(f) >= 0) and sorted(np.bincount(f).tolist()) == [2] * 7 + [3] * 3


def _jpeg(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), (value, value, value)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("protocol", [2, 4])
def test_bin_hand_built_is_read(tmp_path: Path, protocol: int) -> None:
    bins = [_jpeg(v) for v in (10, 20, 30, 40)]
    (tmp_path / "x.bin").write_bytes(pickle.dumps((bins, [True, False]), protocol=protocol))
    images, issame = load_bin(tmp_path / "x.bin")
    assert images == bins and issame == [True, False]
    pl = read_pairs(tmp_path / "x.bin", folds=2)
    assert pl.labels.tolist() == [True, False] and len(pl.images) == 4
    assert pl.images[pl.second[1]][1] == bins[3]


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_bin_refuses_a_pickle_that_would_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(([_Evil(marker), _jpeg(1)], [True]))
    assert b"system" in payload
    (tmp_path / "evil.bin").write_bytes(payload)
    with pytest.raises(FacelabError, match="refusing to load"):
        load_bin(tmp_path / "evil.bin")
    assert not marker.exists()
    # numpy bools need a global too: refused rather than trusted
    (tmp_path / "np.bin").write_bytes(pickle.dumps(([_jpeg(1), _jpeg(2)], [np.bool_(True)])))
    with pytest.raises(FacelabError, match="refusing"):
        load_bin(tmp_path / "np.bin")
    # the protocol-2 bytes stand-in encodes latin-1 only; it is no door to other codecs
    sneaky = b"\x80\x02]q\x00(c_codecs\nencode\nq\x01X\x01\x00\x00\x00aX\x04\x00\x00\x00zlibq\x02\x86R]\x85."
    (tmp_path / "codec.bin").write_bytes(sneaky)
    with pytest.raises(FacelabError, match=r"refusing _codecs\.encode"):
        load_bin(tmp_path / "codec.bin")


def test_bin_checks_its_shape(tmp_path: Path) -> None:
    (tmp_path / "odd.bin").write_bytes(pickle.dumps(([_jpeg(1)], [True])))
    with pytest.raises(FacelabError, match="exactly 2 per pair"):
        load_bin(tmp_path / "odd.bin")
