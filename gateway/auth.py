"""API keys, who owns what, cross-site refusal, and the per-client rate limit on creating generations.

With ``REELSTREAM_API_KEYS`` unset the gateway is open (local use). With keys set, ``/api/v1/*`` and
``/ws/*`` need ``Authorization: Bearer <key>`` or ``X-API-Key`` (a browser WebSocket cannot send
headers, hence ``?api_key=`` there, which is why the access log redacts it). The webhook route is
exempt: it is authenticated by its signature. A browser may instead hold the session cookie of
:mod:`gateway.session` (GET and HEAD only).

A generation belongs to the key that created it: the key's fingerprint (:func:`owner_of`, a sha256,
never the key) is stored with it, and every read, cancel and download of another key's generation is
answered as if it did not exist.

The rate limit is one sliding window per client (API key, or remote address when the gateway is open):
in Redis when it is configured, so every gateway instance draws from the same budget, else in this
process. Redis being away falls back to the process's own window rather than failing the request.
"""

import hashlib
import hmac
import logging
import math
import re
import secrets
import time
from collections import deque
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_log import AccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from redis.exceptions import RedisError

from gateway.deps import get_deps
from gateway.errors import PRINCIPAL, ApiError
from gateway.session import SESSION_PATH, key_from_cookie

log = logging.getLogger(__name__)

_PUBLIC_PREFIXES = ("/api/v1/webhooks/",)
_PROTECTED_PREFIXES = ("/api/v1/", "/ws/")
WINDOW_SECONDS = 60.0
#: Content types an HTML form (or a no-preflight ``fetch``) can send from any site.
_FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})


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


def fingerprint(key: str) -> str:
    """What is stored about an API key: its sha256, enough to tell keys apart, useless to present."""
    return hashlib.sha256(key.encode()).hexdigest()


def owner_of(request: web.Request) -> str | None:
    """The fingerprint of the key the request authenticated with; None when the gateway is open.

    None means "everyone may see everything" (local use): no keys configured.
    """
    principal = request.get(PRINCIPAL)
    return fingerprint(principal) if principal is not None else None


# -- cross-site requests --------------------------------------------------------------------------------


def _same_origin(request: web.Request, origin: str) -> bool:
    parts = urlsplit(origin)
    if not parts.scheme or not parts.netloc:
        return False
    public = get_deps(request).settings.public_url
    allowed = {request.host.lower()}
    if public:
        allowed.add(urlsplit(public).netloc.lower())
    return parts.netloc.lower() in allowed


def refuse_cross_site(request: web.Request) -> None:
    """403 for a state-changing request a browser sent on another site's behalf (CSRF).

    A page elsewhere can make a browser POST a form (or a ``fetch`` without preflight) to us: those
    carry a form content type, and browsers mark them with ``Origin`` and ``Sec-Fetch-Site``. A JSON
    body needs a CORS preflight we never grant. CLI and server clients send none of these headers.
    """
    fetch_site = request.headers.get("Sec-Fetch-Site", "").lower()
    if fetch_site in ("cross-site", "same-site"):
        raise ApiError(403, "forbidden", "cross-site requests are refused")
    origin = request.headers.get("Origin")
    if origin is not None and origin != "null" and not _same_origin(request, origin):
        raise ApiError(403, "forbidden", "cross-origin requests are refused")
    if origin == "null":
        raise ApiError(403, "forbidden", "requests from an opaque origin are refused")
    if request.body_exists and request.content_type.lower() in _FORM_TYPES:
        raise ApiError(403, "forbidden", "form posts are refused; send application/json")


# -- rate limits -----------------------------------------------------------------------------------------


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


#: A sliding-window log in one sorted set per client, on the server's clock (gateways' clocks differ).
#: Returns -1 when the hit is allowed (and recorded), else the milliseconds until one would be.
_REDIS_WINDOW = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + window - now)
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
return -1
"""


class RateLimiter:
    """The window shared through Redis when there is one, this process's own otherwise (or meanwhile)."""

    def __init__(self, limit: int, redis: aioredis.Redis | None, window: float = WINDOW_SECONDS) -> None:
        self.limit = limit
        self.window = window
        self.local = SlidingWindow(limit, window)
        self._redis = redis
        self._script: Any = redis.register_script(_REDIS_WINDOW) if redis is not None else None
        self._warned_at = -math.inf

    async def hit(self, client: str) -> float | None:
        """None when allowed, else the seconds to wait. ``client`` is hashed before it goes to Redis."""
        if self._script is not None:
            key = "reelstream:ratelimit:" + hashlib.sha256(client.encode()).hexdigest()
            try:
                wait_ms = await self._script(
                    keys=[key], args=[self.limit, int(self.window * 1000), secrets.token_hex(8)]
                )
            except (RedisError, OSError) as exc:
                now = time.monotonic()
                if now - self._warned_at > self.window:
                    self._warned_at = now
                    log.warning(
                        "rate limit: Redis unavailable (%s); using this process's window", type(exc).__name__
                    )
            else:
                return None if int(wait_ms) < 0 else int(wait_ms) / 1000
        return self.local.hit(client)


LIMITER = web.AppKey("reelstream_rate_limiter", RateLimiter)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate, refuse cross-site writes, then rate-limit ``POST /api/v1/generations``.

    An unauthenticated call costs nothing of anyone's budget.
    """
    settings = get_deps(request).settings
    keys = settings.api_key_set
    if keys and _protected(request.path) and request.path != SESSION_PATH:  # that route checks the key
        presented = _presented_key(request) or key_from_cookie(request, keys)
        if presented is None or not _matches(presented, keys):
            raise ApiError(
                401, "unauthorized", "a valid API key is required", headers={"WWW-Authenticate": "Bearer"}
            )
        request[PRINCIPAL] = presented
    if request.method == "POST" and request.path.endswith("/cancel") and _protected(request.path):
        # The one write without a JSON body (those that take one answer a form 415 already).
        refuse_cross_site(request)
    if request.method == "POST" and request.path.rstrip("/") == "/api/v1/generations":
        limiter = request.app[LIMITER]
        if limiter.limit > 0:
            owner = owner_of(request)
            client = f"key:{owner}" if owner is not None else f"ip:{request.remote or 'unknown'}"
            wait = await limiter.hit(client)
            if wait is not None:
                retry_after = str(max(1, math.ceil(wait)))
                raise ApiError(
                    429,
                    "rate_limited",
                    f"more than {limiter.limit} generations per minute; retry in {retry_after}s",
                    headers={"Retry-After": retry_after},
                )
    return await handler(request)


# -- the access log ---------------------------------------------------------------------------------------

_KEY_IN_QUERY = re.compile(r"(?i)((?:^|[?&;])api_key=)[^&;\s\"]*")
_SECRET_HEADERS = frozenset({"authorization", "x-api-key", "cookie"})
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """``?api_key=...`` values in a logged URL replaced by ``[redacted]``."""
    return _KEY_IN_QUERY.sub(lambda m: m.group(1) + REDACTED, text)


class RedactingAccessLogger(AccessLogger):
    """aiohttp's access log, minus secrets: no ``api_key`` query value, no key or cookie header."""

    def _format_line(
        self, request: BaseRequest, response: StreamResponse, time: float
    ) -> Iterable[tuple[Any, str]]:
        out: list[tuple[Any, str]] = []
        for key, value in super()._format_line(request, response, time):
            if isinstance(key, tuple) and str(key[1]).lower() in _SECRET_HEADERS and value != "-":
                value = REDACTED
            out.append((key, redact(value) if isinstance(value, str) else value))
        return out
