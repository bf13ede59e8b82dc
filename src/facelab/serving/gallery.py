"""A persistent gallery of enrolled identities in SQLite, with 1:N search through a pluggable index.

Why SQLite: one file, transactions, and crash safety for free. Every enrollment or removal is one transaction, so a
process killed mid-enroll leaves the gallery exactly as it was before (SQLite rolls the journal back on next open).
The gallery records the fingerprint of the model whose embeddings it stores; opening it with another model is refused,
because scores between embeddings of different models are meaningless.

Search runs on an in-memory index built from all stored embeddings and rebuilt lazily after any write (this
process's or another's, detected with ``PRAGMA data_version``). Indexes are registered by name: ``exact`` (a torch
matrix product, the default) and ``faiss`` (optional extra; flat inner product, or IVF with ``nlist`` for very large
galleries).
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from facelab.errors import FacelabError
from facelab.registry import Registry
from facelab.utils.extras import require

SCHEMA_VERSION = 1
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
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS embeddings (
    image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS images_by_identity ON images(identity_id);
"""
MAX_NAME = 128


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


class UnknownIdentity(FacelabError):
    """No identity of that name in the gallery."""


def check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME or any(ord(c) < 32 for c in name):
        raise FacelabError(f"identity name must be 1-{MAX_NAME} printable characters, got {name[:40]!r}")
    return name


@dataclass
class Gallery:
    """One SQLite file. Open with the fingerprint + embedding size of the model that will use it (``None`` for
    model-free operations: list, remove). Thread-safe: one connection guarded by a lock."""

    path: Path
    fingerprint: str | None = None
    dim: int | None = None
    index: str = "exact"
    index_options: dict[str, Any] = field(default_factory=dict)
    create: bool = True

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not self.path.is_file():
            if not self.create:
                raise FacelabError(f"gallery not found: {self.path}")
            if self.fingerprint is None or self.dim is None:  # checked before SQLite creates an empty file
                raise FacelabError(f"{self.path} is a new gallery: give the model bundle that will fill it")
        SEARCH_INDEXES.get(self.index)  # unknown index name -> error now, not at the first search
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._writes = 0  # our own commits: PRAGMA data_version only counts other connections'
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute("PRAGMA journal_mode = WAL")  # readers (the server) never block on a writer
            self._db.execute("PRAGMA synchronous = FULL")
            with self.transaction():
                for stmt in filter(str.strip, SCHEMA.split(";")):
                    self._db.execute(stmt)
                self._check_model()
        except sqlite3.DatabaseError as exc:
            raise FacelabError(f"{self.path} is not a usable gallery database: {exc}") from None
        self._index: SearchIndex | None = None
        self._labels = np.zeros(0, np.int64)
        self._names: dict[int, str] = {}
        self._per_identity = 0
        self._seen_version: tuple[int, int] | None = None

    def _meta(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT key, value FROM meta").fetchall())

    def _check_model(self) -> None:
        meta = self._meta()
        if not meta:
            if self.fingerprint is None or self.dim is None:
                raise FacelabError(f"{self.path} is a new gallery: give the model bundle that will fill it")
            self._db.executemany("INSERT INTO meta VALUES (?, ?)", [
                ("schema_version", str(SCHEMA_VERSION)), ("model_fingerprint", self.fingerprint),
                ("embedding_dim", str(self.dim)), ("created", f"{time.time():.3f}")])
            return
        if meta.get("schema_version") != str(SCHEMA_VERSION):
            raise FacelabError(f"{self.path}: gallery schema {meta.get('schema_version')} is not supported")
        stored = meta["model_fingerprint"]
        if self.fingerprint is not None and self.fingerprint != stored:
            raise FacelabError(f"{self.path} was built with model {stored[:12]}, not with this bundle "
                               f"({self.fingerprint[:12]}): use the matching bundle or enroll into a new gallery")
        self.fingerprint, self.dim = stored, int(meta["embedding_dim"])

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` .. ``COMMIT``; any exception (or a killed process) rolls everything back."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self._writes += 1

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes ---------------------------------------------------------------------------------------------------
    def enroll(self, name: str, items: Iterable[tuple[str, np.ndarray]]) -> int:
        """Add (source, unit embedding) pairs to ``name`` (created if new) in one transaction; returns the count.
        ``items`` may be lazy: it is consumed inside the transaction, so a failure half-way stores nothing."""
        name = check_name(name)
        now = time.time()
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO identities (name, created) VALUES (?, ?)", (name, now))
            (ident,) = db.execute("SELECT id FROM identities WHERE name = ?", (name,)).fetchone()
            count = 0
            for source, vector in items:
                v = np.asarray(vector, np.float32).reshape(-1)
                if len(v) != self.dim or not np.isfinite(v).all():
                    raise FacelabError(f"embedding of {source} has {len(v)} values (or non-finite ones); "
                                       f"this gallery stores {self.dim}")
                cur = db.execute("INSERT INTO images (identity_id, source, created) VALUES (?, ?, ?)",
                                 (ident, str(source)[:1024], now))
                db.execute("INSERT INTO embeddings VALUES (?, ?)", (cur.lastrowid, v.tobytes()))
                count += 1
            if count == 0:
                raise FacelabError(f"nothing to enroll for {name!r}: no images given")
        return count

    def remove(self, name: str) -> int:
        """Delete an identity with its images and embeddings; returns the number of images removed."""
        with self.transaction() as db:
            row = db.execute("SELECT id FROM identities WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise UnknownIdentity(f"no identity {name!r} in {self.path.name}")
            (n,) = db.execute("SELECT COUNT(*) FROM images WHERE identity_id = ?", row).fetchone()
            db.execute("DELETE FROM identities WHERE id = ?", row)
        return int(n)

    # -- reads ----------------------------------------------------------------------------------------------------
    def identities(self) -> list[IdentityInfo]:
        with self._lock:
            rows = self._db.execute(
                "SELECT i.name, COUNT(m.id), i.created FROM identities i LEFT JOIN images m ON m.identity_id = i.id "
                "GROUP BY i.id ORDER BY i.name").fetchall()
        return [IdentityInfo(n, int(c), float(t)) for n, c, t in rows]

    def counts(self) -> tuple[int, int]:
        with self._lock:
            (ids,) = self._db.execute("SELECT COUNT(*) FROM identities").fetchone()
            (imgs,) = self._db.execute("SELECT COUNT(*) FROM images").fetchone()
        return int(ids), int(imgs)

    def embeddings_of(self, name: str) -> np.ndarray:
        """(n, D) float32 stored embeddings of one identity; UnknownIdentity if it is not enrolled."""
        with self._lock:
            row = self._db.execute("SELECT id FROM identities WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise UnknownIdentity(f"no identity {name!r} in {self.path.name}")
            blobs = self._db.execute("SELECT e.vector FROM images m JOIN embeddings e ON e.image_id = m.id "
                                     "WHERE m.identity_id = ? ORDER BY m.id", row).fetchall()
        if not blobs:
            raise UnknownIdentity(f"identity {name!r} has no enrolled images in {self.path.name}")
        return np.frombuffer(bytearray(b"".join(b for (b,) in blobs)), np.float32).reshape(len(blobs), self.dim or 0)

    def integrity_errors(self) -> list[str]:
        """SQLite's integrity check plus ours: every image has an embedding of the right size and vice versa."""
        with self._lock:
            problems = [r[0] for r in self._db.execute("PRAGMA integrity_check").fetchall() if r[0] != "ok"]
            problems += [f"foreign key violation in {r[0]}" for r in self._db.execute("PRAGMA foreign_key_check")]
            (orphans,) = self._db.execute(
                "SELECT COUNT(*) FROM images m LEFT JOIN embeddings e ON e.image_id = m.id "
                "WHERE e.image_id IS NULL OR length(e.vector) != ?", (4 * (self.dim or 0),)).fetchone()
        return [*problems, *([f"{orphans} image(s) without a valid embedding"] if orphans else [])]

    def _refresh(self) -> SearchIndex:
        """(Re)build the index if anything was written since the last build, by us or another process."""
        (data_version,) = self._db.execute("PRAGMA data_version").fetchone()
        version = (int(data_version), self._writes)
        if self._index is not None and version == self._seen_version:
            return self._index
        rows = self._db.execute("SELECT m.identity_id, e.vector FROM images m JOIN embeddings e "
                                "ON e.image_id = m.id ORDER BY m.id").fetchall()
        self._names = dict(self._db.execute("SELECT id, name FROM identities").fetchall())
        self._labels = np.array([r[0] for r in rows], np.int64)
        vectors = np.frombuffer(bytearray(b"".join(r[1] for r in rows)), np.float32).reshape(len(rows), self.dim or 0)
        self._per_identity = int(np.bincount(self._labels).max()) if len(rows) else 0
        index = SEARCH_INDEXES.build(self.index, dim=self.dim, **self.index_options)
        if len(rows):
            index.add(vectors)
        self._index, self._seen_version = index, version
        return index

    def search(self, queries: np.ndarray, k: int = 5) -> list[list[Match]]:
        """Top-``k`` identities per query by their best-matching image. Searching ``k * (most images of one
        identity)`` images is enough to be sure of ``k`` distinct identities, whatever the index."""
        if k < 1:
            raise FacelabError(f"k must be >= 1, got {k}")
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        if queries.shape[1] != self.dim:
            raise FacelabError(f"query embeddings have {queries.shape[1]} values; this gallery stores {self.dim}")
        with self._lock:
            index = self._refresh()
            if not len(self._labels):
                return [[] for _ in queries]
            scores, rows = index.search(queries, k * self._per_identity)
            labels, names = self._labels, self._names
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
