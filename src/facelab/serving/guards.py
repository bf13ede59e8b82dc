"""Resource and origin guards of the HTTP service: a memory budget for concurrent image decodes and a Host-header
allow-list against DNS rebinding. Kept apart from the endpoints (``service.py``) so each can be tested alone.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

from facelab.errors import FacelabError
from facelab.images import HeaderHook

#: measured peak bytes per pixel of decoding an image through the gate and resizing it to the model's input
#: (Pillow's 4-byte RGB storage + the uint8 tensor + torchvision's antialiased resize; see docs/deploy.md); modes
#: with alpha pay for the compositing, 16-bit and float ones for the conversion, rotated ones for the transposed copy
BYTES_PER_PIXEL = {"default": 12, "alpha": 20, "wide": 16, "rotate": 4}
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "P", "RGBa", "La"})
_WIDE_MODES = frozenset({"I", "F", "I;16", "I;16B", "I;16L", "I;16N"})
#: default memory all concurrent decodes of one service may hold together
DEFAULT_DECODE_MEMORY = 1 << 30
#: default seconds a request waits for decode memory before it is answered 503 (40 concurrent 40 MP photos on two
#: cores take about this long to drain: see docs/deploy.md)
DEFAULT_DECODE_WAIT = 120.0


log = logging.getLogger(__name__)
class ServerBusy(FacelabError):
    """The service cannot take this request now (decode memory exhausted for too long); retrying later works."""


def decode_cost(width: int, height: int, mode: str) -> int:
    """Estimated peak bytes of decoding a ``width`` x ``height`` image of Pillow ``mode`` (``+rotate`` suffix: an
    EXIF rotation will be applied) and resizing it to the model's input."""
    base, _, rotate = mode.partition("+")
    per = BYTES_PER_PIXEL["alpha" if base in _ALPHA_MODES else "wide" if base in _WIDE_MODES else "default"]
    per += BYTES_PER_PIXEL["rotate"] if rotate else 0
    return width * height * per


class DecodeBudget:
    """Bounds the memory that concurrent decodes hold: each decode reserves :func:`decode_cost` of its header's
    size before any pixel is decoded and keeps it until released; a reservation that does not fit waits (up to
    ``wait`` seconds, then :class:`ServerBusy`). One decode alone is always let through -- the pixel cap bounds it --
    so a budget smaller than one cap-sized image still serves it, one at a time.

    It is a semaphore weighted by bytes: with the default 1 GiB and a 40 MP cap, two 40 MP RGB photos (12 B/px, see
    :data:`BYTES_PER_PIXEL`) or hundreds of phone selfies decode at once."""

    def __init__(self, budget_bytes: int = DEFAULT_DECODE_MEMORY, wait: float = DEFAULT_DECODE_WAIT) -> None:
        if budget_bytes <= 0 or not math.isfinite(wait) or wait < 0:
            raise FacelabError(f"decode budget must be > 0 bytes and the wait >= 0 s, got {budget_bytes}, {wait}")
        self.budget, self.wait = int(budget_bytes), float(wait)
        self.used = 0
        self.peak = 0  # most bytes ever reserved at once (for tests and the hostile-image benchmark)
        self.waited = 0  # reservations that had to wait
        self._cond = threading.Condition()

    def _acquire(self, extra: int, mine: int) -> None:
        """Reserve ``extra`` more bytes for a slot already holding ``mine``; wait while others hold memory and the
        total would exceed the budget (a slot alone always proceeds)."""
        deadline = time.monotonic() + self.wait
        with self._cond:
            if self.used - mine and self.used + extra > self.budget:
                self.waited += 1
            while self.used - mine and self.used + extra > self.budget:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ServerBusy(f"the server is busy decoding other images (waited {self.wait:g} s); retry")
                self._cond.wait(left)
            self.used += extra
            self.peak = max(self.peak, self.used)

    def _release(self, cost: int) -> None:
        if cost:
            with self._cond:
                self.used -= cost
                self._cond.notify_all()

    @contextmanager
    def slot(self) -> Iterator[HeaderHook]:
        """A reservation scope for one request: pass the yielded function as ``on_header`` to the image gate
        (:func:`facelab.images.decode_limits`). The slot holds the cost of the largest image decoded in it so
        far -- a request decodes its images one at a time and keeps only the model's small input of each -- and
        gives it back when the scope ends."""
        held = 0

        def reserve(width: int, height: int, mode: str) -> None:
            nonlocal held
            cost = decode_cost(width, height, mode)
            if cost > held:
                self._acquire(cost - held, held)
                held = cost

        try:
            yield reserve
        finally:
            self._release(held)

    @contextmanager
    def limits(self, cap: int | None = None) -> Iterator[None]:
        """:meth:`slot` applied to every decode in this block, with the pixel cap ``cap``."""
        from facelab.images import decode_limits

        with self.slot() as reserve, decode_limits(cap, reserve):
            yield


# -- Host header ----------------------------------------------------------------------------------------------------
def host_of(header: str) -> str:
    """The host part of a Host header (port removed, IPv6 brackets removed, lowercased, trailing dot removed)."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def default_allowed_hosts(bind: str) -> list[str]:
    """The names a service bound to ``bind`` answers by default: ``localhost`` and ``bind`` when it is a name (IP
    literals are always answered: a Host that is an address cannot be a rebinding attacker's domain)."""
    names = ["localhost"]
    if bind and not _is_ip(host_of(bind)) and host_of(bind) not in names:
        names.append(host_of(bind))
    return names


class HostCheck:
    """ASGI middleware: 400 unless the request's Host header is an IP literal or one of ``allowed`` (``*`` allows
    everything).

    Why: a web page on an attacker's domain can resolve that domain to 127.0.0.1 after loading (DNS rebinding) and
    then talk to a local service as "same origin"; its requests still carry the attacker's host name, which this
    check refuses. Starlette's TrustedHostMiddleware knows names and wildcards but not "any IP literal", which is
    what keeps `curl http://192.168.1.5:8000` working without configuration."""

    def __init__(self, app: Any, allowed: Iterable[str]) -> None:
        self.app = app
        self.allowed = {host_of(h) for h in allowed}
        self.any = "*" in self.allowed

    def permits(self, header: str | None) -> bool:
        if self.any:
            return True
        if not header:
            return False
        host = host_of(header)
        return _is_ip(host) or host in self.allowed

    async def __call__(self, scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        header = next((v.decode("latin-1") for k, v in scope.get("headers") or [] if k == b"host"), None)
        if self.permits(header):
            return await self.app(scope, receive, send)
        from fastapi.responses import JSONResponse

        shown = (header or "")[:80]
        response = JSONResponse({"detail": f"host {shown!r} is not served here (see facelab serve --allowed-host)"},
                                status_code=400)
        await response(scope, receive, send)
