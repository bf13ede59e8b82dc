"""The HTTP service through FastAPI's TestClient: every endpoint, auth, upload limits, types, OpenAPI, web page."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_serving_support import face_files, one_thread, png_bytes, tiny_model  # noqa: F401  (one_thread: autouse)

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("python_multipart", reason="the serve extra is not installed")

from fastapi.testclient import TestClient

from facelab.errors import FacelabError
from facelab.serving.recognition import FaceGallery
from facelab.serving.service import create_app

TOKEN = "correct horse battery staple"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMIT = 100_000


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    return tiny_model(threshold=0.9999)  # random weights: only (near-)identical images count as a match


@pytest.fixture()
def client(model, tmp_path: Path) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    gallery = FaceGallery(tmp_path / "g.db", model)
    with TestClient(create_app(gallery, TOKEN, max_upload_bytes=LIMIT), base_url="http://localhost") as c:
        yield c


def upload(path: Path, field: str = "images", content_type: str = "image/x-portable-graymap") -> tuple:
    return field, (path.name, path.read_bytes(), content_type)


def enroll(client: TestClient, name: str, files: list[Path], headers: dict[str, str] = AUTH):  # type: ignore[no-untyped-def]
    return client.post("/enroll", data={"name": name}, files=[upload(f) for f in files], headers=headers)


def test_enroll_identify_list_delete_round_trip(client: TestClient, orl_root: Path) -> None:
    alice = face_files(orl_root, "s1", 3)
    r = enroll(client, "alice", alice[:2])
    assert r.status_code == 200 and r.json() == {"name": "alice", "added": 2, "images": 2, "duplicates": []}
    assert enroll(client, "alice", alice[2:]).json()["images"] == 3
    assert client.get("/identities").json()[0]["name"] == "alice"
    r = client.post("/identify", files=[upload(alice[1], "image")], data={"k": "3"})
    (body,) = r.json()["faces"]
    assert r.status_code == 200 and body["identity"] == "alice" and body["known"]
    assert body["matches"][0]["score"] == pytest.approx(1.0, abs=1e-4) and body["threshold"] == 0.9999
    assert body["box"] == [0.0, 0.0, 92.0, 112.0] and body["method"] == "resized"
    (r,) = client.post("/identify", files=[("image", ("noise.png", png_bytes(), "image/png"))]).json()["faces"]
    assert r["identity"] == "unknown" and not r["known"] and r["matches"] == [] and r["nearest"]["name"] == "alice"
    health = client.get("/health").json()
    assert (health["identities"], health["images"], health["writes_enabled"]) == (1, 3, True)
    assert health["thresholds"]["identification"] == {"value": 0.9999, "source": "test value", "target": None,
                                                      "rate": "FPIR"}
    same = client.post("/verify", files=[upload(alice[0], "image_a")], data={"identity": "alice"}).json()
    assert same["same_person"] and same["identity"] == "alice" and same["score"] == pytest.approx(1.0, abs=1e-4)
    r = client.post("/verify", files=[("image_a", ("n.png", png_bytes(), "image/png"))], data={"identity": "alice"})
    assert r.status_code == 200 and not r.json()["same_person"]
    r = client.post("/verify", files=[upload(alice[0], "image_a")], data={"identity": "nobody"})
    assert r.status_code == 404
    assert client.delete("/identities/alice", headers=AUTH).json() == {"name": "alice", "removed_images": 3}
    assert client.get("/identities").json() == []
    assert client.delete("/identities/alice", headers=AUTH).status_code == 404


def test_verify(client: TestClient, orl_root: Path) -> None:
    a = face_files(orl_root, "s2", 1)[0]
    same = client.post("/verify", files=[upload(a, "image_a"), upload(a, "image_b")]).json()
    assert same["same_person"] and same["score"] == pytest.approx(1.0, abs=1e-4) and same["threshold"] == 0.9999
    other = client.post("/verify", files=[upload(a, "image_a"), ("image_b", ("n.png", png_bytes(), "image/png"))])
    assert other.status_code == 200 and not other.json()["same_person"]
    r = client.post("/verify", files=[upload(a, "image_a")])
    assert r.status_code == 422 and "image_b or identity" in r.json()["detail"]


def test_writes_need_the_token(client: TestClient, orl_root: Path) -> None:
    files = face_files(orl_root, "s3", 1)
    missing = enroll(client, "eve", files, headers={})
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert enroll(client, "eve", files, headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert client.delete("/identities/eve").status_code == 401
    assert client.delete("/identities/eve", headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert client.get("/identities").json() == []


def test_read_only_service_refuses_every_write(model, tmp_path: Path, orl_root: Path) -> None:  # type: ignore[no-untyped-def]
    gallery = FaceGallery(tmp_path / "ro.db", model)
    with TestClient(create_app(gallery, token=None), base_url="http://localhost") as c:
        r = enroll(c, "eve", face_files(orl_root, "s3", 1), headers={"Authorization": "Bearer anything"})
        assert r.status_code == 403 and "disabled" in r.json()["detail"]
        assert c.get("/health").json()["writes_enabled"] is False


def test_upload_limits_and_types(client: TestClient, orl_root: Path) -> None:
    big = ("image", ("big.png", b"\x89PNG" + b"0" * LIMIT, "image/png"))
    r = client.post("/identify", files=[big])
    assert r.status_code == 413 and "limit" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while streaming
        yield from (b"x" * 10_000 for _ in range(30))

    r = client.post("/identify", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413
    r = client.post("/identify", files=[("image", ("notes.txt", b"hello", "text/plain"))])
    assert r.status_code == 415 and "text/plain" in r.json()["detail"]
    r = client.post("/identify", files=[("image", ("fake.jpg", b"not an image", "image/jpeg"))])
    assert r.status_code == 415 and "fake.jpg" in r.json()["detail"]
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
    assert client.post("/identify", files=[("image", ("x.eps", eps, "application/octet-stream"))]).status_code == 415
    # a bad file in an enroll request stores none of the good ones
    good = upload(face_files(orl_root, "s4", 1)[0])
    r = client.post("/enroll", data={"name": "mallory"}, files=[good, ("images", ("x.txt", b"x", "text/plain"))],
                    headers=AUTH)
    assert r.status_code == 415 and client.get("/identities").json() == []
    assert enroll(client, " ", face_files(orl_root, "s4", 1)).status_code == 422


def test_openapi_schema_and_web_page(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {"/health", "/verify", "/identify", "/enroll", "/identities",
                                    "/identities/{name}"}
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "security" in schema["paths"]["/enroll"]["post"] and "security" not in schema["paths"]["/identify"]["post"]
    page = client.get("/")
    assert page.status_code == 200 and 'id="identify-button"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/health").headers["x-content-type-options"] == "nosniff"


def test_refuses_a_gallery_of_another_model(model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    FaceGallery(tmp_path / "g.db", tiny_model(seed=1)).close()
    with pytest.raises(FacelabError, match="was built with model"):
        FaceGallery(tmp_path / "g.db", model)


def test_a_missing_threshold_is_a_clear_422(tmp_path: Path, orl_root: Path) -> None:
    gallery = FaceGallery(tmp_path / "g.db", tiny_model(threshold=None))
    with TestClient(create_app(gallery, TOKEN), base_url="http://localhost") as c:
        r = c.post("/identify", files=[upload(face_files(orl_root, "s1", 1)[0], "image")])
        assert r.status_code == 422 and "no identification threshold" in r.json()["detail"]
        assert c.get("/health").json()["thresholds"] == {"verification": None, "identification": None}
