"""API keys and the per-client rate limit on creating generations.

With ``REELSTREAM_API_KEYS`` unset the gateway is open (local use). With keys set, ``/api/v1/*`` and
``/ws/*`` need ``Authorization: Bearer <key>`` or ``X-API-Key`` (a browser WebSocket cannot send
headers, hence ``?api_key=`` there). The webhook route is exempt: it is authenticated by its signature.
A browser may instead hold the session cookie of :mod:`gateway.session` (GET and HEAD only).

The rate limit is an in-memory sliding window per process, keyed by API key (or remote address when
the gateway is open). With several gateway instances the effective limit is per instance; a shared
Redis window is the planned replacement.
"""

import hmac
import math
import time
from collections import deque
from collections.abc import Iterable

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.deps import get_deps
from gateway.errors import PRINCIPAL, ApiError
from gateway.session import SESSION_PATH, key_from_cookie

_PUBLIC_PREFIXES = ("/api/v1/webhooks/",)
_PROTECTED_PREFIXES = ("/api/v1/", "/ws/")
WINDOW_SECONDS = 60.0


def _presented_key(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key = request.headers.get("X-API-Key")
    if key:
        return key.strip()
    if request.path.startswith("/ws/"):
        return request.query.get("api_key") or None
    return None


def _matches(presented: str, keys: Iterable[str]) -> bool:
    """Constant-time comparison against every key, so timing reveals neither a key nor a prefix."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(presented.encode(), key.encode())
    return found


def _protected(path: str) -> bool:
    return path.startswith(_PROTECTED_PREFIXES) and not path.startswith(_PUBLIC_PREFIXES)


class SlidingWindow:
    """At most ``limit`` events per ``window`` seconds per client, remembered in memory."""

    def __init__(self, limit: int, window: float = WINDOW_SECONDS) -> None:
        self.limit = limit
        self.window = window
        self._hits: dict[str, deque[float]] = {}
        self._next_sweep = 0.0

    def hit(self, client: str, now: float | None = None) -> float | None:
        """Record a hit; returns None when allowed, else the seconds until the next one would be."""
        now = time.monotonic() if now is None else now
        self._sweep(now)
        hits = self._hits.setdefault(client, deque())
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            return hits[0] + self.window - now
        hits.append(now)
        return None

    def _sweep(self, now: float) -> None:
        """Forget idle clients now and then, so memory tracks active clients only."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.window
        for client in [c for c, h in self._hits.items() if not h or h[-1] <= now - self.window]:
            del self._hits[client]


LIMITER = web.AppKey("reelstream_rate_limiter", SlidingWindow)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate, then rate-limit ``POST /api/v1/generations`` (an unauthenticated call costs nothing)."""
    settings = get_deps(request).settings
    keys = settings.api_key_set
    if keys and _protected(request.path) and request.path != SESSION_PATH:  # that route checks the key
        presented = _presented_key(request) or key_from_cookie(request, keys)
        if presented is None or not _matches(presented, keys):
            raise ApiError(
                401, "unauthorized", "a valid API key is required", headers={"WWW-Authenticate": "Bearer"}
            )
        request[PRINCIPAL] = presented
    if request.method == "POST" and request.path.rstrip("/") == "/api/v1/generations":
        limiter = request.app[LIMITER]
        if limiter.limit > 0:
            principal = request.get(PRINCIPAL)
            client = f"key:{principal}" if principal is not None else f"ip:{request.remote or 'unknown'}"
            wait = limiter.hit(client)
            if wait is not None:
                retry_after = str(max(1, math.ceil(wait)))
                raise ApiError(
                    429,
                    "rate_limited",
                    f"more than {limiter.limit} generations per minute; retry in {retry_after}s",
                    headers={"Retry-After": retry_after},
                )
    return await handler(request)
