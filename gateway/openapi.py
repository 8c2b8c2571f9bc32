"""``GET /api/v1/openapi.json``: the OpenAPI 3.1 description of every route.

Component schemas come straight from the pydantic models in ``schemas.api`` (request bodies in
validation mode, responses in serialization mode), so the document cannot drift from what the
handlers actually accept and return. Paths are written here, next to nothing else, on purpose: a
test checks that every route the app registers appears in the document.
"""

from collections.abc import Mapping
from functools import cache
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from gateway.generations import IDEMPOTENCY_PATTERN, STATUS_FILTER_PATTERN
from schemas.api import (
    ClipMessage,
    ErrorBody,
    Estimate,
    GenerationCreated,
    GenerationDetail,
    GenerationPage,
    GenerationRequest,
    SessionRequest,
    SnapshotMessage,
    StatusMessage,
)
from schemas.events import Prediction

routes = web.RouteTableDef()

_REF = "#/components/schemas/{model}"
_INPUTS: tuple[type[BaseModel], ...] = (GenerationRequest, SessionRequest, Prediction)
_OUTPUTS: tuple[type[BaseModel], ...] = (
    GenerationCreated,
    GenerationPage,
    GenerationDetail,
    Estimate,
    ErrorBody,
    SnapshotMessage,
    StatusMessage,
    ClipMessage,
)


def _json(ref: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": ref}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json({"$ref": _REF.format(model="ErrorBody")})}


def _path_param(name: str, pattern: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "pattern": pattern},
    }


_GEN_ID = _path_param("generation_id", r"^gen_[0-9a-f]{32}$", "The generation id")
_CLIP_ID = _path_param("clip_id", r"^clip_[0-9]{2,3}$", "The clip id")
_MP4 = {"video/mp4": {"schema": {"type": "string", "format": "binary"}}}


def _document(
    refs: Mapping[tuple[Any, JsonSchemaMode], dict[str, Any]], defs: dict[str, Any]
) -> dict[str, Any]:
    def inp(model: type[BaseModel]) -> dict[str, Any]:
        return refs[(model, "validation")]

    def out(model: type[BaseModel]) -> dict[str, Any]:
        return refs[(model, "serialization")]

    auth_errors = {"401": _error("API keys are configured and none (or a wrong one) was sent")}
    body_errors = {
        "400": _error("`invalid_json`: the body is not JSON"),
        "408": _error("`request_timeout`: the body did not arrive within the body-read timeout"),
        "413": _error("`payload_too_large`: the body is over 64 KiB"),
        "415": _error("`unsupported_media_type`: Content-Type is not application/json"),
        "422": _error(
            "`validation_error`: `details` names every bad field; `budget_exceeded` (create only): the"
            " estimate is above `options.max_cost_usd`"
        ),
    }
    not_found = {"404": _error("`not_found`: unknown or malformed id, or another API key's generation")}
    bad_range = {"416": {"description": "The Range lies outside the file (Content-Range gives its size)"}}
    db_down = {"503": _error("`unavailable`: the database is unavailable; retry after `Retry-After` seconds")}
    request_body = {"required": True, "content": _json(inp(GenerationRequest))}
    paths: dict[str, Any] = {
        "/api/v1/generations": {
            "post": {
                "operationId": "createGeneration",
                "summary": "Submit a prompt; the video is generated asynchronously",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": "Same key and body within 24 h return the same generation (200); "
                        "a different body is 409 `conflict`",
                        "schema": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 255,
                            "pattern": IDEMPOTENCY_PATTERN,
                        },
                    }
                ],
                "requestBody": request_body,
                "responses": {
                    "202": {"description": "Queued", "content": _json(out(GenerationCreated))},
                    "200": {"description": "Idempotent replay", "content": _json(out(GenerationCreated))},
                    **body_errors,
                    **auth_errors,
                    "409": _error("`conflict`: the Idempotency-Key was used with a different body"),
                    "429": _error("`rate_limited`: see Retry-After"),
                    "503": _error(
                        "`unavailable`: the job queue is down, or the database is and an Idempotency-Key "
                        "was sent (without one, the order is still taken); see Retry-After"
                    ),
                },
            },
            "get": {
                "operationId": "listGenerations",
                "summary": "Generations, newest first, keyset-paginated",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                    },
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "status",
                        "in": "query",
                        "description": "One status, or several separated by commas",
                        "schema": {"type": "string", "pattern": STATUS_FILTER_PATTERN},
                    },
                ],
                "responses": {
                    "200": {"description": "A page", "content": _json(out(GenerationPage))},
                    "422": _error("`validation_error`: bad limit, cursor or status"),
                    **auth_errors,
                    **db_down,
                },
            },
        },
        "/api/v1/generations/{generation_id}": {
            "get": {
                "operationId": "getGeneration",
                "parameters": [_GEN_ID],
                "responses": {
                    "200": {
                        "description": "The generation (while the database is unavailable: as far as this "
                        "gateway knows it, with nulls where it knows nothing)",
                        "content": _json(out(GenerationDetail)),
                    },
                    **not_found,
                    **auth_errors,
                    "503": _error("`unavailable`: the database is unavailable and this id was not seen here"),
                },
            }
        },
        "/api/v1/generations/{generation_id}/cancel": {
            "post": {
                "operationId": "cancelGeneration",
                "parameters": [_GEN_ID],
                "responses": {
                    "202": {"description": "Canceled", "content": _json(out(GenerationDetail))},
                    **not_found,
                    "409": _error("`conflict`: the generation has already ended"),
                    "403": _error("`forbidden`: a cross-site request (form content type, foreign Origin)"),
                    **auth_errors,
                    **db_down,
                },
            }
        },
        "/api/v1/generations/{generation_id}/video": {
            "get": {
                "operationId": "getVideo",
                "parameters": [_GEN_ID],
                "responses": {
                    "200": {"description": "The final MP4 (Range supported)", "content": _MP4},
                    "206": {"description": "Part of the MP4", "content": _MP4},
                    **bad_range,
                    "302": {"description": "Redirect to a presigned URL (S3 storage)"},
                    "404": _error("`not_found`: unknown id, or not completed yet"),
                    **auth_errors,
                    **db_down,
                },
            }
        },
        "/api/v1/generations/{generation_id}/thumbnail": {
            "get": {
                "operationId": "getThumbnail",
                "parameters": [_GEN_ID],
                "responses": {
                    "200": {"description": "The JPEG thumbnail", "content": {"image/jpeg": {}}},
                    "302": {"description": "Redirect to a presigned URL (S3 storage)"},
                    "404": _error("`not_found`: unknown id, or not completed yet"),
                    **auth_errors,
                    **db_down,
                },
            }
        },
        "/api/v1/generations/{generation_id}/clips/{clip_id}/video": {
            "get": {
                "operationId": "getClipVideo",
                "parameters": [_GEN_ID, _CLIP_ID],
                "responses": {
                    "200": {"description": "The clip's MP4 (Range supported)", "content": _MP4},
                    "206": {"description": "Part of the MP4", "content": _MP4},
                    **bad_range,
                    "302": {"description": "Redirect to a presigned URL (S3 storage)"},
                    "404": _error("`not_found`: unknown ids, or the clip is not stored yet"),
                    **auth_errors,
                    **db_down,
                },
            }
        },
        "/api/v1/estimates": {
            "post": {
                "operationId": "estimate",
                "summary": "Plan and price a request without generating anything",
                "requestBody": request_body,
                "responses": {
                    "200": {"description": "The plan and its cost", "content": _json(out(Estimate))},
                    **body_errors,
                    **auth_errors,
                },
            }
        },
        "/api/v1/webhooks/replicate": {
            "post": {
                "operationId": "replicateWebhook",
                "summary": "Replicate prediction webhooks (Standard Webhooks signature, 5-minute tolerance)",
                "parameters": [
                    {"name": name, "in": "header", "required": True, "schema": {"type": "string"}}
                    for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
                ]
                + [{"name": "marker", "in": "query", "required": False, "schema": {"type": "string"}}],
                "requestBody": {"required": True, "content": _json(inp(Prediction))},
                "responses": {
                    "200": {
                        "description": "Accepted, duplicate, ignored (not terminal) or unknown prediction "
                        "(not from a submission of ours: not attached, and canceled at the provider)",
                        "content": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "status": {
                                        "enum": ["accepted", "duplicate", "ignored", "unknown_prediction"]
                                    }
                                },
                            }
                        ),
                    },
                    "401": _error("`unauthorized`: missing, bad or stale signature"),
                    "408": _error("`request_timeout`: the body did not arrive within the body-read timeout"),
                    "413": _error("`payload_too_large`: over 1 MiB"),
                    "422": _error("`validation_error`: not a prediction"),
                    "503": _error("`unavailable`: could not be checked or queued; the provider retries"),
                },
            }
        },
        "/ws/generations/{generation_id}": {
            "get": {
                "operationId": "watchGeneration",
                "summary": "WebSocket: a `snapshot`, then `status` and `clip` messages; closes 1000 after "
                "the terminal status, 4404 for an unknown id, 1013 when the client reads too slowly",
                "parameters": [
                    _GEN_ID,
                    {"name": "api_key", "in": "query", "required": False, "schema": {"type": "string"}},
                ],
                "responses": {
                    "101": {
                        "description": "Switching protocols; messages are SnapshotMessage, StatusMessage "
                        "and ClipMessage",
                        "content": _json(
                            {"oneOf": [out(SnapshotMessage), out(StatusMessage), out(ClipMessage)]}
                        ),
                    },
                    **auth_errors,
                },
            }
        },
        "/api/v1/openapi.json": {
            "get": {
                "operationId": "openapi",
                "responses": {
                    "200": {"description": "This document", "content": _json({"type": "object"})},
                    **auth_errors,
                },
            }
        },
        "/healthz": {"get": {"operationId": "healthz", "responses": {"200": {"description": "Alive"}}}},
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "responses": {
                    "200": {"description": "Database and broker answer"},
                    "503": {"description": "Not ready; `checks` says which dependency failed"},
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "responses": {
                    "200": {"description": "Prometheus text format", "content": {"text/plain": {}}}
                },
            }
        },
        "/provider/outputs/{name}": {
            "get": {
                "operationId": "providerOutput",
                "summary": "Files rendered by the local video provider (its prediction outputs point here)",
                "parameters": [_path_param("name", r"^[a-z0-9_]{1,64}\.mp4$", "Output file name")],
                "responses": {"200": {"description": "The MP4", "content": _MP4}, **not_found},
            }
        },
        "/api/v1/session": {
            "post": {
                "operationId": "createSession",
                "summary": "Trade an API key for a browser session cookie (media and the WebSocket)",
                "description": "Sets `reelstream_session`: HttpOnly, SameSite=Strict, Path=/, Secure over "
                "https; an opaque signed token, not the key, valid 12 h. The cookie authenticates GET and "
                "HEAD requests (videos, thumbnails, the WebSocket, reads); changes still need the key in a "
                "header. With no API keys configured: 204 and no cookie.",
                "security": [{}],
                "requestBody": {"required": True, "content": _json(inp(SessionRequest))},
                "responses": {
                    "204": {"description": "Session cookie set"},
                    **body_errors,
                    "401": _error("`unauthorized`: the key is not one of the configured keys"),
                },
            },
            "delete": {
                "operationId": "deleteSession",
                "summary": "Forget the browser session cookie",
                "security": [{}],
                "responses": {"204": {"description": "Cookie cleared"}},
            },
        },
        "/": {
            "get": {
                "operationId": "webPage",
                "responses": {"200": {"description": "The web page", "content": {"text/html": {}}}},
            }
        },
        "/static/{name}": {
            "get": {
                "operationId": "webPageFile",
                "summary": "The web page's script and style sheet",
                "parameters": [_path_param("name", r"^app\.(js|css)$", "File name")],
                "responses": {
                    "200": {
                        "description": "The file",
                        "content": {"text/javascript": {}, "text/css": {}},
                    },
                    **not_found,
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "reelstream",
            "version": "1.0.0",
            "description": "Prompt in, finished short video out. Every error body is "
            '`{"error": {"code", "message", "details"?}}`.',
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": defs,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "session": {"type": "apiKey", "in": "cookie", "name": "reelstream_session"},
            },
        },
        "security": [{}, {"bearer": []}, {"apiKey": []}, {"session": []}],
    }


@cache
def openapi_document() -> dict[str, Any]:
    pairs: list[tuple[type[BaseModel], JsonSchemaMode]] = [(m, "validation") for m in _INPUTS]
    pairs += [(m, "serialization") for m in _OUTPUTS]
    refs, top = models_json_schema(pairs, ref_template=_REF)
    return _document(refs, dict(top.get("$defs", {})))


@routes.get("/api/v1/openapi.json")
async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())
