"""insightface's training sets (MS1MV2/MS1MV3, Glint360K, WebFace) as MXNet RecordIO, read without mxnet.

A dataset is three files side by side:

* ``train.rec``: records, each ``uint32 magic 0xCED7230A``, ``uint32 lrecord`` (top 3 bits: continuation flag
  ``cflag``; low 29 bits: payload length), the payload, zero padding to a multiple of 4 bytes. A payload that
  contains the magic word at a 4-byte-aligned position is written as several parts (cflag 1 = first, 2 = middle,
  3 = last) split at those words, which are dropped; the reader joins the parts with the magic word again
  (dmlc-core's ``RecordIOWriter``/``RecordIOReader``);
* ``train.idx``: text lines ``key<TAB>byte offset`` of each record in ``train.rec``;
* ``property``: ``num_classes,height,width``.

A record's payload is MXNet's ``IRHeader`` -- ``struct '<IfQQ'``: ``flag`` (uint32), ``label`` (float32), ``id``,
``id2`` (uint64) -- then, when ``flag > 0``, ``flag`` float32 labels, then the encoded image (JPEG). insightface
writes a header record under key 0 whose labels are ``[first key after the images, ...]``: the images are keys
``1 .. labels[0] - 1`` (``MXFaceDataset``); without that record every key is an image. An image's class is its
label (the first of its label array).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from facelab.errors import FacelabError

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
_LEN_MASK = (1 << 29) - 1
IR_HEADER = struct.Struct("<IfQQ")
#: a record longer than this is refused unread (a face JPEG is tens of KB)
MAX_RECORD = 64 << 20


def record_source(rec: Path, key: int) -> str:
    """The name of record ``key`` of ``rec`` in messages and manifests: ``train.rec#123``."""
    return f"{rec}#{key}"


@dataclass
class RecordHeader:
    flag: int
    label: float
    id: int
    id2: int
    labels: tuple[float, ...]


def unpack(payload: bytes, where: str) -> tuple[RecordHeader, bytes]:
    """(IRHeader, the rest: the encoded image) of a record's payload.

    Raises:
        FacelabError: a payload too short for its header or label array, naming ``where``.
    """
    if len(payload) < IR_HEADER.size:
        raise FacelabError(f"{where}: record of {len(payload)} bytes is shorter than its {IR_HEADER.size}-byte header")
    flag, label, id1, id2 = IR_HEADER.unpack_from(payload)
    body = payload[IR_HEADER.size:]
    labels: tuple[float, ...] = (label,)
    if flag > 0:
        if len(body) < 4 * flag:
            raise FacelabError(f"{where}: header announces {flag} labels but the record is too short")
        labels = struct.unpack_from(f"<{flag}f", body)
        body = body[4 * flag:]
    return RecordHeader(flag, label, id1, id2, labels), body


def pack(label: float | tuple[float, ...], image: bytes, id1: int = 0) -> bytes:
    """A payload as insightface's ``mx.recordio.pack`` writes it (a tuple label becomes a label array)."""
    if isinstance(label, tuple):
        return IR_HEADER.pack(len(label), 0.0, id1, 0) + struct.pack(f"<{len(label)}f", *label) + image
    return IR_HEADER.pack(0, float(label), id1, 0) + image


class RecordFile:
    """Random access to a ``.rec`` through its ``.idx`` (opened lazily, once per process, so loader processes and
    DDP ranks each read with their own file handle)."""

    def __init__(self, rec: str | Path, idx: str | Path | None = None) -> None:
        self.rec = Path(rec)
        self.idx = Path(idx) if idx else self.rec.with_suffix(".idx")
        if not self.rec.is_file():
            raise FacelabError(f"RecordIO file not found: {self.rec}")
        if not self.idx.is_file():
            raise FacelabError(f"{self.rec} has no index beside it ({self.idx.name}); insightface datasets ship one")
        self.offsets: dict[int, int] = {}
        size = self.rec.stat().st_size
        for n, line in enumerate(self.idx.read_text(encoding="utf-8", errors="strict").splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[0].isdigit() or not parts[1].isdigit():
                raise FacelabError(f"{self.idx}:{n}: expected 'key<TAB>offset', got {line[:60]!r}")
            key, offset = int(parts[0]), int(parts[1])
            if offset >= size:
                raise FacelabError(f"{self.idx}:{n}: offset {offset} is past the end of {self.rec.name} ({size} "
                                   f"bytes)")
            self.offsets[key] = offset
        if not self.offsets:
            raise FacelabError(f"{self.idx} lists no records")
        self._fh: BinaryIO | None = None
        self._pid = -1

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_fh": None, "_pid": -1}

    def _file(self) -> BinaryIO:
        if self._fh is None or self._pid != os.getpid():
            self._fh = open(self.rec, "rb")  # noqa: SIM115 (kept open for random access; one per process)
            self._pid = os.getpid()
        return self._fh

    def read(self, key: int) -> bytes:
        """The payload of record ``key`` (split parts joined).

        Raises:
            FacelabError: an unknown key, a bad magic word, a record running past the end, naming file and key.
        """
        if key not in self.offsets:
            raise FacelabError(f"{self.rec} has no record {key}")
        fh = self._file()
        fh.seek(self.offsets[key])
        parts: list[bytes] = []
        where = record_source(self.rec, key)
        while True:
            head = fh.read(8)
            if len(head) < 8:
                raise FacelabError(f"{where}: file ends inside a record header")
            magic, lrec = struct.unpack("<II", head)
            if magic != MAGIC:
                raise FacelabError(f"{where}: not a RecordIO record (magic {magic:#010x}, expected {MAGIC:#010x})")
            cflag, length = lrec >> 29, lrec & _LEN_MASK
            if length > MAX_RECORD:
                raise FacelabError(f"{where}: record of {length:,} bytes is larger than {MAX_RECORD:,}")
            data = fh.read(length)
            if len(data) < length:
                raise FacelabError(f"{where}: file ends inside a record ({len(data)} of {length} bytes)")
            fh.read((4 - length % 4) % 4)
            parts.append(data)
            if cflag in (0, 3):
                break
            if cflag not in (1, 2):
                raise FacelabError(f"{where}: unknown continuation flag {cflag}")
        return MAGIC_BYTES.join(parts)

    def image(self, key: int) -> tuple[str, bytes, float]:
        """(name, encoded image, class label) of image record ``key``."""
        where = record_source(self.rec, key)
        header, body = unpack(self.read(key), where)
        return where, body, header.labels[0]

    def label(self, key: int) -> float:
        """The class label of image record ``key``, from its header alone (the image bytes are not read)."""
        fh = self._file()
        fh.seek(self.offsets[key])
        head = fh.read(8 + IR_HEADER.size + 4)
        if len(head) >= 8 + IR_HEADER.size and struct.unpack_from("<I", head)[0] == MAGIC \
                and (struct.unpack_from("<I", head, 4)[0] >> 29) == 0:
            flag, label, _, _ = IR_HEADER.unpack_from(head, 8)
            if flag == 0:
                return float(label)
            if len(head) == 8 + IR_HEADER.size + 4:
                return float(struct.unpack_from("<f", head, 8 + IR_HEADER.size)[0])
        return self.image(key)[2]  # a split or unusual record: read it whole

    def image_keys(self) -> list[int]:
        """The keys of the image records: ``1 .. labels[0] - 1`` after insightface's header record, else all."""
        if 0 in self.offsets:
            header, _ = unpack(self.read(0), record_source(self.rec, 0))
            if header.flag > 0:
                return [k for k in range(1, int(header.labels[0])) if k in self.offsets]
        return sorted(self.offsets)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_property(folder: Path) -> int | None:
    """``num_classes`` from ``folder/property`` (``num_classes,height,width``), or None without the file."""
    path = folder / "property"
    if not path.is_file():
        return None
    first = path.read_text(encoding="utf-8").strip().split(",")[0]
    if not first.isdigit():
        raise FacelabError(f"{path}: expected 'num_classes,height,width', got {path.read_text()[:40]!r}")
    return int(first)


def write_records(rec: str | Path, payloads: list[bytes], idx: str | Path | None = None) -> None:
    """Write ``payloads`` as records 0..n-1 with their index (dmlc-core's writer, magic-word splitting included):
    how the tests build a dataset, and a way to pack a folder for a cluster."""
    rec = Path(rec)
    idx = Path(idx) if idx else rec.with_suffix(".idx")
    lines = []
    with open(rec, "wb") as fh:
        for key, payload in enumerate(payloads):
            lines.append(f"{key}\t{fh.tell()}\n")
            cuts = [i for i in range(0, len(payload) - 3, 4) if payload[i:i + 4] == MAGIC_BYTES]
            bounds = [0, *cuts, len(payload)]
            pieces = [payload[bounds[0]:bounds[1]]] + [payload[c + 4:e] for c, e in zip(cuts, bounds[2:],
                                                                                          strict=True)]
            for n, piece in enumerate(pieces):
                cflag = 0 if len(pieces) == 1 else 1 if n == 0 else 3 if n == len(pieces) - 1 else 2
                fh.write(struct.pack("<II", MAGIC, (cflag << 29) | len(piece)))
                fh.write(piece)
                fh.write(b"\0" * ((4 - len(piece) % 4) % 4))
    Path(idx).write_text("".join(lines))
