"""A persistent gallery of enrolled identities in SQLite, with 1:N search through a pluggable index.

Why SQLite: one file, transactions, and crash safety for free. Every enrollment or removal is one transaction, so a
process killed mid-enroll leaves the gallery exactly as it was before (SQLite rolls the journal back on next open).
The gallery records the fingerprint of the model whose embeddings it stores; opening it with another model is refused,
because scores between embeddings of different models are meaningless.

Concurrency. The file is in WAL mode. A :class:`Gallery` holds two connections: reads (search, list, counts) use
one, writes the other, each behind its own lock, so a read never waits behind a write -- this process's or another
process's (WAL readers see the last committed state while a writer holds the lock). A write that cannot get the
lock within ``busy_timeout`` seconds is :class:`GalleryBusy` (HTTP 503 with Retry-After), never a hang.
``read_only=True`` opens the file without any write access (``mode=ro``); on read-only media, where SQLite cannot
create its ``-shm`` file beside a WAL database, it falls back to ``immutable=1``.

Safety. A file that is not a facelab gallery (another application's SQLite database, a 0-byte file) is refused
before anything is written to it. Metadata and stored embeddings are validated when read: a tampered row is a
:class:`GalleryCorrupt` error naming it (``facelab gallery check`` lists them all). Identity names are normalised
(Unicode NFC, whitespace collapsed) and refused when they hold control or invisible characters
(:func:`check_name`). An image whose bytes (SHA-256) are already enrolled for that identity is skipped and reported,
so retrying an enroll never stores a photo twice.

Search runs on an in-memory index built from all stored embeddings and rebuilt lazily after any write (this
process's or another's, detected with ``PRAGMA data_version``). Indexes are registered by name: ``exact`` (a torch
matrix product, the default) and ``faiss`` (optional extra; flat inner product, or IVF with ``nlist`` for very large
galleries).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from facelab.errors import FacelabError
from facelab.registry import Registry
from facelab.utils.extras import require

log = logging.getLogger(__name__)

#: 2 added ``images.sha256`` (duplicate detection) and the application id; version-1 galleries are upgraded in place
#: on the first writable open
SCHEMA_VERSION = 2
READABLE_SCHEMAS = ("1", "2")
#: ``PRAGMA application_id`` of a facelab gallery ("FCLG"), how a gallery is told from other SQLite files
APPLICATION_ID = 0x46434C47
TABLES = ("meta", "identities", "images", "embeddings")
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS identities (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY,
    identity_id INTEGER NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
    source TEXT NOT NULL,
    created REAL NOT NULL,
    sha256 TEXT
);
CREATE TABLE IF NOT EXISTS embeddings (
    image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS images_by_identity ON images(identity_id);
"""
HASH_INDEX = "CREATE INDEX IF NOT EXISTS images_by_hash ON images(identity_id, sha256)"
MAX_NAME = 128
MAX_SOURCE = 1024
#: default seconds a write waits for another writer's lock before :class:`GalleryBusy`
DEFAULT_BUSY_TIMEOUT = 10.0
#: stored embeddings are unit length; a norm further from 1 than this is a damaged row
NORM_TOLERANCE = 1e-3
#: Unicode categories refused in names: controls, format (invisible) characters, surrogates, private use,
#: unassigned, line and paragraph separators
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
#: zero-width (non-)joiner: format characters that spell names in Persian and Indic scripts, so they are kept
_ALLOWED_FORMAT = frozenset({"\u200c", "\u200d"})
_SPACES = re.compile(r"\s+")


# -- search indexes -------------------------------------------------------------------------------------------------
class SearchIndex(Protocol):
    """Nearest neighbours by inner product over unit vectors (= cosine similarity)."""

    def add(self, vectors: np.ndarray) -> None: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores (Q, k) descending, row indices (Q, k)) for float32 (Q, D) queries."""
        ...


#: name -> ``fn(dim, **options) -> SearchIndex``
SEARCH_INDEXES: Registry[SearchIndex] = Registry("search index")


@SEARCH_INDEXES.register("exact")
class ExactIndex:
    """Brute force with one matrix product and ``torch.topk``: exact, no extra dependency, fast to ~1M rows."""

    def __init__(self, dim: int, chunk: int = 262_144) -> None:
        self.dim, self.chunk = dim, chunk
        self.matrix = torch.zeros((0, dim))

    def add(self, vectors: np.ndarray) -> None:
        new = torch.from_numpy(np.ascontiguousarray(vectors, np.float32))
        self.matrix = torch.cat([self.matrix, new]) if len(self.matrix) else new

    @torch.inference_mode()
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = torch.from_numpy(np.ascontiguousarray(queries, np.float32))
        k = min(k, len(self.matrix))
        best_s = torch.full((len(q), 0), -math.inf)
        best_i = torch.zeros((len(q), 0), dtype=torch.long)
        for start in range(0, len(self.matrix), self.chunk):  # bounded memory: never a (Q, N) matrix for huge N
            s, i = torch.topk(q @ self.matrix[start:start + self.chunk].T, min(k, len(self.matrix) - start), dim=1)
            s, order = torch.topk(torch.cat([best_s, s], 1), min(k, best_s.shape[1] + s.shape[1]), dim=1)
            best_i = torch.gather(torch.cat([best_i, i + start], 1), 1, order)
            best_s = s
        return best_s.numpy(), best_i.numpy()


@SEARCH_INDEXES.register("faiss")
class FaissIndex:
    """FAISS inner-product index: ``nlist=0`` is exact (flat); ``nlist>0`` is IVF, approximate but sub-linear,
    probing ``nprobe`` lists per query. Needs the ``faiss`` extra."""

    def __init__(self, dim: int, nlist: int = 0, nprobe: int = 16) -> None:
        self.faiss = require("faiss", "faiss")
        self.dim, self.nlist, self.nprobe = dim, nlist, nprobe
        self.index: Any = self.faiss.IndexFlatIP(dim)

    def add(self, vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, np.float32)
        if self.nlist and self.index.ntotal == 0 and len(vectors) >= self.nlist:  # IVF trains on its first batch
            quantizer = self.faiss.IndexFlatIP(self.dim)
            self.index = self.faiss.IndexIVFFlat(quantizer, self.dim, self.nlist, self.faiss.METRIC_INNER_PRODUCT)
            self.index.train(vectors)
            self.index.nprobe = self.nprobe
            self._quantizer = quantizer  # the IVF index borrows it: keep it alive as long as the index
        self.index.add(vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.index.ntotal)
        scores, rows = self.index.search(np.ascontiguousarray(queries, np.float32), k)
        return scores, rows


# -- gallery --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Match:
    name: str
    score: float


@dataclass(frozen=True)
class Identification:
    """Top-k identities at or above the threshold (best first); ``identity`` is None ("unknown") when none is."""

    matches: list[Match]
    nearest: Match | None
    threshold: float

    @property
    def identity(self) -> str | None:
        return self.matches[0].name if self.matches else None

    def to_dict(self) -> dict[str, Any]:
        return {"identity": self.identity or "unknown", "known": bool(self.matches), "threshold": self.threshold,
                "matches": [m.__dict__ for m in self.matches],
                "nearest": self.nearest.__dict__ if self.nearest else None}


@dataclass(frozen=True)
class IdentityInfo:
    name: str
    images: int
    created: float


@dataclass(frozen=True)
class EnrollResult:
    """What one :meth:`Gallery.enroll` did: ``added`` images stored; ``duplicates`` (source, already-enrolled
    source) skipped because the identity already had those exact bytes; ``images`` the identity's total afterwards
    (read in the same transaction, so a concurrent removal cannot make it wrong)."""

    name: str
    added: int
    images: int
    duplicates: list[tuple[str, str]] = field(default_factory=list)


class UnknownIdentity(FacelabError):
    """No identity of that name in the gallery."""


class GalleryBusy(FacelabError):
    """Another connection holds the gallery's write lock longer than the busy timeout; retrying later works."""


class GalleryCorrupt(FacelabError):
    """A stored row (metadata or embedding) is not what facelab wrote: tampered with or damaged."""


class GalleryReadOnly(FacelabError):
    """A write to a gallery opened read-only."""


def check_name(name: str) -> str:
    """An identity name as stored: Unicode NFC, runs of whitespace collapsed to one space, trimmed.

    Raises:
        FacelabError: empty, longer than :data:`MAX_NAME` characters, ``.`` or ``..``, or holding a control or
            invisible character (categories Cc, Cf, Cs, Co, Cn, Zl, Zp; the zero-width joiner and non-joiner, which
            spell names in several scripts, are allowed).
    """
    if not isinstance(name, str):
        raise FacelabError(f"identity name must be text, got {type(name).__name__}")
    bad = next((c for c in name if c not in _ALLOWED_FORMAT and unicodedata.category(c) in _REFUSED_CATEGORIES),
               None)
    if bad is not None:
        raise FacelabError(f"identity name {_preview(name)} holds the control or invisible character U+{ord(bad):04X} "
                           f"({unicodedata.name(bad, 'unnamed')})")
    value = _SPACES.sub(" ", unicodedata.normalize("NFC", name)).strip()
    if not value or len(value) > MAX_NAME or value in (".", ".."):
        raise FacelabError(f"identity name must be 1-{MAX_NAME} printable characters (not '.' or '..'), got "
                           f"{_preview(value)} ({len(value)} characters)")
    return value


def _preview(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def content_hash(data: bytes) -> str:
    """SHA-256 hex of an image's encoded bytes: the duplicate key of :meth:`Gallery.enroll`."""
    return hashlib.sha256(data).hexdigest()


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


@dataclass
class Gallery:
    """One SQLite file. Open with the fingerprint + embedding size of the model that will use it (``None`` for
    model-free operations: list, check, remove). Thread-safe: a read connection and a write connection, each behind
    its own lock (see the module docstring for what waits on what).

    Raises (on open):
        FacelabError: a new gallery without a model, a missing file with ``create=False``, a 0-byte file, a file
            that is not SQLite or is another application's SQLite database, another model's gallery.
        GalleryCorrupt: the gallery's metadata was altered.
        GalleryBusy: the gallery must be upgraded or created but another process holds the write lock.
    """

    path: Path
    fingerprint: str | None = None
    dim: int | None = None
    index: str = "exact"
    index_options: dict[str, Any] = field(default_factory=dict)
    create: bool = True
    read_only: bool = False
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        SEARCH_INDEXES.get(self.index)  # unknown index name -> error now, not at the first search
        if self.busy_timeout < 0 or not math.isfinite(self.busy_timeout):
            raise FacelabError(f"busy timeout must be a finite number of seconds >= 0, got {self.busy_timeout}")
        exists = self.path.is_file()
        if not exists:
            if self.path.exists():
                raise FacelabError(f"{self.path} is not a file")
            if not self.create or self.read_only:
                raise FacelabError(f"gallery not found: {self.path}")
            if self.fingerprint is None or self.dim is None:  # checked before SQLite creates an empty file
                raise FacelabError(f"{self.path} is a new gallery: give the model bundle that will fill it")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif self.path.stat().st_size == 0:
            raise FacelabError(f"{self.path} is an empty file, not a facelab gallery: delete it or choose another "
                               f"path (refusing to turn it into one)")
        self._rlock = threading.RLock()
        self._wlock = threading.RLock()
        self._wdb: sqlite3.Connection | None = None
        self.immutable = False
        try:
            if exists:
                self._rdb = self._open_reader()
                self._check_application()
            if not self.read_only:
                self._wdb = self._connect(str(self.path), uri=False)
                self._wdb.execute("PRAGMA foreign_keys = ON")
                if self._wdb.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    self._wdb.execute("PRAGMA journal_mode = WAL")  # readers never block on a writer
                self._wdb.execute("PRAGMA synchronous = FULL")
                if not exists:
                    self._rdb = self._open_reader()
            self._check_model()
        except sqlite3.OperationalError as exc:
            self._close_all()
            if _is_busy(exc):
                raise GalleryBusy(f"{self.path} is locked by another process (waited {self.busy_timeout:g} s); "
                                  f"try again") from None
            raise FacelabError(f"{self.path} cannot be opened as a gallery: {exc}") from None
        except sqlite3.DatabaseError as exc:
            self._close_all()
            raise FacelabError(f"{self.path} is not a usable gallery database: {exc}") from None
        except BaseException:
            self._close_all()
            raise
        self._index: SearchIndex | None = None
        self._labels = np.zeros(0, np.int64)
        self._names: dict[int, str] = {}
        self._per_identity = 0
        self._seen_version: int | None = None

    # -- connections ----------------------------------------------------------------------------------------------
    def _connect(self, target: str, uri: bool) -> sqlite3.Connection:
        return sqlite3.connect(target, uri=uri, isolation_level=None, check_same_thread=False,
                               timeout=self.busy_timeout)

    def _open_reader(self) -> sqlite3.Connection:
        """The read connection: read-only at the SQLite level even for a writable gallery. On read-only media a WAL
        gallery cannot get its shared-memory file; it is then opened as immutable (no locking, no changes seen)."""
        base = self.path.resolve().as_uri() + "?mode=ro"
        db = self._connect(base, uri=True)
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.OperationalError as exc:
            db.close()
            if not self.read_only or _is_busy(exc):
                raise
        db = self._connect(base + "&immutable=1", uri=True)
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        self.immutable = True
        log.warning("%s opened as immutable (read-only media?): changes by other processes are not seen", self.path)
        return db

    def _check_application(self) -> None:
        """Refuse any SQLite file that is not a facelab gallery before a table is added to it."""
        (app_id,) = self._rdb.execute("PRAGMA application_id").fetchone()
        if app_id == APPLICATION_ID:
            return
        tables = {r[0] for r in self._rdb.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        legacy = app_id == 0 and set(TABLES) <= tables and self._rdb.execute(
            "SELECT 1 FROM meta WHERE key = 'schema_version'").fetchone() is not None
        if legacy:  # a version-1 facelab gallery (written before the application id)
            return
        shown = ", ".join(sorted(tables)[:6]) or "none"
        raise FacelabError(f"{self.path} is an SQLite database but not a facelab gallery (application id {app_id}, "
                           f"tables: {shown}): refusing to add tables to it; choose another path")

    def _meta(self, db: sqlite3.Connection) -> dict[str, str]:
        return {str(k): str(v) for k, v in db.execute("SELECT key, value FROM meta").fetchall()}

    def _check_model(self) -> None:
        reader = getattr(self, "_rdb", None)
        meta = self._meta(reader) if reader is not None and self._has_meta(reader) else {}
        if not meta or meta.get("schema_version") != str(SCHEMA_VERSION):
            if self._wdb is None:
                if not meta:
                    raise FacelabError(f"{self.path} is not a facelab gallery (no metadata)")
            else:
                with self.transaction() as db:
                    self._create_or_upgrade(db)
                meta = self._meta(self._rdb)
        version = meta.get("schema_version")
        if version not in READABLE_SCHEMAS:
            raise FacelabError(f"{self.path}: gallery schema {version!r} is not supported (this facelab reads "
                               f"{', '.join(READABLE_SCHEMAS)})")
        stored = meta.get("model_fingerprint", "")
        if not stored or len(stored) > 256 or not stored.isprintable():
            raise GalleryCorrupt(f"{self.path}: gallery metadata is damaged: model_fingerprint {_preview(stored)}")
        dim_text = meta.get("embedding_dim", "")
        if not (dim_text.isascii() and dim_text.isdigit() and 0 < int(dim_text) <= 65_536):
            raise GalleryCorrupt(f"{self.path}: gallery metadata is damaged: embedding_dim {_preview(dim_text)} is "
                                 f"not a size between 1 and 65536")
        if self.fingerprint is not None and self.fingerprint != stored:
            raise FacelabError(f"{self.path} was built with model {stored[:12]}, not with this bundle "
                               f"({self.fingerprint[:12]}): use the matching bundle or enroll into a new gallery")
        if self.dim is not None and self.dim != int(dim_text):
            raise FacelabError(f"{self.path} stores {dim_text}-d embeddings, this model makes {self.dim}-d ones")
        self.fingerprint, self.dim = stored, int(dim_text)

    @staticmethod
    def _has_meta(db: sqlite3.Connection) -> bool:
        return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is not None

    def _create_or_upgrade(self, db: sqlite3.Connection) -> None:
        """Inside the write transaction: create a new gallery, or upgrade a version-1 one in place."""
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and not set(TABLES) <= tables:
            raise FacelabError(f"{self.path} is an SQLite database but not a facelab gallery: refusing to add "
                               f"tables to it")
        for stmt in filter(str.strip, SCHEMA.split(";")):
            db.execute(stmt)
        meta = self._meta(db)
        if not meta:
            if self.fingerprint is None or self.dim is None:
                raise FacelabError(f"{self.path} is a new gallery: give the model bundle that will fill it")
            db.executemany("INSERT INTO meta VALUES (?, ?)", [
                ("schema_version", str(SCHEMA_VERSION)), ("model_fingerprint", self.fingerprint),
                ("embedding_dim", str(self.dim)), ("created", f"{time.time():.3f}")])
        elif meta.get("schema_version") == "1":
            columns = {r[1] for r in db.execute("PRAGMA table_info(images)")}
            if "sha256" not in columns:
                db.execute("ALTER TABLE images ADD COLUMN sha256 TEXT")
            db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
        db.execute(HASH_INDEX)
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` .. ``COMMIT`` on the write connection; any exception (or a killed process) rolls
        everything back.

        Raises:
            GalleryReadOnly: the gallery was opened read-only.
            GalleryBusy: another connection kept the write lock for longer than ``busy_timeout`` seconds.
        """
        if self._wdb is None:
            raise GalleryReadOnly(f"{self.path} is open read-only: no enroll or removal")
        if not self._wlock.acquire(timeout=max(self.busy_timeout, 0.001)):
            raise GalleryBusy(f"{self.path}: another write in this process took longer than {self.busy_timeout:g} s")
        try:
            try:
                self._wdb.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if _is_busy(exc):
                    raise GalleryBusy(f"{self.path} is locked by another writer (waited {self.busy_timeout:g} s); "
                                      f"try again") from None
                raise
            try:
                yield self._wdb
            except BaseException:
                self._wdb.execute("ROLLBACK")
                raise
            try:
                self._wdb.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                self._wdb.execute("ROLLBACK")
                if _is_busy(exc):
                    raise GalleryBusy(f"{self.path} is busy; nothing was stored, try again") from None
                raise
        finally:
            self._wlock.release()

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The read connection, inside one read transaction (a consistent snapshot across several SELECTs)."""
        with self._rlock:
            self._rdb.execute("BEGIN")
            try:
                yield self._rdb
            finally:
                self._rdb.execute("COMMIT")

    def _close_all(self) -> None:
        for name in ("_rdb", "_wdb"):
            db = getattr(self, name, None)
            if db is not None:
                db.close()

    def close(self) -> None:
        with self._wlock, self._rlock:
            self._close_all()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes ---------------------------------------------------------------------------------------------------
    def enroll(self, name: str, items: Iterable[tuple[str, np.ndarray] | tuple[str, np.ndarray, str | None]]
               ) -> EnrollResult:
        """Add (source, unit embedding[, sha256 of the image bytes]) items to ``name`` (created if new; normalised
        by :func:`check_name`) in one transaction. An item whose hash the identity already holds (or that repeats
        within ``items``) is skipped and listed in :attr:`EnrollResult.duplicates`. ``items`` may be lazy: it is
        consumed inside the transaction, so a failure half-way stores nothing.

        Raises:
            FacelabError: a bad name, no items, an embedding of the wrong size or with non-finite values.
            GalleryBusy / GalleryReadOnly: see :meth:`transaction`.
        """
        name = check_name(name)
        now = time.time()
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO identities (name, created) VALUES (?, ?)", (name, now))
            (ident,) = db.execute("SELECT id FROM identities WHERE name = ?", (name,)).fetchone()
            seen = dict(db.execute("SELECT sha256, source FROM images WHERE identity_id = ? AND sha256 IS NOT NULL",
                                   (ident,)).fetchall())
            added, given = 0, 0
            duplicates: list[tuple[str, str]] = []
            for item in items:
                source, vector = str(item[0])[:MAX_SOURCE], item[1]
                digest = item[2] if len(item) > 2 else None  # type: ignore[misc]
                given += 1
                if digest is not None and digest in seen:
                    duplicates.append((source, seen[digest]))
                    continue
                v = np.asarray(vector, np.float32).reshape(-1)
                if len(v) != self.dim or not np.isfinite(v).all():
                    raise FacelabError(f"embedding of {source} has {len(v)} values (or non-finite ones); "
                                       f"this gallery stores {self.dim}")
                cur = db.execute("INSERT INTO images (identity_id, source, created, sha256) VALUES (?, ?, ?, ?)",
                                 (ident, source, now, digest))
                db.execute("INSERT INTO embeddings VALUES (?, ?)", (cur.lastrowid, v.tobytes()))
                if digest is not None:
                    seen[digest] = source
                added += 1
            if given == 0:
                raise FacelabError(f"nothing to enroll for {name!r}: no images given")
            (total,) = db.execute("SELECT COUNT(*) FROM images WHERE identity_id = ?", (ident,)).fetchone()
        return EnrollResult(name, added, int(total), duplicates)

    def remove(self, name: str) -> int:
        """Delete an identity with its images and embeddings; returns the number of images removed. ``name`` is
        looked up as :func:`check_name` stores it, then exactly as given (so a name stored by an older version,
        whatever it holds, can still be removed).

        Raises:
            UnknownIdentity: no such identity. GalleryBusy / GalleryReadOnly: see :meth:`transaction`.
        """
        candidates = [name]
        with suppress(FacelabError):
            candidates.insert(0, check_name(name))
        with self.transaction() as db:
            row = next((r for c in candidates
                        if (r := db.execute("SELECT id FROM identities WHERE name = ?", (c,)).fetchone())), None)
            if row is None:
                raise UnknownIdentity(f"no identity {_preview(name)} in {self.path.name}")
            (n,) = db.execute("SELECT COUNT(*) FROM images WHERE identity_id = ?", row).fetchone()
            db.execute("DELETE FROM identities WHERE id = ?", row)
        return int(n)

    # -- reads ----------------------------------------------------------------------------------------------------
    def identities(self) -> list[IdentityInfo]:
        with self._reading() as db:
            rows = db.execute(
                "SELECT i.name, COUNT(m.id), i.created FROM identities i LEFT JOIN images m ON m.identity_id = i.id "
                "GROUP BY i.id ORDER BY i.name").fetchall()
        return [IdentityInfo(str(n), int(c), float(t)) for n, c, t in rows]

    def counts(self) -> tuple[int, int]:
        with self._reading() as db:
            (ids,) = db.execute("SELECT COUNT(*) FROM identities").fetchone()
            (imgs,) = db.execute("SELECT COUNT(*) FROM images").fetchone()
        return int(ids), int(imgs)

    def embeddings_of(self, name: str) -> np.ndarray:
        """(n, D) float32 stored embeddings of one identity (looked up as :meth:`remove` does).

        Raises:
            UnknownIdentity: not enrolled. GalleryCorrupt: a stored row is not a finite unit vector of the right size.
        """
        candidates = [name]
        with suppress(FacelabError):
            candidates.insert(0, check_name(name))
        dim = self.dim or 0
        with self._reading() as db:
            row = next((r for c in candidates
                        if (r := db.execute("SELECT id FROM identities WHERE name = ?", (c,)).fetchone())), None)
            if row is None:
                raise UnknownIdentity(f"no identity {_preview(name)} in {self.path.name}")
            blobs = db.execute("SELECT m.id, e.vector FROM images m JOIN embeddings e ON e.image_id = m.id "
                               "WHERE m.identity_id = ? ORDER BY m.id", row).fetchall()
        if not blobs:
            raise UnknownIdentity(f"identity {_preview(name)} has no enrolled images in {self.path.name}")
        bad = next((i for i, b in blobs if not isinstance(b, bytes) or len(b) != 4 * dim), None)
        if bad is not None:
            raise GalleryCorrupt(f"{self.path}: the embedding of image {bad} is not {dim} float32 values (damaged or "
                                 f"edited); `facelab gallery check` lists every problem")
        vectors = np.frombuffer(bytearray(b"".join(b for _, b in blobs)), np.float32).reshape(len(blobs), dim)
        broken = _bad_rows(vectors)
        if len(broken):
            raise GalleryCorrupt(f"{self.path}: the embedding of image {blobs[broken[0]][0]} is "
                                 f"{_describe_bad(vectors[broken[0]])}; `facelab gallery check` lists every problem")
        return vectors

    def integrity_errors(self) -> list[str]:
        """SQLite's integrity check plus ours: every image has an embedding of the right size, finite and of unit
        length, and every embedding belongs to an image."""
        dim = self.dim or 0
        with self._reading() as db:
            problems = [r[0] for r in db.execute("PRAGMA integrity_check").fetchall() if r[0] != "ok"]
            problems += [f"foreign key violation in {r[0]}" for r in db.execute("PRAGMA foreign_key_check")]
            (orphans,) = db.execute(
                "SELECT COUNT(*) FROM images m LEFT JOIN embeddings e ON e.image_id = m.id "
                "WHERE e.image_id IS NULL OR typeof(e.vector) != 'blob' OR length(e.vector) != ?",
                (4 * dim,)).fetchone()
            (strays,) = db.execute("SELECT COUNT(*) FROM embeddings e LEFT JOIN images m ON m.id = e.image_id "
                                   "WHERE m.id IS NULL").fetchone()
            rows = db.execute("SELECT m.id, i.name, e.vector FROM images m JOIN embeddings e ON e.image_id = m.id "
                              "JOIN identities i ON i.id = m.identity_id WHERE typeof(e.vector) = 'blob' AND "
                              "length(e.vector) = ?", (4 * dim,)).fetchall()
        if orphans:
            problems.append(f"{orphans} image(s) without a valid embedding")
        if strays:
            problems.append(f"{strays} embedding(s) without an image")
        if rows:
            vectors = np.frombuffer(b"".join(r[2] for r in rows), np.float32).reshape(len(rows), dim)
            for i in _bad_rows(vectors):
                problems.append(f"embedding of image {rows[i][0]} ({_preview(rows[i][1])}) is "
                                f"{_describe_bad(vectors[i])}")
        return problems

    def _refresh(self) -> SearchIndex:
        """(Re)build the index if anything was committed since the last build, by us or another process."""
        (data_version,) = self._rdb.execute("PRAGMA data_version").fetchone()
        if self._index is not None and int(data_version) == self._seen_version:
            return self._index
        dim = self.dim or 0
        with self._reading() as db:
            rows = db.execute("SELECT m.id, m.identity_id, e.vector FROM images m JOIN embeddings e "
                              "ON e.image_id = m.id ORDER BY m.id").fetchall()
            names = {int(k): str(v) for k, v in db.execute("SELECT id, name FROM identities").fetchall()}
        bad = next((r for r in rows if not isinstance(r[2], bytes) or len(r[2]) != 4 * dim), None)
        if bad is not None:
            raise GalleryCorrupt(f"{self.path}: the embedding of image {bad[0]} is not {dim} float32 values "
                                 f"(damaged or edited); `facelab gallery check` lists every problem")
        vectors = np.frombuffer(bytearray(b"".join(r[2] for r in rows)), np.float32).reshape(len(rows), dim)
        broken = _bad_rows(vectors)
        if len(broken):
            raise GalleryCorrupt(f"{self.path}: the embedding of image {rows[broken[0]][0]} is "
                                 f"{_describe_bad(vectors[broken[0]])} ({len(broken)} such row(s)); `facelab gallery "
                                 f"check` lists every problem")
        labels = np.array([r[1] for r in rows], np.int64)
        missing = set(labels.tolist()) - set(names)
        if missing:
            raise GalleryCorrupt(f"{self.path}: {len(missing)} image(s) belong to no identity")
        index = SEARCH_INDEXES.build(self.index, dim=dim, **self.index_options)
        if len(rows):
            index.add(vectors)
        self._labels, self._names = labels, names
        self._per_identity = int(np.bincount(labels).max()) if len(rows) else 0
        self._index, self._seen_version = index, int(data_version)
        return index

    def search(self, queries: np.ndarray, k: int = 5) -> list[list[Match]]:
        """Top-``k`` identities per query by their best-matching image. Searching ``k * (most images of one
        identity)`` images is enough to be sure of ``k`` distinct identities, whatever the index.

        Raises:
            FacelabError: ``k`` < 1 or queries of the wrong size. GalleryCorrupt: a damaged stored embedding.
        """
        if k < 1:
            raise FacelabError(f"k must be >= 1, got {k}")
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        if queries.shape[1] != self.dim:
            raise FacelabError(f"query embeddings have {queries.shape[1]} values; this gallery stores {self.dim}")
        with self._rlock:
            index = self._refresh()
            labels, names, per_identity = self._labels, self._names, self._per_identity
        if not len(labels):
            return [[] for _ in queries]
        scores, rows = index.search(queries, k * per_identity)  # outside the lock: the index is never mutated
        results = []
        for s_row, r_row in zip(scores, rows, strict=True):
            best: dict[int, float] = {}
            for s, r in zip(s_row.tolist(), r_row.tolist(), strict=True):
                if r >= 0 and labels[r] not in best:  # rows come best first; faiss pads with -1
                    best[int(labels[r])] = s
            results.append([Match(names[i], min(1.0, max(-1.0, s))) for i, s in list(best.items())[:k]])
        return results

    def identify(self, query: np.ndarray, threshold: float, k: int = 5) -> Identification:
        (top,) = self.search(np.asarray(query)[None], k)
        return Identification([m for m in top if m.score >= threshold], top[0] if top else None, threshold)


def _bad_rows(vectors: np.ndarray) -> np.ndarray:
    """Indices of rows that are not finite unit vectors."""
    with np.errstate(all="ignore"):
        finite = np.isfinite(vectors).all(axis=1)
        norms = np.linalg.norm(np.where(np.isfinite(vectors), vectors, 0), axis=1)
    return np.nonzero(~finite | (np.abs(norms - 1) > NORM_TOLERANCE))[0]


def _describe_bad(v: np.ndarray) -> str:
    if not np.isfinite(v).all():
        return "not finite (NaN or infinity)"
    return f"not unit length (norm {float(np.linalg.norm(v)):.4g})"
