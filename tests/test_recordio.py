"""insightface RecordIO (train.rec / train.idx / property) read without mxnet, from files the tests write."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from facelab.data.dataset import FaceDataset
from facelab.data.given import given_manifest, load_given
from facelab.data.recordio import MAGIC_BYTES, RecordFile, pack, unpack, write_records
from facelab.errors import FacelabError
from facelab.images import read_image
from facelab.runs import load_checkpoint


def make_rec(orl_root: Path, folder: Path, ids: int = 6, per_id: int = 6, header: bool = True) -> list[bytes]:
    """An insightface-style set from ORL: key 0 the header record, keys 1..n the images (PGM bytes; insightface's
    are JPEG), label = identity index; property = 'ids,112,92'."""
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    payloads = []
    for label in range(ids):
        for n in range(1, per_id + 1):
            data = (orl_root / f"s{label + 1}" / f"{n}.pgm").read_bytes()
            images.append(data)
            payloads.append(pack(float(label), data, id1=len(payloads) + 1))
    if header:
        payloads = [pack((float(len(payloads) + 1), float(len(payloads) + 1)), b""), *payloads]
    write_records(folder / "train.rec", payloads)
    (folder / "property").write_text(f"{ids},112,92")
    return images


def test_records_round_trip_including_split_records(tmp_path: Path) -> None:
    aligned = b"abcd" + MAGIC_BYTES + b"efgh" + MAGIC_BYTES + b"ij"  # the magic word at aligned offsets 4 and 12
    unaligned = b"abc" + MAGIC_BYTES + b"xyz"  # not at an aligned offset: written as is
    payloads = [pack(3.0, aligned), pack((7.0, 1.0), unaligned), pack(0.0, b"")]
    write_records(tmp_path / "t.rec", payloads)
    raw = (tmp_path / "t.rec").read_bytes()
    # record 0: three parts (cflag 1, 2, 3) cut at the two aligned words; record 1: one part, its unaligned word
    # kept in the data; record 2: one part
    assert raw.count(MAGIC_BYTES) == 3 + 2 + 1
    assert [struct.unpack_from("<I", raw, 4)[0] >> 29] == [1]
    rf = RecordFile(tmp_path / "t.rec")
    assert [rf.read(k) for k in range(3)] == payloads
    header, body = unpack(rf.read(0), "t")
    assert (header.flag, header.labels, body) == (0, (3.0,), aligned)
    header, body = unpack(rf.read(1), "t")
    assert (header.flag, header.labels, body) == (2, (7.0, 1.0), unaligned)
    assert [rf.label(k) for k in range(3)] == [3.0, 7.0, 0.0]  # header-only read, split record read whole


def test_insightface_layout_as_a_given_training_set(orl_root: Path, tmp_path: Path) -> None:
    images = make_rec(orl_root, tmp_path / "ms1m")
    rf = RecordFile(tmp_path / "ms1m" / "train.rec")
    assert rf.image_keys() == list(range(1, 37))  # the header record (key 0) is not an image
    given = load_given(tmp_path / "ms1m" / "train.rec")
    assert given.classes == [str(i) for i in range(6)]
    manifest = given_manifest(given, None)
    assert manifest.train[0] == ("train.rec#1", 0) and manifest.train[-1] == ("train.rec#36", 5)
    ds = FaceDataset(manifest.root, manifest.train, 32)
    x, y = ds[7]
    ref = FaceDataset(tmp_path, [], 32).base(read_image(images[7]))
    assert y == 1 and torch.equal(x, ref)
    no_header = make_rec(orl_root, tmp_path / "plain", ids=2, per_id=3, header=False)
    assert RecordFile(tmp_path / "plain" / "train.rec").image_keys() == list(range(6)) and len(no_header) == 6


def test_broken_record_files_are_one_line_errors(orl_root: Path, tmp_path: Path) -> None:
    make_rec(orl_root, tmp_path / "a", ids=2, per_id=2)
    rec, idx = tmp_path / "a" / "train.rec", tmp_path / "a" / "train.idx"
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join([*lines[:-1], lines[-1].split("\t")[0] + "\t" + str(rec.stat().st_size + 8)]) + "\n")
    with pytest.raises(FacelabError, match=r"train.idx:5: offset \d+ is past the end of train.rec"):
        RecordFile(rec)
    idx.write_text("\n".join([*lines[:-1], lines[-1].split("\t")[0] + "\t" + "6"]) + "\n")
    with pytest.raises(FacelabError, match=r"train.rec#4: not a RecordIO record \(magic"):
        RecordFile(rec).read(4)
    idx.write_text("\n".join(lines) + "\n")
    rec.write_bytes(rec.read_bytes()[:-100])
    with pytest.raises(FacelabError, match=r"train.rec#4: file ends inside a record"):
        RecordFile(rec).read(4)
    idx.unlink()
    with pytest.raises(FacelabError, match="has no index beside it"):
        RecordFile(rec)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.rec").write_bytes(struct.pack("<II", 0xCED7230A, 8) + IRH_SHORT)
    (tmp_path / "b" / "x.idx").write_text("0\t0\n")
    with pytest.raises(FacelabError, match="shorter than its 24-byte header"):
        RecordFile(tmp_path / "b" / "x.rec").image(0)


IRH_SHORT = b"\0" * 8


TINY = ["data.input_size=32", "data.batch_size=8", "model.width=8", "model.embedding_dim=32", "threads=1",
        "loss.name=partial_fc", "loss.options.sample_rate=0.5", "init.model=''"]


def test_one_epoch_from_a_rec_file(orl_root: Path, tmp_path: Path) -> None:
    from facelab.config import load_config
    from facelab.engine import train

    make_rec(orl_root, tmp_path / "ms1m")
    cfg = load_config(None, [*TINY, "optim.epochs=1", f"data.train={tmp_path / 'ms1m' / 'train.rec'}",
                             f"out_dir={tmp_path / 'run'}"])
    result = train(cfg, quiet=True)
    assert len(result.history) == 1 and result.history[0]["loss"] > 0
    with pytest.raises(FacelabError, match="holds aligned face crops"):
        train(load_config(None, [*TINY, f"data.train={tmp_path / 'ms1m' / 'train.rec'}", "data.align=yunet",
                                 f"out_dir={tmp_path / 'run2'}"]), quiet=True)


@pytest.mark.slow
def test_torchrun_two_processes_partial_fc_on_a_rec_file(orl_root: Path, tmp_path: Path) -> None:
    make_rec(orl_root, tmp_path / "ms1m")
    run = tmp_path / "ddp"
    settings = [*TINY, "optim.epochs=1", f"data.train={tmp_path / 'ms1m' / 'train.rec'}", f"out_dir={run}"]
    code = ("from facelab.config import load_config; from facelab.engine import train; "
            f"train(load_config(None, {settings!r}), quiet=True)")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    out = subprocess.run([*torchrun, "--no-python", sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    state = load_checkpoint(run)
    assert (state["epoch"], state["world_size"]) == (1, 2)
    assert state["loss"]["head.weight"].shape == (6, 32)  # every class of property, merged from both shards
    assert state["history"][0]["loss"] > 0
