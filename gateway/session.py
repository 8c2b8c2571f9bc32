"""Browser sessions: a signed cookie so ``<video>``, ``<img>`` and the WebSocket authenticate without a key.

A browser cannot put an ``Authorization`` header on a media element's request or a WebSocket handshake,
and a key in the URL ends up in logs, histories and referrers. ``POST /api/v1/session`` trades a key for
an HttpOnly, SameSite=Strict cookie; :func:`key_from_cookie` turns the cookie back into the key it stands
for, so the rest of the gateway (ownership, rate limits) sees the same identity a Bearer key gives.

The token is ``<key digest>.<expiry>.<signature>``: the digest says which configured key it was issued
for (never the key itself), the signature is an HMAC-SHA256 made with that key. No extra secret to
share between gateway processes, and removing a key from ``REELSTREAM_API_KEYS`` ends its sessions.
The cookie is honoured only on safe methods (GET, HEAD: media and the WebSocket); anything that changes
state still needs the key in a header, so a forged cross-site request has nothing to ride on.
"""

import base64
import hashlib
import hmac
import time
from collections.abc import Iterable

from aiohttp import web

from gateway.body import json_body
from gateway.deps import get_deps
from gateway.errors import ApiError
from schemas.api import SessionRequest

routes = web.RouteTableDef()

COOKIE_NAME = "reelstream_session"
SESSION_PATH = "/api/v1/session"
#: How long a browser session lasts; the page asks for the key again after it.
SESSION_SECONDS = 12 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD"})


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _signature(key: str, digest: str, expires: int) -> str:
    mac = hmac.new(key.encode(), f"reelstream-session|{digest}|{expires}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")


def issue(key: str, *, now: float | None = None) -> str:
    """A session token for ``key``, valid for :data:`SESSION_SECONDS`."""
    expires = int((time.time() if now is None else now) + SESSION_SECONDS)
    digest = _digest(key)
    return f"{digest}.{expires}.{_signature(key, digest, expires)}"


def verify(token: str, keys: Iterable[str], *, now: float | None = None) -> str | None:
    """The configured key ``token`` was issued for, if its signature holds and it has not expired."""
    digest, _, rest = token.partition(".")
    expires_text, _, signature = rest.partition(".")
    if not expires_text.isdigit() or len(expires_text) > 12 or not signature:
        return None
    expires = int(expires_text)
    if expires < (time.time() if now is None else now):
        return None
    found: str | None = None
    for key in keys:  # every key, so timing does not say which digest matched
        expected = _signature(key, _digest(key), expires)
        if hmac.compare_digest(_digest(key), digest) & hmac.compare_digest(expected, signature):
            found = key
    return found


def key_from_cookie(request: web.Request, keys: Iterable[str]) -> str | None:
    """The key a session cookie stands for, on safe methods only (see the module docstring)."""
    if request.method not in SAFE_METHODS:
        return None
    token = request.cookies.get(COOKIE_NAME)
    if not token or len(token) > 256:
        return None
    return verify(token, keys)


def _matching_key(presented: str, keys: Iterable[str]) -> str | None:
    found: str | None = None
    for key in keys:
        if hmac.compare_digest(presented.encode(), key.encode()):
            found = key
    return found


@routes.post(SESSION_PATH)
async def create_session(request: web.Request) -> web.Response:
    """Check the key, then set the session cookie (204). With no keys configured there is nothing to do."""
    body = await json_body(request, SessionRequest)
    keys = get_deps(request).settings.api_key_set
    response = web.Response(status=204)
    if not keys:
        return response
    key = _matching_key(body.api_key, keys)
    if key is None:
        raise ApiError(
            401, "unauthorized", "that API key is not valid", headers={"WWW-Authenticate": "Bearer"}
        )
    response.set_cookie(
        COOKIE_NAME,
        issue(key),
        max_age=SESSION_SECONDS,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@routes.delete(SESSION_PATH)
async def delete_session(request: web.Request) -> web.Response:
    """Forget the session cookie (204), whether or not there was one."""
    response = web.Response(status=204)
    response.del_cookie(COOKIE_NAME, path="/", samesite="Strict", secure=request.secure, httponly=True)
    return response
