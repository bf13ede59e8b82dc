"""End to end over real HTTP: the web page in headless Chromium (DevTools protocol), and the `facelab serve` command.

Slow (starts a browser). Skips when Chromium or websocket-client is missing (CI installs both when it can).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from test_serving_support import face_files, one_thread, tiny_model  # noqa: F401  (one_thread: autouse)

pytestmark = pytest.mark.slow

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--remote-debugging-port=0"]
TOKEN = "page-test-token"


def stop(proc: subprocess.Popen) -> None:
    """Terminate a child server/browser, killing it if it ignores SIGTERM."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class DevTools:
    """The few DevTools-protocol calls the test needs, over one page's websocket."""

    def __init__(self, url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(url, timeout=30, suppress_origin=True)
        self.ids = count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:  # skip events until our answer
            reply = json.loads(self.ws.recv())
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def js(self, expression: str) -> Any:
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expression}; page says: {self.js('document.body.innerText')}")

    def set_files(self, selector: str, files: list[Path]) -> None:
        root = self.call("DOM.getDocument")["root"]["nodeId"]
        node = self.call("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.call("DOM.setFileInputFiles", nodeId=node, files=[str(f) for f in files])


@contextmanager
def serving(model: Any, db: Path) -> Iterator[str]:
    """Serve a gallery at ``db`` with ``model`` on a free loopback port; yields the page URL."""
    uvicorn = pytest.importorskip("uvicorn", reason="the serve extra is not installed")
    from facelab.serving.recognition import FaceGallery
    from facelab.serving.service import create_app

    gallery = FaceGallery(db, model)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(gallery, TOKEN), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[str]:
    with serving(tiny_model(threshold=0.9999), tmp_path / "g.db") as url:
        yield url


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[DevTools]:
    if CHROMIUM is None:
        pytest.skip("chromium not installed (Debian: apt-get install -y chromium)")
    pytest.importorskip("websocket", reason="websocket-client (dev extra) is not installed")
    profile = tmp_path / "chromium-profile"
    proc = subprocess.Popen([CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and port_file.read_text().strip()):
            assert proc.poll() is None, f"chromium exited with {proc.returncode}"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        yield tools
        tools.ws.close()
    finally:
        stop(proc)


def test_enroll_and_identify_through_the_web_page(server: str, browser: DevTools, orl_root: Path) -> None:
    alice = face_files(orl_root, "s1", 2)
    stranger = face_files(orl_root, "s30", 1)
    browser.call("Page.navigate", url=server)
    browser.wait_for("document.getElementById('health')?.textContent.includes('0 identities')")

    browser.js("document.getElementById('enroll-name').value = 'alice'")
    browser.set_files("#enroll-files", alice)
    browser.js("document.getElementById('token').value = 'wrong'")
    browser.js("document.getElementById('enroll-button').click()")
    assert "403" in browser.wait_for("document.getElementById('enroll-result').className === 'error' && "
                                     "document.getElementById('enroll-result').textContent")

    browser.js(f"document.getElementById('token').value = '{TOKEN}'")
    browser.js("document.getElementById('enroll-button').click()")
    assert browser.wait_for("document.getElementById('enroll-result').textContent.startsWith('enrolled') && "
                            "document.getElementById('enroll-result').textContent") == \
        "enrolled alice: 2 added, 2 in total"
    browser.wait_for("document.getElementById('identities').textContent.includes('alice')")

    browser.set_files("#identify-file", alice[1:])
    browser.js("document.getElementById('identify-button').click()")
    text = browser.wait_for("document.getElementById('identify-result').textContent.startsWith('identity:') && "
                            "document.getElementById('identify-result').textContent")
    assert text.splitlines()[0] == "identity: alice" and text.splitlines()[1].strip().startswith("alice  1.000")

    browser.set_files("#identify-file", stranger)
    browser.js("document.getElementById('identify-result').textContent = ''")
    browser.js("document.getElementById('identify-button').click()")
    text = browser.wait_for("document.getElementById('identify-result').textContent.startsWith('identity:') && "
                            "document.getElementById('identify-result').textContent")
    assert text.startswith("identity: unknown (nearest: alice")


def test_facelab_serve_starts_on_loopback_and_protects_writes(tmp_path: Path) -> None:
    """The real `facelab serve` command: starts, answers /health, refuses an unauthenticated write, stops."""
    import os
    import sys

    httpx = pytest.importorskip("httpx", reason="the serve extra is not installed")
    bundle = tiny_model().save_bundle(tmp_path / "m.safetensors")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "FACELAB_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "facelab", "serve", "--bundle", str(bundle), "--gallery",
                             str(tmp_path / "g.db"), "--port", str(port)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "facelab serve did not start"
                time.sleep(0.2)
        assert health.json()["writes_enabled"] is True
        assert httpx.delete(f"http://127.0.0.1:{port}/identities/x", timeout=10).status_code == 401
        assert httpx.delete(f"http://127.0.0.1:{port}/identities/x", headers={"Authorization": f"Bearer {TOKEN}"},
                            timeout=10).status_code == 404
    finally:
        stop(proc)


def test_the_page_draws_each_face_with_its_name_and_score(tmp_path: Path, browser: DevTools, orl_root: Path) -> None:
    """A photo with two faces: the page draws the photo with one box per face, labelled with the name (or
    'unknown') and score the service returned, in the photo's coordinates."""
    import torch
    from scenes import background, paste
    from test_serving_support import TINY_MODEL

    from facelab.config import to_dict
    from facelab.images import read_image
    from facelab.inference.model import FaceModel
    from facelab.inference.spec import InputSpec
    from facelab.inference.thresholds import IDENTIFICATION, VERIFICATION, Threshold, Thresholds
    from facelab.models import build_backbone

    torch.manual_seed(0)
    model = FaceModel.from_module(build_backbone(TINY_MODEL, 64), to_dict(TINY_MODEL),
                                  InputSpec(input_size=64, align="yunet"),
                                  thresholds=Thresholds(Threshold(VERIFICATION, 0.5, "test"),
                                                        Threshold(IDENTIFICATION, 0.999, "test")),
                                  source="random", kind="module", device="cpu")
    photo = tmp_path / "two.png"
    scene = paste(read_image(orl_root / "s1" / "1.pgm"), background(seed=1), 40, 60, 2.0)
    paste(read_image(orl_root / "s5" / "1.pgm"), scene, 400, 150, 2.0).save(photo)
    with serving(model, tmp_path / "g.db") as url:
        from facelab.serving.recognition import FaceGallery

        with FaceGallery(tmp_path / "g.db", model) as g:
            g.enroll("alice", [photo])  # the policy's face (the first) of the same photo: alice
        browser.call("Page.navigate", url=url)
        browser.wait_for("document.getElementById('health')?.textContent.includes('1 identities')")
        browser.set_files("#identify-file", [photo])
        browser.js("document.getElementById('identify-button').click()")
        drawn = json.loads(browser.wait_for("!document.getElementById('identify-canvas').hidden && "
                                            "document.getElementById('identify-canvas').dataset.faces"))
        size = browser.js("[document.getElementById('identify-canvas').width, "
                          "document.getElementById('identify-canvas').height]")
        # the box's top-left corner pixel has the frame's colour (green: known, orange: unknown)
        corner = browser.js(f"Array.from(document.getElementById('identify-canvas').getContext('2d')"
                            f".getImageData({round(drawn[0]['box'][0])}, {round(drawn[0]['box'][1] + 3)}, 1, 1).data)")
    assert size == [640, 480]  # drawn at the photo's size (<= 720 px)
    assert len(drawn) == 2 and all(len(f["box"]) == 4 for f in drawn)
    labels = sorted(f["label"] for f in drawn)
    assert labels[0].startswith("alice 1.00") and labels[1].startswith("unknown ")
    assert corner[:3] in ([27, 158, 62], [217, 72, 15])
