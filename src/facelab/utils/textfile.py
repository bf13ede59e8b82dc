"""Reading the small text files users hand to facelab (pair lists, CSVs) with one-line errors naming file and line.

Every reader of a user's list goes through here, so the same rules hold everywhere:

* **encoding**: UTF-8, with or without a byte-order mark; anything else (UTF-16, Latin-1) is an error naming the
  line of the first byte that is not UTF-8 and saying how to fix it;
* **no binary**: a NUL byte is an error naming its line (a binary file given by mistake, or UTF-16 without a BOM);
* **bounded**: files over :data:`MAX_TEXT_BYTES`, lines over :data:`MAX_LINE` characters and CSV fields over
  :data:`MAX_FIELD` characters are refused before anything is built from them;
* **paths stay inside the data root**: :func:`relative_path` refuses absolute paths, ``..`` components, empty
  paths and over-long ones, so a list cannot point facelab at files outside the folder it names.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from facelab.errors import FacelabError

#: larger list files are refused unread (LFW's pairs.txt is 100 KB; a 10M-pair list is ~400 MB)
MAX_TEXT_BYTES = 1 << 30
#: longest accepted line, in characters
MAX_LINE = 16_384
#: longest accepted CSV field, in characters
MAX_FIELD = 4_096
#: longest accepted path (POSIX PATH_MAX) and path component (NAME_MAX on common file systems)
MAX_PATH = 4_096
MAX_COMPONENT = 255
_DRIVE = re.compile(r"^[A-Za-z]:")


class TextFileError(FacelabError):
    """A list file that cannot be read as facelab expects; the message names the file and, when known, the line."""


def where(path: str | Path, line: int | None = None) -> str:
    """``path`` or ``path:line`` for messages."""
    return f"{path}:{line}" if line else str(path)


def read_text(path: str | Path, what: str = "file") -> str:
    """The UTF-8 text of ``path`` (BOM removed), or a :class:`TextFileError` naming the file and line.

    Raises:
        TextFileError: missing, a folder, over :data:`MAX_TEXT_BYTES`, a NUL byte, not UTF-8.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_TEXT_BYTES:
            raise TextFileError(f"{path}: {size:,} bytes is larger than a {what} can be ({MAX_TEXT_BYTES:,})")
        data = path.read_bytes()
    except FileNotFoundError:
        raise TextFileError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise TextFileError(f"{path} is a folder, not a {what}") from None
    except OSError as exc:
        raise TextFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise TextFileError(f"{path} is UTF-16 text; save it as UTF-8")
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise TextFileError(f"{where(path, line)}: NUL byte: a binary file, or UTF-16 text (save it as UTF-8)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise TextFileError(f"{where(path, line)}: byte 0x{data[exc.start]:02x} is not UTF-8 text; save the file as "
                            f"UTF-8") from None


def read_lines(path: str | Path, what: str = "file") -> list[tuple[int, str]]:
    """(line number, text) for every non-blank line of ``path`` (line endings and surrounding spaces removed).

    Raises:
        TextFileError: as :func:`read_text`, a line over :data:`MAX_LINE` characters, or no line at all.
    """
    text = read_text(path, what)
    out = []
    for n, raw in enumerate(text.split("\n"), start=1):
        if len(raw) > MAX_LINE:
            raise TextFileError(f"{where(path, n)}: line of {len(raw):,} characters (the limit is {MAX_LINE:,})")
        line = raw.strip()
        if line:
            out.append((n, line))
    if not out:
        raise TextFileError(f"{path} is empty: expected a {what}")
    return out


@dataclass
class CsvTable:
    """A CSV file read by :func:`read_csv`: the header (stripped) and the data rows with their line numbers."""

    path: Path
    header: list[str]
    rows: list[tuple[int, list[str]]]

    def column(self, name: str) -> int | None:
        """Index of the first header column called ``name`` (case-insensitive), or None."""
        lowered = [h.lower() for h in self.header]
        return lowered.index(name.lower()) if name.lower() in lowered else None

    def field(self, row: tuple[int, list[str]], index: int, name: str) -> str:
        """Field ``index`` of ``row`` (stripped), or an error naming the line when the row is too short or it is
        empty."""
        line, cells = row
        if index >= len(cells) or not cells[index].strip():
            raise TextFileError(f"{where(self.path, line)}: no value in column {index + 1} ({name}); got "
                                f"{_preview(','.join(cells))}")
        return cells[index].strip()


def read_csv(path: str | Path, what: str = "CSV file") -> CsvTable:
    """Header and rows of a CSV file (UTF-8 with or without BOM; blank lines skipped; fields stripped).

    Raises:
        TextFileError: as :func:`read_lines`, a malformed CSV line, a field over :data:`MAX_FIELD` characters, or an
            empty header.
    """
    path = Path(path)
    text = read_text(path, what)
    lines = text.split("\n")
    for n, raw in enumerate(lines, start=1):
        if len(raw) > MAX_LINE:
            raise TextFileError(f"{where(path, n)}: line of {len(raw):,} characters (the limit is {MAX_LINE:,})")
    reader = csv.reader(lines)
    rows: list[tuple[int, list[str]]] = []
    header: list[str] | None = None
    try:
        for cells in reader:
            line = reader.line_num
            if len(cells) <= 1 and not "".join(cells).strip():
                continue  # a blank line (a line of bare commas is a row, and an empty header is an error)
            for c in cells:
                if len(c) > MAX_FIELD:
                    raise TextFileError(f"{where(path, line)}: a field of {len(c):,} characters (the limit is "
                                        f"{MAX_FIELD:,})")
            if header is None:
                header = [c.strip() for c in cells]
            else:
                rows.append((line, cells))
    except csv.Error as exc:
        raise TextFileError(f"{where(path, reader.line_num)}: malformed CSV: {exc}") from None
    if header is None:
        raise TextFileError(f"{path} is empty: expected a {what} with a header line")
    if not any(header):
        raise TextFileError(f"{where(path, 1)}: the header line names no columns")
    return CsvTable(path, header, rows)


def relative_path(raw: str, source: str | Path, line: int | None, what: str = "image path") -> str:
    """``raw`` checked as a path relative to a data root: not empty, not absolute (POSIX, Windows drive or UNC),
    no ``..`` component, at most :data:`MAX_PATH` characters and :data:`MAX_COMPONENT` per component.

    Raises:
        TextFileError: naming ``source:line`` and the offending path (shortened).
    """
    value = raw.strip()
    here = where(source, line)
    if not value:
        raise TextFileError(f"{here}: empty {what}")
    if len(value) > MAX_PATH:
        raise TextFileError(f"{here}: {what} of {len(value):,} characters (the limit is {MAX_PATH:,})")
    if any(ord(c) < 32 for c in value):
        raise TextFileError(f"{here}: {what} {_preview(value)} contains control characters")
    if value.startswith(("/", "\\")) or _DRIVE.match(value) or os.path.isabs(value):
        raise TextFileError(f"{here}: {what} {_preview(value)} is absolute; paths must be relative to the data "
                            f"folder (--data)")
    parts = PureWindowsPath(value).parts if "\\" in value else PurePosixPath(value).parts
    if ".." in parts:
        raise TextFileError(f"{here}: {what} {_preview(value)} leaves the data folder ('..'); give --data a folder "
                            f"that contains every image instead")
    long = next((p for p in parts if len(p) > MAX_COMPONENT), None)
    if long is not None:
        raise TextFileError(f"{here}: {what} has a component of {len(long):,} characters (the limit is "
                            f"{MAX_COMPONENT})")
    return value


def path_component(raw: str, source: str | Path, line: int | None, what: str = "name") -> str:
    """``raw`` checked as a single folder or file name (an LFW identity): :func:`relative_path` and no separator."""
    value = relative_path(raw, source, line, what)
    if "/" in value or "\\" in value or value in (".", ".."):
        raise TextFileError(f"{where(source, line)}: {what} {_preview(value)} must be a single folder name")
    return value


def _preview(text: str, limit: int = 60) -> str:
    """``repr`` of ``text``, shortened: messages never echo a huge input."""
    return repr(text if len(text) <= limit else text[:limit] + "...")
