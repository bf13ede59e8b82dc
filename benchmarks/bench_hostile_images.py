"""Hostile-image load test of `facelab serve` on loopback, and the locked-gallery check (issue 15).

1. Memory: N concurrent /identify requests, each a 6300x6300 PNG of ~115 KB that decodes to ~120 MB (just under the
   40 MP cap), plus a few 20000x20000 decompression bombs. The server's resident memory is sampled from
   /proc/PID/status every 20 ms; its peak (VmHWM) is reported with every answer's status. The bar: peak < 2 GB and
   every answer 413 (bombs) or a normal result.
2. Lock: while another process holds the gallery's write lock (a second connection in BEGIN IMMEDIATE), /health and
   /identify latencies against the same requests with the lock free (measured in the same run, interleaved), and
   /enroll's answer (503 + Retry-After) and how long it took.

Only 127.0.0.1 is contacted; the request count bounds the test and every request has a timeout.

    .venv/bin/python benchmarks/bench_hostile_images.py --concurrency 40 --out /tmp/hostile.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_http import FACE, TOKEN, demo_size_model, free_port, synthetic_gallery
from machine import machine

HOLD_LOCK = ("import sqlite3, sys, time\n"
             "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
             "db.execute('BEGIN IMMEDIATE')\n"
             "print('locked', flush=True)\n"
             "time.sleep(600)\n")


def big_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (90, 120, 150)).save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


def bomb_png(side: int) -> bytes:
    """A PNG header declaring side x side (refused before decoding; see tests/hostile.py)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 193))
            + chunk(b"IEND", b""))


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of ``pid`` in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":")
            out[key] = int(value.split()[0]) * 1024
    return out


def start_server(model_path: Path, db: Path, port: int, extra: list[str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FACELAB_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "facelab", "serve", "--model", str(model_path), "--gallery", str(db),
           "--port", str(port), *extra]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
    proc.kill()
    raise SystemExit("server did not start within 120 s")


def hostile_load(base: str, pid: int, concurrency: int, bombs: int, side: int) -> dict[str, Any]:
    png, bomb = big_png(side), bomb_png(20_000)
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    t0 = time.monotonic()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.monotonic() - t0, memory(pid)["VmRSS"]))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    before = memory(pid)

    def one(i: int) -> tuple[str, int, float]:
        kind, data = ("bomb", bomb) if i < bombs else ("6300px", png)
        start = time.monotonic()
        with httpx.Client(timeout=300) as c:
            r = c.post(f"{base}/identify", files={"image": (f"{kind}.png", data, "image/png")})
        return kind, r.status_code, time.monotonic() - start

    with ThreadPoolExecutor(concurrency + bombs) as pool:
        answers = list(pool.map(one, range(concurrency + bombs)))
    wall = time.monotonic() - t0
    time.sleep(1.0)
    stop.set()
    sampler.join()
    after = memory(pid)
    by_status: dict[str, dict[int, int]] = {}
    for kind, status, _ in answers:
        by_status.setdefault(kind, {}).setdefault(status, 0)
        by_status[kind][status] += 1
    ok = all((k == "bomb" and s == 413) or (k != "bomb" and s == 200) for k, s, _ in answers)
    return {"image_bytes": len(png), "image_side": side, "requests": len(answers), "concurrency": concurrency,
            "bombs": bombs, "answers": {k: {str(s): n for s, n in v.items()} for k, v in by_status.items()},
            "all_413_or_normal": ok, "wall_s": round(wall, 2),
            "latency_s": {"median": round(statistics.median(t for k, _, t in answers if k != "bomb"), 2),
                          "max": round(max(t for _, _, t in answers), 2)},
            "rss_before_mb": round(before["VmRSS"] / 2**20), "rss_peak_mb": round(after["VmHWM"] / 2**20),
            "rss_after_mb": round(after["VmRSS"] / 2**20),
            "timeline": [(round(t, 3), round(r / 2**20)) for t, r in samples]}


def lock_check(base: str, db: Path, rounds: int) -> dict[str, Any]:
    face = FACE.read_bytes()

    def timed(call: Any) -> tuple[int, float]:
        start = time.perf_counter()
        status = call().status_code
        return status, time.perf_counter() - start

    with httpx.Client(timeout=60) as c:
        health = lambda: c.get(f"{base}/health")  # noqa: E731
        identify = lambda: c.post(f"{base}/identify", files={"image": ("q.pgm", face)})  # noqa: E731
        enroll = lambda: c.post(f"{base}/enroll", data={"name": "locked-out"},  # noqa: E731
                                files={"images": ("q.pgm", face)}, headers={"Authorization": f"Bearer {TOKEN}"})
        free: dict[str, list[float]] = {"health": [], "identify": []}
        held: dict[str, list[float]] = {"health": [], "identify": []}
        holder = None
        try:
            for r in range(2 * rounds):  # alternate free / held blocks so load drift hits both alike
                locked = r % 2 == 1
                if locked and holder is None:
                    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(db)], stdout=subprocess.PIPE,
                                              text=True)
                    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
                if not locked and holder is not None:
                    holder.kill()
                    holder.wait()
                    holder = None
                target = held if locked else free
                for name, call in (("health", health), ("identify", identify)):
                    status, dt = timed(call)
                    assert status == 200, (name, status)
                    target[name].append(dt)
            if holder is None:  # the last round was a locked one: its holder still holds the lock
                holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(db)], stdout=subprocess.PIPE,
                                          text=True)
                assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            start = time.perf_counter()
            r = enroll()
            enroll_s = time.perf_counter() - start
        finally:
            if holder is not None:
                holder.kill()
                holder.wait()
    ms = lambda v: round(1000 * statistics.median(v), 1)  # noqa: E731
    return {"rounds": rounds, "health_ms": {"free": ms(free["health"]), "locked": ms(held["health"]),
                                            "locked_max": round(1000 * max(held["health"]), 1)},
            "identify_ms": {"free": ms(free["identify"]), "locked": ms(held["identify"])},
            "enroll_while_locked": {"status": r.status_code, "retry_after": r.headers.get("retry-after"),
                                    "seconds": round(enroll_s, 2)}}


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, rss = zip(*doc["hostile"]["timeline"], strict=True) if doc["hostile"]["timeline"] else ((), ())
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(t, rss, lw=1.2, label="server RSS")
    ax.axhline(2048, color="r", ls="--", lw=1, label="2 GB bar")
    h = doc["hostile"]
    ax.set(xlabel="seconds", ylabel="MiB", title=f"{h['concurrency']} concurrent {h['image_side']}px PNGs + "
           f"{h['bombs']} bombs: peak {h['rss_peak_mb']} MiB")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=40, help="concurrent 6300x6300 PNG requests (default 40)")
    ap.add_argument("--bombs", type=int, default=4, help="20000x20000 bomb requests sent alongside (default 4)")
    ap.add_argument("--side", type=int, default=6300, help="side of the large PNG (default 6300: 39.7 MP)")
    ap.add_argument("--rounds", type=int, default=10, help="lock check: free/locked rounds (default 10)")
    ap.add_argument("--serve-args", default="", help="extra `facelab serve` options, e.g. '--decode-memory-mb 512'")
    ap.add_argument("--out", type=Path, default=Path("bench_hostile.json"), help="JSON report (PNG beside it)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = demo_size_model()
        model_path = model.save_bundle(Path(tmp) / "m.safetensors")
        db = Path(tmp) / "g.db"
        synthetic_gallery(db, model, 100)
        port = free_port()
        proc = start_server(model_path, db, port, args.serve_args.split())
        base = f"http://127.0.0.1:{port}"
        try:
            doc = {"machine": machine(), "server": f"facelab serve {args.serve_args}".strip(),
                   "hostile": hostile_load(base, proc.pid, args.concurrency, args.bombs, args.side),
                   "lock": lock_check(base, db, args.rounds)}
        finally:
            proc.terminate()
            proc.wait(30)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    plot(doc, args.out.with_suffix(".png"))
    h, lk = doc["hostile"], doc["lock"]
    print(f"{h['requests']} requests ({h['concurrency']} x {h['image_side']}px PNG of {h['image_bytes']:,} B, "
          f"{h['bombs']} bombs): answers {h['answers']}, all 413-or-normal: {h['all_413_or_normal']}")
    print(f"server RSS: before {h['rss_before_mb']} MiB, peak {h['rss_peak_mb']} MiB, after {h['rss_after_mb']} MiB; "
          f"wall {h['wall_s']} s, median latency {h['latency_s']['median']} s")
    print(f"lock held by another process: /health {lk['health_ms']['locked']} ms (free {lk['health_ms']['free']} "
          f"ms, max {lk['health_ms']['locked_max']} ms), /identify {lk['identify_ms']['locked']} ms (free "
          f"{lk['identify_ms']['free']} ms), /enroll {lk['enroll_while_locked']}")
    print(f"report: {args.out} and {args.out.with_suffix('.png')}")



if __name__ == "__main__":
    main()
