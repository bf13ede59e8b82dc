"""Bounded HTTP load test of `facelab serve` on loopback: latency p50/p99 and throughput per endpoint.

Starts the real server (`python -m facelab serve`, uvicorn) as a subprocess on 127.0.0.1 with a bundle and a
synthetic gallery, fires a fixed number of requests at a fixed concurrency (never more than --requests, never longer
than --max-seconds), then stops it. Only loopback addresses are ever contacted.

    .venv/bin/python benchmarks/bench_http.py                          # random demo-size model, 10k identities
    .venv/bin/python benchmarks/bench_http.py --bundle model.safetensors --requests 400 --concurrency 8
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from facelab.config import ModelConfig, to_dict
from facelab.inference.model import FaceModel, load_model
from facelab.inference.spec import InputSpec
from facelab.inference.thresholds import IDENTIFICATION, VERIFICATION, Threshold, Thresholds
from facelab.models import build_backbone
from facelab.serving.gallery import Gallery

FACE = Path(__file__).resolve().parents[1] / "src" / "facelab" / "assets" / "att_faces" / "s1" / "1.pgm"
TOKEN = "bench-token"


def demo_size_model(threshold: float = 0.5) -> FaceModel:
    """Random weights in the demo's architecture (ResNet-18 width 32, 64 px, 128-d): realistic compute, no training."""
    torch.manual_seed(0)
    model_cfg = ModelConfig(backbone="resnet18", width=32, embedding_dim=128)
    th = Thresholds(Threshold(VERIFICATION, threshold, "benchmark"), Threshold(IDENTIFICATION, threshold, "benchmark"))
    return FaceModel.from_module(build_backbone(model_cfg, 64), to_dict(model_cfg), InputSpec(input_size=64),
                                 thresholds=th, device="cpu")


def synthetic_gallery(path: Path, model: FaceModel, identities: int) -> None:
    x = np.random.default_rng(0).standard_normal((identities, model.embedding_dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    with Gallery(path, model.fingerprint, model.embedding_dim) as gallery:
        for i, v in enumerate(x):
            gallery.enroll(f"person{i:06d}", [(f"synthetic/{i}", v)])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], p: float) -> float:
    return float(np.percentile(values, p)) if values else float("nan")


def load(base: str, endpoint: str, requests: int, concurrency: int, deadline: float) -> dict[str, Any]:
    image = FACE.read_bytes()
    calls = {
        "health": lambda c: c.get(f"{base}/health"),
        "identify": lambda c: c.post(f"{base}/identify", files={"image": ("q.pgm", image)}),
        "verify": lambda c: c.post(f"{base}/verify", files={"image_a": ("a.pgm", image), "image_b": ("b.pgm", image)}),
    }
    call = calls[endpoint]
    latencies: list[float] = []
    errors = 0

    def one(_: int) -> None:
        nonlocal errors
        if time.monotonic() > deadline:
            return
        with httpx.Client(timeout=30) as client:
            t = time.perf_counter()
            r = call(client)
            latencies.append(time.perf_counter() - t)
            errors += r.status_code != 200

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    wall = time.perf_counter() - start
    ms = [1000 * v for v in latencies]
    return {"endpoint": endpoint, "requests": len(ms), "errors": errors, "concurrency": concurrency,
            "req_per_s": round(len(ms) / wall, 1), "p50_ms": round(percentile(ms, 50), 1),
            "p99_ms": round(percentile(ms, 99), 1), "mean_ms": round(statistics.fmean(ms), 1) if ms else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", help="bundle to serve (default: random weights, demo architecture)")
    ap.add_argument("--identities", type=int, default=10_000, help="synthetic gallery size (one image each)")
    ap.add_argument("--requests", type=int, default=200, help="requests per endpoint (hard cap)")
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="stop sending after this long per endpoint")
    ap.add_argument("--endpoints", nargs="+", default=["health", "identify", "verify"], help="endpoints to load")
    ap.add_argument("--server-threads", type=int, default=1, help="torch threads in the server")
    ap.add_argument("--out", help="also write the results as JSON here")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="facelab-bench-http-") as tmp:
        bundle_path = Path(args.bundle) if args.bundle else demo_size_model().save_bundle(Path(tmp) /
                                                                                          "bench.safetensors")
        bundle = load_model(bundle_path, device="cpu")
        synthetic_gallery(Path(tmp) / "g.db", bundle, args.identities)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {**os.environ, "FACELAB_TOKEN": TOKEN, "OMP_NUM_THREADS": str(args.server_threads)}
        server = subprocess.Popen([sys.executable, "-m", "facelab", "serve", "--bundle", str(bundle_path),
                                   "--gallery", str(Path(tmp) / "g.db"), "--host", "127.0.0.1", "--port", str(port)],
                                  env=env)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("server did not start")
                time.sleep(0.2)
            results = []
            print(f"gallery {args.identities:,} identities x {bundle.embedding_dim}-d, model input "
                  f"{bundle.spec.input_size}px, {args.concurrency} concurrent, load average {os.getloadavg()[0]:.1f}")
            for endpoint in args.endpoints:
                r = load(base, endpoint, args.requests, args.concurrency, time.monotonic() + args.max_seconds)
                results.append(r)
                print(f"{endpoint:>9}: {r['requests']} requests, {r['errors']} errors, {r['req_per_s']} req/s, "
                      f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms", flush=True)
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
    if args.out:
        Path(args.out).write_text(json.dumps({"identities": args.identities, "results": results}, indent=2))


if __name__ == "__main__":
    main()
