"""Reading request bodies with a hard size cap, and turning JSON bodies into validated models.

The cap is enforced twice: on the declared ``Content-Length`` (reject before reading anything) and on
the bytes actually received (a chunked or lying client cannot make us buffer more than the cap).
"""

import asyncio
import json
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from gateway.deps import get_deps
from gateway.errors import ApiError
from schemas.api import field_errors

M = TypeVar("M", bound=BaseModel)

#: ``POST /api/v1/generations`` and ``/estimates`` bodies (the contract's 64 KiB).
REQUEST_BODY_LIMIT = 64 * 1024
_JSON_TYPES = ("application/json",)


def too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"request body is larger than {limit} bytes")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The raw body, at most ``limit`` bytes, else 413 ``payload_too_large``; 408 ``request_timeout``
    when it takes longer than ``gateway_body_timeout_seconds`` to arrive (a trickling client must not
    hold a connection and a handler forever)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    seconds = get_deps(request).settings.gateway_body_timeout_seconds
    try:
        async with asyncio.timeout(seconds):
            while True:
                chunk = await request.content.read(min(1 << 16, limit + 1 - size))
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise too_large(limit)
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(
            408, "request_timeout", f"the request body did not arrive within {seconds:g}s"
        ) from None
    return b"".join(chunks)


def is_json(request: web.Request) -> bool:
    ctype = request.content_type.lower()
    return ctype in _JSON_TYPES or (ctype.startswith("application/") and ctype.endswith("+json"))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw: bytes) -> Any:
    """Strict JSON (no NaN/Infinity); anything unparseable is 400 ``invalid_json``."""
    if not raw.strip():
        raise ApiError(400, "invalid_json", "request body is empty; expected a JSON object")
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        message = exc.msg if isinstance(exc, json.JSONDecodeError) else "malformed JSON"
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {message}") from None


def validate(model: type[M], payload: Any) -> M:
    """422 ``validation_error`` naming every bad field by its dotted path (``brand.colors.0``)."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        details = field_errors(exc.errors(include_url=False, include_input=False))
        raise ApiError(422, "validation_error", "the request body is invalid", details=details) from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "request body is nested too deeply") from None


#: Tokens pydantic's JSON parser takes as numbers but strict JSON (:func:`parse_json`) refuses.
_NON_JSON_NUMBERS = (b"NaN", b"Infinity")


def parse_and_validate(model: type[M], raw: bytes) -> M:
    """:func:`validate` of :func:`parse_json`, in one pass through pydantic's own parser when it can.

    ``model_validate_json`` parses and validates in Rust, without the intermediate Python objects: a
    body it accepts is one the two steps accept too, with the same result (it refuses what
    ``json.loads`` refuses, save ``NaN`` and ``Infinity``, which go the long way). Anything it refuses
    is parsed and validated again the long way, so every failure keeps its exact status, code and details
    (400 ``invalid_json`` or 422 ``validation_error``), and the few bodies only ``json.loads`` reads (a
    UTF-8 byte order mark, UTF-16) are still accepted.
    """
    if not any(token in raw for token in _NON_JSON_NUMBERS):
        try:
            return model.model_validate_json(raw)
        except (ValidationError, RecursionError):
            pass
    return validate(model, parse_json(raw))


async def json_body(request: web.Request, model: type[M], *, limit: int = REQUEST_BODY_LIMIT) -> M:
    """Size, media type, JSON syntax, then schema: each failure with its own status and code."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise too_large(limit)
    if not is_json(request):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"expected Content-Type application/json, got {request.content_type!r}",
        )
    return parse_and_validate(model, await read_body(request, limit))
