"""1:N search throughput on synthetic galleries: facelab's exact index (torch matmul) and FAISS vs numpy brute force.

Galleries are N random unit vectors (float32, dim 512); queries are noisy copies of gallery rows, so every query has
a true nearest neighbour. All methods run in this one process on the same data, so the ratios compare like with
like even on a busy machine. Reported per gallery size and query batch: build time, queries/s, speed-up over numpy,
and top-1 agreement with numpy (1.0 for the exact methods; IVF is approximate).

    .venv/bin/python benchmarks/bench_search.py                      # 100k and 1M x 512, batches of 1 and 64
    .venv/bin/python benchmarks/bench_search.py --sizes 100000 --ivf-nlist 256 --out /tmp/search.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from facelab.serving.gallery import SEARCH_INDEXES

Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def unit_gallery(n: int, dim: int, seed: int, chunk: int = 100_000) -> np.ndarray:
    """Built in chunks so the peak stays near the 4 bytes x n x dim of the result."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        x[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return x


def numpy_brute_force(x: np.ndarray) -> Search:
    """The baseline a user would write: one matrix product, argpartition, then sort the k winners."""

    def search(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = q @ x.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1)
        idx = np.take_along_axis(top, order, 1)
        return np.take_along_axis(scores, idx, 1), idx

    return search


def facelab_index(name: str, **options: Any) -> Callable[[np.ndarray], Search]:
    def build(x: np.ndarray) -> Search:
        index = SEARCH_INDEXES.build(name, dim=x.shape[1], **options)
        index.add(x)
        return index.search

    return build


def time_search(search: Search, queries: np.ndarray, batch: int, k: int, budget_s: float) -> tuple[float, np.ndarray]:
    """queries/s over as many batches as fit in ``budget_s`` (at least 2, the first one discarded as warm-up)."""
    search(queries[:batch], k)
    done, start, top1 = 0, time.perf_counter(), []
    while True:
        offset = (done % len(queries))
        q = queries[offset:offset + batch]
        _, idx = search(q, k)
        top1.append(idx[:, 0])
        done += len(q)
        elapsed = time.perf_counter() - start
        if elapsed >= budget_s and done >= 2 * batch:
            return done / elapsed, np.concatenate(top1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="gallery sizes")
    ap.add_argument("--dim", type=int, default=512, help="embedding size")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64], help="queries per search call")
    ap.add_argument("--k", type=int, default=10, help="neighbours per query")
    ap.add_argument("--queries", type=int, default=256, help="distinct queries cycled through")
    ap.add_argument("--budget", type=float, default=4.0, help="seconds of searching per method and batch size")
    ap.add_argument("--ivf-nlist", type=int, default=0, help="also time FAISS IVF with this many lists (0: skip; "
                    "training k-means takes minutes on 2 cores)")
    ap.add_argument("--ivf-nprobe", type=int, default=32, help="lists probed per IVF query")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for torch and FAISS")
    ap.add_argument("--out", help="also write the results as JSON here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    methods: dict[str, Callable[[np.ndarray], Search]] = {
        "numpy brute force": numpy_brute_force, "facelab exact (torch)": facelab_index("exact")}
    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)
        methods["faiss flat (exact)"] = facelab_index("faiss")
        if args.ivf_nlist:
            methods[f"faiss IVF{args.ivf_nlist} nprobe {args.ivf_nprobe}"] = facelab_index(
                "faiss", nlist=args.ivf_nlist, nprobe=args.ivf_nprobe)
    except ImportError:
        print("faiss not installed (pip install 'facelab[faiss]'): FAISS rows skipped")

    results: list[dict[str, Any]] = []
    print(f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'gallery':>9} {'batch':>5}  {'method':<28} {'build s':>8} {'queries/s':>10} {'vs numpy':>9} "
          f"{'top-1 = numpy':>13}")
    for n in args.sizes:
        x = unit_gallery(n, args.dim, seed=n)
        rng = np.random.default_rng(1)
        queries = x[rng.integers(0, n, args.queries)] + 0.05 * rng.standard_normal((args.queries, args.dim),
                                                                                    dtype=np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        built = {}
        for name, build in methods.items():
            t = time.perf_counter()
            built[name] = (build(x), time.perf_counter() - t)
        for batch in args.batches:
            base_qps, base_top1 = None, None
            for name, (search, build_s) in built.items():
                qps, top1 = time_search(search, queries, batch, args.k, args.budget)
                if base_qps is None:
                    base_qps, base_top1 = qps, top1
                m = min(len(top1), len(base_top1))
                row = {"gallery": n, "dim": args.dim, "batch": batch, "k": args.k, "method": name,
                       "build_s": round(build_s, 3), "queries_per_s": round(qps, 1),
                       "speedup_vs_numpy": round(qps / base_qps, 2),
                       "top1_agreement": round(float(np.mean(top1[:m] == base_top1[:m])), 4)}
                results.append(row)
                print(f"{n:>9,} {batch:>5}  {name:<28} {build_s:>8.2f} {qps:>10,.1f} {row['speedup_vs_numpy']:>8.2f}x "
                      f"{row['top1_agreement']:>13.4f}", flush=True)
        del built, x
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"threads": args.threads, "torch": torch.__version__, "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
