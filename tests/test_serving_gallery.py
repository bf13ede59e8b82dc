"""Gallery: transactions (exception and kill -9 mid-enroll), model refusal, top-k + unknown, exact vs FAISS."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from test_serving_support import one_thread, unit_rows  # noqa: F401  (one_thread: autouse)

from facelab.errors import FacelabError
from facelab.serving.gallery import SEARCH_INDEXES, ExactIndex, Gallery, UnknownIdentity

DIM = 16


def filled(path: Path, people: int = 6, per: int = 3, **kwargs: object) -> tuple[Gallery, np.ndarray]:
    """A gallery of ``people`` identities p0..pN with ``per`` random unit embeddings each (rows in that order)."""
    gallery = Gallery(path, "model-a", DIM, **kwargs)  # type: ignore[arg-type]
    x = unit_rows(people * per, DIM)
    for i in range(people):
        gallery.enroll(f"p{i}", [(f"p{i}/{j}.jpg", x[i * per + j]) for j in range(per)])
    return gallery, x


def test_identify_returns_top_k_identities_or_unknown(tmp_path: Path) -> None:
    gallery, x = filled(tmp_path / "g.db")
    query = x[4] + 0.3 * unit_rows(1, DIM, seed=9)[0]  # near p1's second image
    query /= np.linalg.norm(query)
    result = gallery.identify(query, threshold=0.5, k=3)
    assert result.identity == "p1"
    scores = [m.score for m in result.matches]
    assert scores == sorted(scores, reverse=True) and all(s >= 0.5 for s in scores)
    assert len({m.name for m in result.matches}) == len(result.matches) <= 3  # identities, not images
    assert result.matches[0].score == pytest.approx(float(max(x[3:6] @ query)), abs=1e-6)  # best image
    unknown = gallery.identify(query, threshold=0.999, k=3)
    assert unknown.identity is None and unknown.matches == [] and unknown.nearest.name == "p1"
    assert unknown.to_dict()["identity"] == "unknown"
    top5 = gallery.search(query[None], k=5)[0]
    assert len(top5) == 5 and len({m.name for m in top5}) == 5


def test_top_k_is_distinct_identities_even_when_one_has_many_close_images(tmp_path: Path) -> None:
    gallery = Gallery(tmp_path / "g.db", "model-a", DIM)
    q = unit_rows(1, DIM, seed=1)[0]
    near = q + 0.05 * unit_rows(20, DIM, seed=2)
    gallery.enroll("crowd", [(str(i), v / np.linalg.norm(v)) for i, v in enumerate(near)])
    for i, v in enumerate(unit_rows(4, DIM, seed=3)):
        gallery.enroll(f"other{i}", [("x", v)])
    names = [m.name for m in gallery.search(q[None], k=3)[0]]
    assert names[0] == "crowd" and len(set(names)) == 3


def test_an_exception_mid_enroll_stores_nothing(tmp_path: Path) -> None:
    gallery, x = filled(tmp_path / "g.db")
    before = (gallery.counts(), [i.name for i in gallery.identities()])

    def items():
        yield "a.jpg", x[0]
        yield "b.jpg", x[1]
        raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire"):
        gallery.enroll("newcomer", items())
    with pytest.raises(FacelabError, match="this gallery stores 16"):
        gallery.enroll("p0", [("ok.jpg", x[0]), ("bad.jpg", np.ones(5, np.float32))])  # existing identity too
    assert (gallery.counts(), [i.name for i in gallery.identities()]) == before
    assert gallery.integrity_errors() == []


ENROLL_FOREVER = textwrap.dedent("""
    import sys, time, numpy as np
    from pathlib import Path
    from facelab.serving.gallery import Gallery
    gallery = Gallery(sys.argv[1], "model-a", 16)
    def items():
        for i in range(10_000):
            v = np.zeros(16, np.float32); v[i % 16] = 1
            yield f"img{i}.jpg", v
            if i == 50:
                Path(sys.argv[2]).write_text("half-way")
                time.sleep(60)
    gallery.enroll("victim", items())
""")


def test_kill_9_mid_enroll_leaves_the_gallery_consistent(tmp_path: Path) -> None:
    db, marker = tmp_path / "g.db", tmp_path / "marker"
    gallery, _ = filled(db)
    before = gallery.counts()
    gallery.close()
    proc = subprocess.Popen([sys.executable, "-c", ENROLL_FOREVER, str(db), str(marker)])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "enroll subprocess died or hung"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    reopened = Gallery(db, "model-a", DIM)
    assert reopened.counts() == before
    assert "victim" not in [i.name for i in reopened.identities()]
    assert reopened.integrity_errors() == []
    assert reopened.enroll("after", [("a.jpg", unit_rows(1, DIM)[0])]).added == 1  # the write lock was released


def test_a_gallery_of_another_model_is_refused(tmp_path: Path) -> None:
    filled(tmp_path / "g.db")[0].close()
    with pytest.raises(FacelabError, match=r"built with model model-a.*not with this bundle"):
        Gallery(tmp_path / "g.db", "model-b", DIM)
    assert Gallery(tmp_path / "g.db").fingerprint == "model-a"  # model-free open (list/remove) is fine
    with pytest.raises(FacelabError, match="give the model bundle"):
        Gallery(tmp_path / "new.db")
    assert not (tmp_path / "new.db").exists()
    with pytest.raises(FacelabError, match="gallery not found"):
        Gallery(tmp_path / "absent.db", "model-a", DIM, create=False)
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(FacelabError, match="not a usable gallery"):
        Gallery(tmp_path / "junk.db", "model-a", DIM)


def test_exact_and_faiss_give_the_same_results(tmp_path: Path) -> None:
    pytest.importorskip("faiss", reason="faiss-cpu (the faiss extra) is not installed")
    exact, _ = filled(tmp_path / "g.db", people=200, per=4)
    fast = Gallery(tmp_path / "g.db", "model-a", DIM, index="faiss")
    queries = unit_rows(40, DIM, seed=5)
    a, b = exact.search(queries, k=5), fast.search(queries, k=5)
    assert [[m.name for m in r] for r in a] == [[m.name for m in r] for r in b]
    assert np.allclose([[m.score for m in r] for r in a], [[m.score for m in r] for r in b], atol=1e-5)


def test_exact_index_chunks_agree_with_one_pass() -> None:
    x, q = unit_rows(1000, DIM), unit_rows(7, DIM, seed=1)
    whole, chunked = ExactIndex(DIM), ExactIndex(DIM, chunk=37)
    whole.add(x)
    chunked.add(x)
    (s1, i1), (s2, i2) = whole.search(q, 9), chunked.search(q, 9)
    assert np.array_equal(i1, i2) and np.allclose(s1, s2)
    assert np.array_equal(i1[:, 0], np.argmax(q @ x.T, axis=1))


def test_writes_by_another_connection_are_seen_by_search(tmp_path: Path) -> None:
    server, x = filled(tmp_path / "g.db", people=2)
    assert server.search(x[:1], k=5)[0][0].name == "p0"  # index built and cached
    writer = Gallery(tmp_path / "g.db", "model-a", DIM)
    writer.remove("p0")
    writer.enroll("late", [("l.jpg", x[0])])
    assert server.search(x[:1], k=5)[0][0].name == "late"


def test_remove_list_names_and_unknown_index(tmp_path: Path) -> None:
    gallery, _ = filled(tmp_path / "g.db", people=3)
    assert gallery.remove("p1") == 3
    assert [(i.name, i.images) for i in gallery.identities()] == [("p0", 3), ("p2", 3)]
    with pytest.raises(UnknownIdentity, match="no identity 'p1'"):
        gallery.remove("p1")
    with pytest.raises(FacelabError, match="identity name"):
        gallery.enroll("bad\nname", [("a", unit_rows(1, DIM)[0])])
    with pytest.raises(FacelabError, match="nothing to enroll"):
        gallery.enroll("empty", [])
    with pytest.raises(FacelabError, match="unknown search index 'annoy'"):
        Gallery(tmp_path / "g.db", "model-a", DIM, index="annoy")
    assert SEARCH_INDEXES.names() == ["exact", "faiss"]
    empty = Gallery(tmp_path / "e.db", "model-a", DIM)
    result = empty.identify(unit_rows(1, DIM)[0], 0.5)
    assert result.identity is None and result.nearest is None


def test_faiss_ivf_probing_every_list_matches_exact_and_tiny_galleries_stay_flat(tmp_path: Path) -> None:
    pytest.importorskip("faiss", reason="faiss-cpu (the faiss extra) is not installed")
    exact, x = filled(tmp_path / "g.db", people=300, per=2)
    ivf = Gallery(tmp_path / "g.db", "model-a", DIM, index="faiss", index_options={"nlist": 16, "nprobe": 16})
    queries = x[::7] + 0.05 * unit_rows(len(x[::7]), DIM, seed=4)
    a, b = exact.search(queries, k=1), ivf.search(queries, k=1)
    assert [r[0].name for r in a] == [r[0].name for r in b]  # probing every list: same answers as exact
    tiny = Gallery(tmp_path / "t.db", "model-a", DIM, index="faiss", index_options={"nlist": 1000})
    tiny.enroll("only", [("a", x[0])])
    assert tiny.search(x[:1], k=1)[0][0].name == "only"  # fewer rows than lists: stays a flat (exact) index
