"""The HTTP service against hostile and careless clients (issue 15): bombs and polyglots, decode memory, slow
bodies, Host headers, echoing 422s, locked galleries, odd names, short tokens, NaN, /docs."""

from __future__ import annotations

import io
import json
import logging
import math
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hostile import EPS, blank_png, png_header_only, polyglot_tiff_im
from test_gallery_hostile import HOLD_LOCK
from test_serving_support import face_files, one_thread, png_bytes, tiny_model  # noqa: F401  (one_thread: autouse)

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("python_multipart", reason="the serve extra is not installed")

from fastapi.testclient import TestClient

from facelab.cli import main
from facelab.inference.model import FaceModel, Verification
from facelab.serving.gallery import Gallery
from facelab.serving.guards import DecodeBudget, HostCheck, ServerBusy, decode_cost, default_allowed_hosts, host_of
from facelab.serving.recognition import FaceGallery
from facelab.serving.service import create_app

TOKEN = "a-long-enough-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def bundle():  # type: ignore[no-untyped-def]
    return tiny_model(threshold=0.9999)


def client_for(model, db: Path, **kw: object) -> TestClient:  # type: ignore[no-untyped-def]
    gallery = FaceGallery(db, model, busy_timeout=0.3)
    return TestClient(create_app(gallery, TOKEN, **kw), base_url="http://localhost")  # type: ignore[arg-type]


@pytest.fixture()
def client(bundle, tmp_path: Path) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with client_for(bundle, tmp_path / "g.db") as c:
        yield c


def image(data: bytes, name: str = "x.png", field: str = "image", ctype: str = "image/png") -> tuple:
    return field, (name, data, ctype)


def test_bombs_are_413_and_polyglots_decode_as_their_checked_format(client: TestClient) -> None:
    r = client.post("/identify", files=[image(png_header_only(20_000, 20_000), "bomb.png")])
    assert r.status_code == 413 and "bomb.png declares more pixels" in r.json()["detail"]
    r = client.post("/identify", files=[image(png_header_only(10_000, 10_000), "big.png")])
    assert r.status_code == 413 and "10000x10000" in r.json()["detail"]
    r = client.post("/identify", files=[image(polyglot_tiff_im(), "poly.tif", ctype="image/tiff")])
    assert r.status_code == 200 and r.json()["faces"][0]["identity"] == "unknown"
    assert r.json()["faces"][0]["box"] == [0.0, 0.0, 64.0, 64.0]  # the TIFF's 64x64, not IM's 8000x8000
    assert client.post("/identify", files=[image(EPS, "x.jpg", ctype="image/jpeg")]).status_code == 415


def test_the_pixel_cap_is_configurable(bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with client_for(bundle, tmp_path / "g.db", max_pixels=5_000) as c:
        r = c.post("/identify", files=[image(blank_png(100, 100))])
        assert r.status_code == 413 and "limit is 5,000" in r.json()["detail"]
        assert c.post("/identify", files=[image(blank_png(50, 50))]).status_code == 200


def test_decode_budget_bounds_concurrent_reservations() -> None:
    budget = DecodeBudget(budget_bytes=decode_cost(100, 100, "RGB") * 2, wait=5)
    inside, go = threading.Barrier(3), threading.Event()

    def hold() -> None:
        with budget.slot() as reserve:
            reserve(100, 100, "RGB")
            inside.wait()
            go.wait(5)

    holders = [threading.Thread(target=hold) for _ in range(2)]
    for t in holders:
        t.start()
    inside.wait()  # two reservations fill the budget
    waited = DecodeBudget(budget.budget, wait=0.1)
    waited.used = budget.used
    with pytest.raises(ServerBusy, match="busy decoding"), waited.slot() as reserve:
        reserve(100, 100, "RGB")  # a third has to wait, and gives up after its wait
    go.set()
    for t in holders:
        t.join()
    assert budget.used == 0 and budget.peak == budget.budget
    alone = DecodeBudget(budget_bytes=10)
    with alone.slot() as reserve:
        reserve(1000, 1000, "RGBA")  # larger than the whole budget, but alone: let through
    assert alone.used == 0 and alone.peak == decode_cost(1000, 1000, "RGBA")
    assert decode_cost(10, 10, "RGBA") > decode_cost(10, 10, "RGB") < decode_cost(10, 10, "RGB+rotate")


def test_the_service_reserves_decode_memory_per_image(bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    budget = DecodeBudget(budget_bytes=1 << 30)
    with client_for(bundle, tmp_path / "g.db", decode_budget=budget) as c:
        assert c.post("/identify", files=[image(blank_png(300, 200))]).status_code == 200
    assert budget.used == 0 and budget.peak == decode_cost(300, 200, "RGB")


def test_a_full_decode_budget_is_503_with_retry_after(bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    budget = DecodeBudget(budget_bytes=1000, wait=0.05)
    budget.used = 1000  # another request holds it all
    with client_for(bundle, tmp_path / "g.db", decode_budget=budget) as c:
        r = c.post("/identify", files=[image(blank_png(20, 20))])
    assert r.status_code == 503 and r.headers["retry-after"] == "2" and "busy" in r.json()["detail"]


def test_a_slow_body_is_408_and_a_complete_one_is_untouched() -> None:
    """BodyLimit driven directly (the test client reads a body whole before the app sees it)."""
    import asyncio

    from facelab.serving.service import BodyLimit

    async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def run(chunks: list[tuple[float, bytes, bool]]) -> list[dict]:
        sent: list[dict] = []

        async def receive() -> dict:
            delay, body, more = chunks.pop(0)
            await asyncio.sleep(delay)
            return {"type": "http.request", "body": body, "more_body": more}

        async def send(message: dict) -> None:
            sent.append(message)

        asyncio.run(BodyLimit(app, limit=1000, timeout=0.2)({"type": "http", "headers": []}, receive, send))
        return sent

    sent = run([(0, b"a", True), (0.5, b"b", False)])
    assert sent[0]["status"] == 408 and b"within 0.2 s" in sent[1]["body"]
    sent = run([(0, b"a", True), (0.05, b"b", False)])
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"ok"
    sent = run([(0, b"x" * 600, True), (0, b"x" * 600, False)])
    assert sent[0]["status"] == 413


@pytest.mark.parametrize(("host", "ok"), [
    ("localhost", True), ("localhost:8000", True), ("127.0.0.1:8000", True), ("[::1]:8000", True),
    ("192.168.1.5", True), ("LOCALHOST.", True), ("evil.example", False), ("evil.example:8000", False),
    ("127.0.0.1.evil.example", False), ("", False),
])
def test_host_header_allow_list(client: TestClient, host: str, ok: bool) -> None:
    r = client.get("/health", headers={"host": host})
    assert (r.status_code == 200) is ok
    if not ok:
        assert r.status_code == 400 and "not served here" in r.json()["detail"]


def test_host_names_are_added_explicitly_or_by_binding() -> None:
    assert default_allowed_hosts("127.0.0.1") == ["localhost"]
    assert default_allowed_hosts("faces.lab") == ["localhost", "faces.lab"]
    assert host_of("[2001:db8::1]:80") == "2001:db8::1" and host_of("Faces.Lab:8000") == "faces.lab"
    check = HostCheck(None, ["faces.lab"])
    assert check.permits("faces.lab:443") and not check.permits("other.lab")
    assert HostCheck(None, ["*"]).permits("anything.at.all")


def test_validation_errors_do_not_echo_the_input(client: TestClient) -> None:
    huge = "x" * 100_000
    r = client.post("/enroll", data={"name": huge}, files=[image(png_bytes(), field="images")], headers=AUTH)
    assert r.status_code == 422 and len(r.content) < 2_000 and "xxxxxxxxxx" not in r.text
    r = client.post("/identify", data={"k": huge}, files=[image(png_bytes())])
    assert r.status_code == 422 and len(r.content) < 2_000
    r = client.post("/identify", files=[image(b"junk", "y" * 1_000 + ".png")])
    assert r.status_code == 415 and len(r.content) < 1_000


def test_locked_gallery_health_and_identify_answer_enroll_is_503(bundle, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                orl_root: Path) -> None:
    db = tmp_path / "g.db"
    with client_for(bundle, db) as c:
        face = face_files(orl_root, "s1", 1)[0]
        assert c.post("/enroll", data={"name": "alice"}, files=[image(face.read_bytes(), "a.pgm", "images",
                                                                             "image/x-portable-graymap")],
                      headers=AUTH).status_code == 200
        proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(db)], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
            assert c.get("/health").json()["images"] == 1
            r = c.post("/identify", files=[image(face.read_bytes(), "a.pgm", ctype="image/x-portable-graymap")])
            assert r.status_code == 200 and r.json()["faces"][0]["identity"] == "alice"
            r = c.post("/enroll", data={"name": "bob"}, files=[image(png_bytes(), field="images")], headers=AUTH)
            assert r.status_code == 503 and r.headers["retry-after"] == "2" and "locked" in r.json()["detail"]
            assert c.delete("/identities/alice", headers=AUTH).status_code == 503
        finally:
            proc.kill()
            proc.wait()
        assert [i["name"] for i in c.get("/identities").json()] == ["alice"]  # nothing changed


def test_names_with_any_characters_round_trip_over_http(client: TestClient) -> None:
    for name in ("a/b", "50% off?", "Ren\u0065\u0301e #1", "../etc"):
        r = client.post("/enroll", data={"name": name}, files=[image(png_bytes(seed=len(name)), field="images")],
                        headers=AUTH)
        assert r.status_code == 200, (name, r.text)
    names = [i["name"] for i in client.get("/identities").json()]
    assert sorted(names) == sorted(["a/b", "50% off?", "Ren\u00e9e #1", "../etc"])
    from urllib.parse import quote

    for name in names:
        r = client.delete("/identities/" + quote(name, safe=""), headers=AUTH)
        assert r.status_code == 200 and r.json()["removed_images"] == 1, (name, r.text)
    assert client.get("/identities").json() == []
    r = client.post("/enroll", data={"name": "rtl\u202eevil"}, files=[image(png_bytes(), field="images")],
                    headers=AUTH)
    assert r.status_code == 422 and "U+202E" in r.json()["detail"]


def test_duplicate_uploads_are_reported_not_stored_twice(client: TestClient) -> None:
    photo = png_bytes(seed=7)
    files = [image(photo, "a.png", "images"), image(photo, "copy.png", "images")]
    r = client.post("/enroll", data={"name": "eve"}, files=files, headers=AUTH).json()
    assert (r["added"], r["images"], r["duplicates"]) == (1, 1, ["copy.png"])
    r = client.post("/enroll", data={"name": "eve"}, files=[image(photo, "again.png", "images")], headers=AUTH)
    assert r.json()["added"] == 0 and r.json()["duplicates"] == ["again.png"]


def test_short_tokens_warn(bundle, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    gallery = FaceGallery(tmp_path / "g.db", bundle)
    with caplog.at_level(logging.WARNING):
        create_app(gallery, "secret")
    assert "6 characters long; use at least 16" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        create_app(gallery, TOKEN)
    assert caplog.text == ""


def test_docs_are_off_by_default_and_the_schema_is_served(bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with client_for(bundle, tmp_path / "g.db") as c:
        assert c.get("/docs").status_code == 404 and c.get("/redoc").status_code == 404
        assert c.get("/openapi.json").status_code == 200
    with client_for(bundle, tmp_path / "g.db", docs=True) as c:
        assert c.get("/docs").status_code == 200


def test_non_finite_scores_are_strict_json(client: TestClient, bundle, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
                                           tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(FaceModel, "verify", lambda self, a, b, **kw: Verification(math.nan, 0.5, "test", False))
    r = client.post("/verify", files=[image(png_bytes(), field="image_a"), image(png_bytes(), field="image_b")])
    assert r.status_code == 200 and "NaN" not in r.text and json.loads(r.text)["score"] is None
    path = tmp_path / "m.safetensors"
    bundle.save_bundle(path)
    (tmp_path / "a.png").write_bytes(png_bytes())
    assert main(["verify", str(tmp_path / "a.png"), str(tmp_path / "a.png"), "--bundle", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    assert "NaN" not in out and json.loads(out)["score"] is None


def test_serve_read_only_opens_the_gallery_read_only(bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "g.db"
    Gallery(db, bundle.fingerprint, bundle.embedding_dim).close()
    gallery = FaceGallery(db, bundle, read_only=True)
    assert gallery.store.read_only
    with TestClient(create_app(gallery, None), base_url="http://localhost") as c:
        assert c.get("/health").json()["writes_enabled"] is False
        assert c.post("/identify", files=[image(png_bytes())]).json()["faces"][0]["nearest"] is None
    assert np.isfinite(bundle.threshold("verification").value)


def test_png_helper_is_a_real_png() -> None:
    from PIL import Image

    with Image.open(io.BytesIO(blank_png(7, 5))) as im:
        assert im.size == (7, 5)


def test_allocator_tuning_respects_the_operators_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from facelab.errors import FacelabError
    from facelab.utils.allocator import tune_allocator

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert tune_allocator("service") is False  # the operator's MALLOC_* choice wins
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    for key in [k for k in __import__("os").environ if k.startswith("MALLOC_")]:
        monkeypatch.delenv(key)
    if not sys.platform.startswith("linux"):
        pytest.skip("mallopt is glibc's")
    assert tune_allocator("service") is True
    assert tune_allocator("batch") is True  # restores large-block reuse for the rest of the test session
    with pytest.raises(FacelabError, match="unknown allocator profile"):
        tune_allocator("fast")
