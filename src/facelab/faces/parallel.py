"""Face detection over many images in worker processes: each worker runs OpenCV and the detectors on one thread,
so N workers use N cores without oversubscribing them."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """Two processes, or one on a single-core machine."""
    return max(1, min(2, os.cpu_count() or 1))


def _init_worker() -> None:
    import cv2

    from facelab.faces.detectors import set_default_threads

    cv2.setNumThreads(1)
    set_default_threads(1)


def parallel_map(fn: Callable[[T], R], jobs: Iterable[T], workers: int) -> Iterator[R]:
    """``fn(job)`` for every job, results in completion order. ``workers`` <= 1 (or a single job) runs in this
    process with the libraries' default threads; otherwise a pool of spawned processes (``fn`` and the jobs must
    be picklable: a module-level function and plain data). Spawned, not forked: the parent may hold torch or
    OpenCV thread pools that a fork would copy in an unusable state."""
    items: list[Any] = list(jobs)
    if workers <= 1 or len(items) < 2:
        yield from map(fn, items)
        return
    ctx = multiprocessing.get_context("spawn")
    chunk = max(1, min(32, len(items) // (workers * 8)))
    with ctx.Pool(workers, initializer=_init_worker) as pool:
        yield from pool.imap_unordered(fn, items, chunksize=chunk)
