"""The gallery against locks, read-only media, foreign files, duplicates, hostile names, races and tampering
(issue 15). Each refusal is asserted together with "nothing stored changed"."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_serving_support import one_thread, unit_rows  # noqa: F401  (one_thread: autouse)

from facelab.errors import FacelabError
from facelab.serving.gallery import (
    APPLICATION_ID,
    Gallery,
    GalleryBusy,
    GalleryCorrupt,
    GalleryReadOnly,
    UnknownIdentity,
    check_name,
)

DIM = 8
HOLD_LOCK = (
    "import sqlite3, sys, time\n"
    "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
    "db.execute('BEGIN IMMEDIATE')\n"
    "db.execute(\"INSERT INTO meta VALUES ('held', 'by another process')\")\n"
    "print('locked', flush=True)\n"
    "time.sleep(120)\n"
)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make(path: Path, people: int = 3, **kw: object) -> Gallery:
    g = Gallery(path, "model-a", DIM, **kw)  # type: ignore[arg-type]
    x = unit_rows(people * 2, DIM)
    for i in range(people):
        g.enroll(f"p{i}", [(f"p{i}/{j}.jpg", x[2 * i + j], f"hash-{i}-{j}") for j in range(2)])
    return g


@pytest.fixture()
def locked(tmp_path: Path) -> Iterator[Path]:
    """A gallery whose write lock is held by another process (a real second connection in BEGIN IMMEDIATE)."""
    db = tmp_path / "g.db"
    make(db).close()
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield db
    finally:
        proc.kill()
        proc.wait()


def test_reads_do_not_wait_for_another_process_holding_the_write_lock(locked: Path) -> None:
    gallery = Gallery(locked, "model-a", DIM, busy_timeout=20)  # a write would wait 20 s
    start = time.monotonic()
    assert gallery.counts() == (3, 6)
    assert gallery.search(unit_rows(1, DIM), k=2)[0][0].name in {"p0", "p1", "p2"}
    assert [i.name for i in gallery.identities()] == ["p0", "p1", "p2"]
    assert time.monotonic() - start < 5  # none of them waited for the lock (20 s)


def test_a_held_write_lock_is_gallery_busy_and_nothing_is_stored(locked: Path) -> None:
    gallery = Gallery(locked, "model-a", DIM, busy_timeout=0.2)
    with pytest.raises(GalleryBusy, match="locked by another writer"):
        gallery.enroll("new", [("n.jpg", unit_rows(1, DIM)[0])])
    with pytest.raises(GalleryBusy):
        gallery.remove("p0")
    assert gallery.counts() == (3, 6)


def test_a_writer_thread_never_blocks_readers_of_the_same_gallery(tmp_path: Path) -> None:
    gallery = make(tmp_path / "g.db")
    inside, release = threading.Event(), threading.Event()

    def slow_items() -> Iterator[tuple[str, np.ndarray]]:
        inside.set()
        release.wait(10)
        yield "slow.jpg", unit_rows(1, DIM)[0]

    writer = threading.Thread(target=lambda: gallery.enroll("slow", slow_items()))
    writer.start()
    try:
        assert inside.wait(10)  # the write transaction is open and holds the write lock
        assert gallery.counts() == (3, 6) and len(gallery.search(unit_rows(1, DIM), k=1)[0]) == 1
    finally:
        release.set()
        writer.join()
    assert gallery.counts() == (4, 7)


# -- read-only ------------------------------------------------------------------------------------------------------
def test_read_only_open_writes_nothing_and_refuses_writes(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    make(db).close()
    before = digest(db)
    ro = Gallery(db, read_only=True)
    assert ro.counts() == (3, 6) and ro.fingerprint == "model-a" and not ro.immutable
    assert ro.search(unit_rows(1, DIM), k=1)[0]
    with pytest.raises(GalleryReadOnly, match="open read-only"):
        ro.enroll("x", [("x.jpg", unit_rows(1, DIM)[0])])
    with pytest.raises(GalleryReadOnly):
        ro.remove("p0")
    ro.close()
    assert digest(db) == before  # (SQLite may leave its WAL index files beside it: they hold no data)
    with pytest.raises(FacelabError, match="gallery not found"):
        Gallery(tmp_path / "none.db", "model-a", DIM, read_only=True)


@pytest.fixture()
def read_only_mount(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs remounted read-only (needs root and mount; skipped otherwise): real read-only media."""
    mnt = tmp_path / "media"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)  # still in use: detach it anyway


def test_a_gallery_on_read_only_media_serves_list_and_identify(read_only_mount: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    db = read_only_mount / "g.db"
    make(db).close()
    subprocess.run(["mount", "-o", "remount,ro", str(read_only_mount)], check=True)
    with pytest.raises(FacelabError):
        Gallery(db, "model-a", DIM)  # a writable open cannot work there: a clear error, not a traceback
    with Gallery(db, "model-a", DIM, read_only=True) as ro:
        assert ro.immutable and ro.counts() == (3, 6)
        assert ro.search(unit_rows(1, DIM), k=3)[0][0].name in {"p0", "p1", "p2"}
    from facelab.cli import main

    assert main(["gallery", "list", str(db)]) == 0 and "3 identities, 6 images" in capsys.readouterr().out
    assert main(["gallery", "check", str(db)]) == 0


# -- foreign files --------------------------------------------------------------------------------------------------
def test_refuses_other_sqlite_files_and_empty_files_without_touching_them(tmp_path: Path) -> None:
    other = tmp_path / "places.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE moz_places (id INTEGER PRIMARY KEY, url TEXT)")
    con.execute("INSERT INTO moz_places (url) VALUES ('https://example.org')")
    con.commit()
    con.close()
    before = digest(other)
    with pytest.raises(FacelabError, match=r"not a facelab gallery .*tables: moz_places.*refusing to add tables"):
        Gallery(other, "model-a", DIM)
    with pytest.raises(FacelabError, match="not a facelab gallery"):
        Gallery(other, read_only=True)
    assert digest(other) == before
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(FacelabError, match="is an empty file, not a facelab gallery"):
        Gallery(empty, "model-a", DIM)
    assert empty.stat().st_size == 0
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(FacelabError, match="is not a file"):
        Gallery(tmp_path / "dir.db", "model-a", DIM)


def test_a_version_1_gallery_is_read_and_upgraded_in_place(tmp_path: Path) -> None:
    db = tmp_path / "v1.db"
    con = sqlite3.connect(db)
    con.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE identities (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, created REAL NOT NULL);
        CREATE TABLE images (id INTEGER PRIMARY KEY, identity_id INTEGER NOT NULL REFERENCES identities(id)
            ON DELETE CASCADE, source TEXT NOT NULL, created REAL NOT NULL);
        CREATE TABLE embeddings (image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
            vector BLOB NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1'), ('model_fingerprint', 'model-a'), ('embedding_dim', '8');
        INSERT INTO identities VALUES (1, 'old', 0);
        INSERT INTO images VALUES (1, 1, 'old.jpg', 0);
    """)
    con.execute("INSERT INTO embeddings VALUES (1, ?)", (unit_rows(1, DIM)[0].tobytes(),))
    con.commit()
    con.close()
    assert Gallery(db, read_only=True).counts() == (1, 1)  # read as it is
    g = Gallery(db, "model-a", DIM)
    result = g.enroll("old", [("again.jpg", unit_rows(2, DIM)[1], "h")])
    assert (result.added, result.images) == (1, 2)
    g.close()
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "2"


# -- duplicates, names, races -----------------------------------------------------------------------------------------
def test_duplicate_images_per_identity_are_skipped_and_reported(tmp_path: Path) -> None:
    g = make(tmp_path / "g.db")
    v = unit_rows(3, DIM, seed=5)
    r = g.enroll("p0", [("copy.jpg", v[0], "hash-0-1"), ("new.jpg", v[1], "fresh"), ("again.jpg", v[2], "fresh")])
    assert (r.added, r.images) == (1, 3)
    assert r.duplicates == [("copy.jpg", "p0/1.jpg"), ("again.jpg", "new.jpg")]
    r = g.enroll("p1", [("shared.jpg", v[0], "hash-0-1")])  # the same photo under another identity is allowed
    assert r.added == 1 and r.duplicates == []
    r = g.enroll("p0", [("copy.jpg", v[0], "hash-0-0")])  # everything a duplicate: nothing stored, no error
    assert (r.added, r.images) == (0, 3)
    assert g.counts() == (3, 8) and g.integrity_errors() == []


@pytest.mark.parametrize(("raw", "stored"), [
    ("Ren\u0065\u0301e", "Ren\u00e9e"),  # decomposed e + combining acute -> NFC
    ("  Ann   Lee\u00a0 ", "Ann Lee"),  # whitespace runs (no-break space included) collapse
    ("\u0645\u062d\u0645\u062f\u200c\u0631\u0636\u0627", "\u0645\u062d\u0645\u062f\u200c\u0631\u0636\u0627"),  # ZWNJ
    ("a/b?c#d%e", "a/b?c#d%e"),
])
def test_names_are_normalised(raw: str, stored: str) -> None:
    assert check_name(raw) == stored


@pytest.mark.parametrize("bad", ["", "   ", ".", "..", "x" * 129, "tab\there", "nul\x00", "bell\x07",
                                 "rtl\u202eevil", "zero\u200bwidth", "bom\ufeff", "line\u2028sep", "priv\ue000"])
def test_bad_names_are_refused_and_nothing_is_stored(tmp_path: Path, bad: str) -> None:
    g = make(tmp_path / "g.db")
    with pytest.raises(FacelabError, match="identity name"):
        g.enroll(bad, [("a.jpg", unit_rows(1, DIM)[0])])
    assert g.counts() == (3, 6)


def test_equal_names_after_normalisation_are_one_identity_and_any_name_is_removable(tmp_path: Path) -> None:
    g = make(tmp_path / "g.db")
    g.enroll("Ren\u0065\u0301e", [("a.jpg", unit_rows(1, DIM)[0])])
    assert g.enroll("Ren\u00e9e ", [("b.jpg", unit_rows(2, DIM)[1])]).images == 2
    assert g.remove("Ren\u0065\u0301e") == 2
    con = sqlite3.connect(g.path)  # a name stored by an older version, control character and all
    con.execute("INSERT INTO identities (name, created) VALUES ('legacy\x07name', 0)")
    con.commit()
    con.close()
    assert g.remove("legacy\x07name") == 0
    with pytest.raises(UnknownIdentity):
        g.remove("legacy\x07name")


def test_concurrent_enrolls_and_removals_give_consistent_answers(tmp_path: Path) -> None:
    g = Gallery(tmp_path / "g.db", "model-a", DIM)
    x = unit_rows(200, DIM, seed=3)
    answers: list[tuple[str, int, int]] = []
    errors: list[BaseException] = []

    def enroller(t: int) -> None:
        for i in range(10):
            try:
                r = g.enroll("shared", [(f"{t}-{i}.jpg", x[t * 10 + i], f"{t}-{i}")])
                answers.append(("enroll", r.added, r.images))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

    def remover() -> None:
        for _ in range(10):
            try:
                answers.append(("remove", g.remove("shared"), -1))
            except UnknownIdentity:
                answers.append(("remove", 0, -1))
            except BaseException as exc:  # pragma: no cover
                errors.append(exc)

    threads = [threading.Thread(target=enroller, args=(t,)) for t in range(4)] + [threading.Thread(target=remover)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    enrolled = [a for a in answers if a[0] == "enroll"]
    assert len(enrolled) == 40 and all(added == 1 and images >= 1 for _, added, images in enrolled)
    removed = sum(n for kind, n, _ in answers if kind == "remove")
    left = {i.name: i.images for i in g.identities()}.get("shared", 0)
    assert removed + left == 40  # every image stored was either removed or is still there, once
    assert g.integrity_errors() == []


# -- tampering ------------------------------------------------------------------------------------------------------
def _tamper(db: Path, sql: str, *params: object) -> None:
    con = sqlite3.connect(db)
    con.execute(sql, params)
    con.commit()
    con.close()


@pytest.mark.parametrize(("sql", "match"), [
    ("UPDATE meta SET value = 'abc' WHERE key = 'embedding_dim'", "embedding_dim 'abc'"),
    ("UPDATE meta SET value = '0' WHERE key = 'embedding_dim'", "embedding_dim '0'"),
    ("DELETE FROM meta WHERE key = 'model_fingerprint'", "model_fingerprint ''"),
    ("UPDATE meta SET value = '99' WHERE key = 'schema_version'", "schema '99' is not supported"),
])
def test_tampered_metadata_is_a_clear_error(tmp_path: Path, sql: str, match: str) -> None:
    make(tmp_path / "g.db").close()
    _tamper(tmp_path / "g.db", sql)
    with pytest.raises(FacelabError, match=match):
        Gallery(tmp_path / "g.db", read_only=True)


@pytest.mark.parametrize(("vector", "problem"), [
    (np.full(DIM, np.nan, np.float32).tobytes(), "not finite"),
    ((2 * unit_rows(1, DIM)[0]).tobytes(), "not unit length"),
    (b"\x00" * 12, "not 8 float32 values"),
])
def test_tampered_embeddings_are_clear_errors_and_check_lists_them(tmp_path: Path, vector: bytes,
                                                                   problem: str) -> None:
    db = tmp_path / "g.db"
    make(db).close()
    _tamper(db, "UPDATE embeddings SET vector = ? WHERE image_id = 2", vector)
    g = Gallery(db, read_only=True)
    with pytest.raises(GalleryCorrupt, match=rf"image 2 is {problem}|image 2 is not"):
        g.search(unit_rows(1, DIM), k=1)
    problems = g.integrity_errors()
    assert len(problems) == 1 and ("image 2" in problems[0] or "without a valid embedding" in problems[0])
