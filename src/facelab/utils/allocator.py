"""glibc allocator settings (``mallopt``, malloc.h) for the two kinds of facelab process.

* ``service`` (``facelab serve``): freed image memory goes back to the system. By default glibc raises its mmap
  threshold up to 32 MB after the first large free and gives every thread its own arena, so the 16 MB blocks Pillow
  decodes into land in up to 8 arenas per core and stay there: 40 concurrent 40 MP decodes left a server at 2.9 GB
  after the load ended (3.3 GB peak). With a fixed 4 MB mmap threshold (every large buffer is its own mapping,
  unmapped on free) and 2 arenas the same load peaked at 1.6 GB and returned to its idle size
  (benchmarks/bench_hostile_images.py, docs/deploy.md).
* ``batch`` (every other command: training, evaluation, embedding): large tensors are reused, not remapped. A
  forward pass frees and allocates activations of tens to hundreds of MB at every layer; above glibc's mmap
  threshold (at most 32 MB by default) each is a fresh mapping whose pages fault in again, which cost more system
  time than the convolutions themselves. Keeping them in the heap (mmap threshold 1 GB, trim threshold 2 GB)
  made an SFace training step at batch 32 on 2 threads 1.25x faster (sys time 3.9 -> 0.9 s per 96 images) and
  embedding at batch 64 2.2x faster; the process keeps its peak memory until it exits.

Nothing is changed when the process already has ``MALLOC_*`` or ``GLIBC_TUNABLES=glibc.malloc.*`` settings (the
operator's choice wins), or off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

from facelab.errors import FacelabError

log = logging.getLogger(__name__)

#: mallopt parameter numbers (glibc malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
#: profile -> mallopt settings
PROFILES: dict[str, dict[int, int]] = {
    "service": {M_MMAP_THRESHOLD: 4 << 20, M_ARENA_MAX: 2},
    "batch": {M_MMAP_THRESHOLD: 1 << 30, M_TRIM_THRESHOLD: 2 << 30},
}


def tune_allocator(profile: str) -> bool:
    """Apply ``profile`` (see the module docstring); returns whether it was applied.

    Raises:
        FacelabError: an unknown profile.
    """
    if profile not in PROFILES:
        raise FacelabError(f"unknown allocator profile {profile!r}; use one of {', '.join(PROFILES)}")
    if any(k.startswith("MALLOC_") for k in os.environ) or "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = all(bool(mallopt(param, value)) for param, value in PROFILES[profile].items())
    if not ok:
        log.warning("could not tune the memory allocator (mallopt refused)")
    return ok
