"""Pair-list and CSV readers against malformed and hostile files (issue 15), and the Kaggle LFW CSVs (issue 17):
every refusal is one line naming file and line, raised before any model is loaded or image embedded."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from facelab.errors import FacelabError
from facelab.evaluation.hw2p2 import read_verification_csv, score_pair_file
from facelab.evaluation.pairs import (
    evaluate_pairs,
    kaggle_sibling,
    load_bin,
    read_pairs,
    score_pairs,
    stratified_folds,
)
from facelab.utils.textfile import MAX_FIELD, MAX_LINE, MAX_PATH, TextFileError


def _refused(path: Path, match: str, **kw: object) -> str:
    with pytest.raises(FacelabError, match=match) as info:
        read_pairs(path, **kw)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


# -- text-level rules, through every reader ------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "fmt"), [("p.csv", None), ("pairs.txt", None), ("v.txt", "hw2p2")])
def test_empty_files_are_refused_by_every_reader(tmp_path: Path, name: str, fmt: str | None) -> None:
    (tmp_path / name).write_text("")
    _refused(tmp_path / name, "is empty", fmt=fmt)
    (tmp_path / name).write_text("\n \n\r\n")
    _refused(tmp_path / name, "is empty", fmt=fmt)


def test_utf8_with_and_without_bom_is_read(tmp_path: Path) -> None:
    text = "img1,img2,label\nrené/1.jpg,zoë/2.jpg,1\nrené/1.jpg,zoë/3.jpg,0\n"
    (tmp_path / "plain.csv").write_text(text, encoding="utf-8")
    (tmp_path / "bom.csv").write_text(text, encoding="utf-8-sig")
    a, b = read_pairs(tmp_path / "plain.csv", folds=1), read_pairs(tmp_path / "bom.csv", folds=1)
    assert [p.name for p in a.images] == [p.name for p in b.images] == ["1.jpg", "2.jpg", "3.jpg"]
    assert a.images[0].parent.name == "rené" and b.labels.tolist() == [True, False]


def test_other_encodings_are_a_clear_error_with_the_line(tmp_path: Path) -> None:
    (tmp_path / "latin1.csv").write_bytes("img1,img2\na.jpg,b.jpg\nren\u00e9.jpg,c.jpg\n".encode("latin-1"))
    msg = _refused(tmp_path / "latin1.csv", r"latin1\.csv:3: byte 0xe9 is not UTF-8")
    assert "save the file as UTF-8" in msg
    (tmp_path / "u16.txt").write_bytes("10\t300\n".encode("utf-16"))
    _refused(tmp_path / "u16.txt", "is UTF-16 text; save it as UTF-8")
    (tmp_path / "u16le.txt").write_bytes("10\t300\n".encode("utf-16-le"))  # no BOM: NUL bytes
    _refused(tmp_path / "u16le.txt", r"u16le\.txt:1: NUL byte")


def test_nul_bytes_are_refused_with_their_line(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_bytes(b"img1,img2\na.jpg,b.jpg\na\x00.jpg,b.jpg\n")
    _refused(tmp_path / "p.csv", r"p\.csv:3: NUL byte")


def test_missing_and_empty_columns(tmp_path: Path) -> None:
    (tmp_path / "h.csv").write_text("left,right\na.jpg,b.jpg\n")
    _refused(tmp_path / "h.csv", r"h\.csv:1: expected a CSV header with columns img1,img2")
    (tmp_path / "short.csv").write_text("img1,img2,label\na.jpg,b.jpg,1\nc.jpg\n")
    _refused(tmp_path / "short.csv", r"short\.csv:3: no value in column 2 \(img2\)")
    (tmp_path / "blank.csv").write_text("img1,img2,label\na.jpg,b.jpg,\n")
    _refused(tmp_path / "blank.csv", r"blank\.csv:2: no value in column 3 \(label\)")
    (tmp_path / "commas.csv").write_text(",,\na.jpg,b.jpg\n")
    _refused(tmp_path / "commas.csv", "names no columns")
    (tmp_path / "headonly.csv").write_text("img1,img2\n")
    _refused(tmp_path / "headonly.csv", "has a header but no pairs")


def test_oversized_lines_fields_and_paths(tmp_path: Path) -> None:
    (tmp_path / "field.csv").write_text(f'img1,img2\n"{"a" * (MAX_FIELD + 1)}",b.jpg\n')
    _refused(tmp_path / "field.csv", rf"field\.csv:2: a field of {MAX_FIELD + 1:,} characters")
    (tmp_path / "line.txt").write_text("1\n" + "x" * (MAX_LINE + 1) + "\n")
    _refused(tmp_path / "line.txt", rf"line\.txt:2: line of {MAX_LINE + 1:,} characters")
    deep = "/".join(["d" * 200] * (MAX_PATH // 200 + 1))
    (tmp_path / "v.txt").write_text(f"{deep} b.jpg 1\n")
    msg = _refused(tmp_path / "v.txt", r"v\.txt:1: image path of", fmt="hw2p2")
    assert len(msg) < 300  # the path itself is not echoed
    (tmp_path / "comp.csv").write_text(f"img1,img2\n{'n' * 300}.jpg,b.jpg\n")
    _refused(tmp_path / "comp.csv", "component of 304 characters")


@pytest.mark.parametrize("bad", ["/etc/passwd", "C:\\faces\\a.jpg", "\\\\server\\share\\a.jpg", "../a.jpg",
                                 "faces/../../a.jpg"])
def test_absolute_and_escaping_paths_are_refused_before_any_embedding(tmp_path: Path, bad: str) -> None:
    (tmp_path / "p.csv").write_text(f"img1,img2,label\na.jpg,b.jpg,1\n\"{bad}\",b.jpg,0\n")
    _refused(tmp_path / "p.csv", r"p\.csv:3: image path .*(is absolute|leaves the data folder)")
    (tmp_path / "v.txt").write_text(f"a.jpg b.jpg 1\n{bad} b.jpg 0\n")
    _refused(tmp_path / "v.txt", r"v\.txt:2: ", fmt="hw2p2")
    # the refusal comes from reading the list, before the run is even loaded
    with pytest.raises(FacelabError, match=r"p\.csv:3"):
        evaluate_pairs(tmp_path / "no_such_run", tmp_path / "p.csv", folds=1)


def test_lfw_pairs_txt_headers(tmp_path: Path) -> None:
    (tmp_path / "zero.txt").write_text("0 0\n")
    _refused(tmp_path / "zero.txt", r"zero\.txt:1: the header declares no pairs")
    (tmp_path / "huge.txt").write_text("10 300000000\nAnn 1 2\n")  # never allocates the promised 6e9 rows
    _refused(tmp_path / "huge.txt", "header promises 10x600000000 pairs but 1 lines follow")
    (tmp_path / "neg.txt").write_text("-1 3\n")
    _refused(tmp_path / "neg.txt", "header value '-1' is not a whole number")
    (tmp_path / "name.txt").write_text("1\n../x 1 2\nA 1 B 2\n")
    _refused(tmp_path / "name.txt", r"name\.txt:2: identity name")
    (tmp_path / "num.txt").write_text("1\nAnn 1 99999999\nA 1 B 2\n")
    _refused(tmp_path / "num.txt", r"num\.txt:2: image number '99999999'")


def test_lfw_view1_dev_file_gets_stratified_folds(tmp_path: Path) -> None:
    matched = [f"P{i}\t1\t2" for i in range(20)]
    mismatched = [f"P{i}\t1\tQ{i}\t1" for i in range(20)]
    (tmp_path / "pairsDevTest.txt").write_text("20\n" + "\n".join(matched + mismatched) + "\n")
    pl = read_pairs(tmp_path / "pairsDevTest.txt", folds=4)
    assert len(pl) == 40 and pl.labels.sum() == 20
    for f in range(4):
        assert pl.labels[pl.folds == f].tolist() == [True] * 5 + [False] * 5


def test_bin_huge_declared_length_is_a_truncation_error_not_an_allocation(tmp_path: Path) -> None:
    # protocol 4 BINBYTES8 declaring 2**40 bytes, followed by nothing
    payload = b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"xx"
    (tmp_path / "huge.bin").write_bytes(payload)
    with pytest.raises(FacelabError, match=r"huge\.bin: not a readable insightface \.bin"):
        load_bin(tmp_path / "huge.bin")
    (tmp_path / "empty.bin").write_bytes(pickle.dumps(([], [])))
    with pytest.raises(FacelabError, match="holds no pairs"):
        load_bin(tmp_path / "empty.bin")


def test_hw2p2_verification_csv_rules(tmp_path: Path) -> None:
    (tmp_path / "ok.csv").write_text("\ufeffid,label\nimg/a.jpg,n000001\nb.jpg,n000000\n", encoding="utf-8")
    assert read_verification_csv(tmp_path / "ok.csv") == {"a.jpg": "n000001", "b.jpg": "n000000"}
    (tmp_path / "short.csv").write_text("id,label\na.jpg\n")
    with pytest.raises(FacelabError, match=r"short\.csv:2: no value in column 2"):
        read_verification_csv(tmp_path / "short.csv")
    (tmp_path / "abs.csv").write_text("id,label\n/tmp/a.jpg,n1\n")
    with pytest.raises(FacelabError, match=r"abs\.csv:2: image path '/tmp/a\.jpg' is absolute"):
        read_verification_csv(tmp_path / "abs.csv")
    (tmp_path / "pairs.txt").write_text("a.jpg b.jpg 1\n/abs.jpg b.jpg 0\n")
    with pytest.raises(FacelabError, match=r"pairs\.txt:2"):
        score_pair_file(tmp_path / "no_such_run", tmp_path / "pairs.txt")


# -- Kaggle LFW CSVs -------------------------------------------------------------------------------------------------
def _kaggle_files(pairs_txt: Path, out: Path) -> tuple[Path, Path, Path]:
    """Write Kaggle's pairs.csv and the match/mismatch split of ``pairs_txt`` as Kaggle ships them."""
    rows = [ln.split() for ln in pairs_txt.read_text().splitlines()[1:] if ln.strip()]
    out.mkdir(parents=True, exist_ok=True)
    combined = ["name,imagenum1,imagenum2,"] + [",".join(r) + ("," if len(r) == 3 else "") for r in rows]
    (out / "pairs.csv").write_text("\n".join(combined) + "\n")
    (out / "matchpairsDevTest.csv").write_text(
        "\n".join(["name,imagenum1,imagenum2"] + [",".join(r) for r in rows if len(r) == 3]) + "\n")
    (out / "mismatchpairsDevTest.csv").write_text(
        "\n".join(["name,imagenum1,name,imagenum2"] + [",".join(r) for r in rows if len(r) == 4]) + "\n")
    return out / "pairs.csv", out / "matchpairsDevTest.csv", out / "mismatchpairsDevTest.csv"


def _pairs_as_paths(pl) -> list[tuple[str, str, bool]]:  # type: ignore[no-untyped-def]
    return [(str(pl.images[a]), str(pl.images[b]), bool(s)) for a, b, s in zip(pl.first, pl.second, pl.labels,
                                                                                 strict=True)]


def _fake_embeddings(pl) -> np.ndarray:  # type: ignore[no-untyped-def]
    """A deterministic 16-d vector per image path, so equal pair lists score equally."""
    return np.stack([np.random.default_rng(abs(hash(str(p))) % 2**32).standard_normal(16) for p in pl.images])


def test_kaggle_csvs_score_exactly_like_pairs_txt(lfw_root: Path, tmp_path: Path) -> None:
    combined, match, mismatch = _kaggle_files(lfw_root / "pairs.txt", tmp_path / "kaggle")
    ref = read_pairs(lfw_root / "pairs.txt")
    from_csv = read_pairs(combined, lfw_root)
    split = read_pairs([match, mismatch], lfw_root)
    auto = read_pairs(mismatch, lfw_root)  # the sibling is found and read too
    for pl in (from_csv, split, auto):
        assert _pairs_as_paths(pl) == _pairs_as_paths(ref)
        assert np.array_equal(pl.folds, ref.folds)
    assert auto.name == "matchpairsDevTest.csv + mismatchpairsDevTest.csv"
    results = [score_pairs(_fake_embeddings(pl), pl, ("cosine",))["cosine"] for pl in (ref, from_csv, split)]
    for r in results[1:]:
        assert r["kfold"]["accuracy_mean"] == results[0]["kfold"]["accuracy_mean"]
        assert r["report"]["roc_auc"] == results[0]["report"]["roc_auc"]
        assert [f["threshold"] for f in r["kfold"]["per_fold"]] == \
            [f["threshold"] for f in results[0]["kfold"]["per_fold"]]
    assert from_csv.missing_images() == []


def test_kaggle_layout_finds_its_image_folder_and_the_sibling_rules(tmp_path: Path) -> None:
    images = tmp_path / "lfw-deepfunneled" / "lfw-deepfunneled" / "Ann"
    images.mkdir(parents=True)
    (images / "Ann_0001.jpg").write_bytes(b"x")
    (tmp_path / "matchpairsDevTest.csv").write_text("name,imagenum1,imagenum2\nAnn,1,2\nBob,1,3\n")
    with pytest.raises(FacelabError, match=r"holds only matched pairs and mismatchpairsDevTest\.csv is not beside"):
        read_pairs(tmp_path / "matchpairsDevTest.csv")
    (tmp_path / "mismatchpairsDevTest.csv").write_text("name,imagenum1,name,imagenum2\nAnn,1,Bob,1\nBob,2,Cy,1\n")
    pl = read_pairs(tmp_path / "matchpairsDevTest.csv", folds=2)
    assert pl.root == tmp_path / "lfw-deepfunneled" / "lfw-deepfunneled"
    assert pl.labels.tolist() == [True, False, True, False] and pl.folds.tolist() == [0, 0, 1, 1]
    missing = pl.missing_images()
    assert len(missing) == 5 and tmp_path / "lfw-deepfunneled/lfw-deepfunneled/Ann/Ann_0001.jpg" not in missing
    with pytest.raises(FacelabError, match=r"5 of 6 images listed in matchpairsDevTest\.csv \+ mismatch.*--data"):
        pl.require_images()
    assert kaggle_sibling(Path("x/matchpairsDevTrain.csv")) == Path("x/mismatchpairsDevTrain.csv")
    assert kaggle_sibling(Path("pairs.csv")) is None
    (tmp_path / "bad.csv").write_text("name,imagenum1,imagenum2,\nAnn,1\n")
    _refused(tmp_path / "bad.csv", r"bad\.csv:2: expected 'name,n1,n2' or 'name1,n1,name2,n2'")
    (tmp_path / "bad2.csv").write_text("name,imagenum1,imagenum2,\nAnn,1,x,\n")
    _refused(tmp_path / "bad2.csv", r"bad2\.csv:2: image number 'x'")


def test_stratified_folds_need_enough_pairs_of_each_class() -> None:
    assert stratified_folds(np.array([True, True, False, False]), 2).tolist() == [0, 1, 0, 1]
    with pytest.raises(FacelabError, match="cannot cut 1 mismatched pairs into 2 folds"):
        stratified_folds(np.array([True, True, False]), 2)


def test_text_file_error_is_a_facelab_error() -> None:
    assert issubclass(TextFileError, FacelabError)
