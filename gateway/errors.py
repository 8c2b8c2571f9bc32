"""One error shape for every failure: ``{"error": {"code", "message", "details"?}}``.

Clients must be able to branch on ``code`` without ever parsing HTML or a traceback, so every
exception that leaves a handler (ours, aiohttp's routing errors, bugs) is turned into that body here.
"""

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import BaseModel

from gateway.database import DatabaseUnavailable, describe, is_outage
from gateway.deps import get_deps
from reelstream import metrics
from schemas.api import ErrorBody, ErrorDetail, FieldError

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID = web.RequestKey("reelstream_request_id", str)
#: The API key a request authenticated with (absent when the gateway is open).
PRINCIPAL = web.RequestKey("reelstream_principal", str)
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}\Z")

#: Error code for a bare aiohttp HTTP exception of a given status (routing, body size, ...).
_CODES: Mapping[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "unavailable",
}


class ApiError(Exception):
    """Raised by handlers for an expected failure; rendered as the contract's error body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: Sequence[FieldError] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = list(details) if details is not None else None
        self.headers = dict(headers or {})


def not_found(message: str = "not found") -> ApiError:
    return ApiError(404, "not_found", message)


def validation_error(field: str, message: str) -> ApiError:
    """A 422 naming one bad field (query parameters, headers)."""
    return ApiError(
        422, "validation_error", f"invalid {field}", details=[FieldError(field=field, message=message)]
    )


def json_response(
    model: BaseModel, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """Serialise a pydantic model exactly as declared (datetimes as RFC 3339)."""
    return web.Response(
        body=model.model_dump_json().encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    details: Sequence[FieldError] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body = ErrorBody(
        error=ErrorDetail(code=code, message=message, details=list(details) if details else None)
    )
    return web.Response(
        body=body.model_dump_json(exclude_none=True).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def request_id(request: web.Request) -> str:
    value: str = request.get(REQUEST_ID, "-")
    return value


def route_template(request: web.Request) -> str:
    """The matched route's template (``/api/v1/generations/{generation_id}``), never the raw path.

    Raw paths would give every generation id its own metric series.
    """
    info = request.match_info
    if info.http_exception is not None:
        return "unmatched"
    resource = info.route.resource
    return resource.canonical if resource is not None else "unmatched"


#: The counter and histogram series of each (method, route, status), looked up once: ``labels()`` takes
#: a lock and builds the key on every call. As many as the registry itself holds.
_SERIES: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def _series(method: str, route: str, status: int) -> tuple[Any, Any]:
    found = _SERIES.get((method, route, status))
    if found is None:
        found = _SERIES[method, route, status] = (
            metrics.HTTP_REQUESTS.labels(method, route, str(status)),
            metrics.HTTP_SECONDS.labels(method, route, str(status)),
        )
    return found


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: give the request an id (echoed in ``X-Request-ID``) and count it by route template."""
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    rid = incoming if _REQUEST_ID_RE.fullmatch(incoming) else uuid.uuid4().hex
    request[REQUEST_ID] = rid
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:
            response.headers[REQUEST_ID_HEADER] = rid
        return response
    except web.HTTPException as exc:  # redirects raised as exceptions (the S3 presigned URL)
        status = exc.status
        exc.headers[REQUEST_ID_HEADER] = rid
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away mid-request: not a server error
        raise
    finally:
        elapsed = time.monotonic() - started
        count, seconds = _series(request.method, route_template(request), status)
        count.inc()
        seconds.observe(elapsed)
        log.debug("%s %s %s %.1fms", request.method, request.path, status, elapsed * 1000)


def database_unavailable(request: web.Request, exc: BaseException) -> web.Response:
    """503 ``unavailable`` with ``Retry-After``: the one answer to any database outage in a request."""
    retry_after = str(get_deps(request).settings.gateway_retry_after_seconds)
    log.warning(
        "database unavailable on %s %s (request %s): %s",
        request.method,
        request.path,
        request_id(request),
        str(exc) if isinstance(exc, DatabaseUnavailable) else describe(exc),
    )
    return error_response(
        503,
        "unavailable",
        f"the database is unavailable; retry in {retry_after}s",
        headers={"Retry-After": retry_after},
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render every failure as JSON; an unexpected exception is logged with the request id, not shown.

    A database outage (:func:`gateway.database.is_outage`) is a 503 with ``Retry-After``, decided here
    once rather than in every route.
    """
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, details=exc.details, headers=exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects (the S3 presigned URL) are answers, not errors
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        code = _CODES.get(exc.status, "internal_error" if exc.status >= 500 else "bad_request")
        message = exc.reason.lower() if exc.reason else code.replace("_", " ")
        return error_response(exc.status, code, message, headers=headers)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if is_outage(exc):
            return database_unavailable(request, exc)
        log.exception(
            "unhandled error on %s %s (request %s)", request.method, request.path, request_id(request)
        )
        return error_response(
            500, "internal_error", f"internal error; quote request id {request_id(request)} when reporting it"
        )
