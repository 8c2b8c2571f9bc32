"""Provider webhooks in, ``clip.completed`` out; and the local provider's output files.

The order is deliberate: verify the signature on the raw bytes before parsing anything (an unsigned
body is never even decoded), then dedupe on ``webhook-id`` (providers redeliver), then publish, and
only then answer 2xx. If the publish fails the dedupe mark is removed and we answer 503, so the
provider's retry gets a second chance instead of being discarded as a duplicate.
"""

import asyncio
import logging
import re

from aiohttp import web
from pydantic import ValidationError

from gateway.body import read_body
from gateway.deps import GatewayDeps, get_deps
from gateway.errors import ApiError, not_found, request_id
from gateway.publishing import PublishFailed, gateway_event, publish
from reelstream import mapping, metrics
from reelstream.providers import outcome_event_id, parse_marker
from reelstream.webhooks import InvalidWebhook, verify
from schemas import topics
from schemas.api import field_errors
from schemas.events import ClipCompleted, Prediction

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

WEBHOOK_BODY_LIMIT = 1024 * 1024
_SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
_OUTPUT_NAME_RE = re.compile(r"^[a-z0-9_]{1,64}\.mp4$")


def _answer(outcome: str, status: int = 200) -> web.Response:
    metrics.WEBHOOKS.labels(outcome).inc()
    return web.json_response({"status": outcome}, status=status)


async def _resolve(deps: GatewayDeps, prediction_id: str, mark: str | None) -> mapping.ClipRef | None:
    """(generation, clip, attempt) of a prediction: from our records, else from the URL's marker.

    The marker covers a webhook that beats the recording of its submission (fast renders, or a create
    whose response was lost). The marker is not signed, so it is only trusted for a generation that
    exists, and never overrides what the records say.
    """
    ref = await mapping.lookup(deps.redis, deps.pool, prediction_id)
    if ref is not None:
        return ref
    parsed = parse_marker(mark) if mark else None
    if parsed is None:
        return None
    exists = await deps.pool.fetchval("SELECT true FROM generations WHERE id = $1", parsed[0])
    return mapping.ClipRef(*parsed) if exists else None


async def _secret(deps: GatewayDeps) -> str:
    if isinstance(deps.webhook_secret, str):
        return deps.webhook_secret
    try:
        return await deps.webhook_secret.get()
    except Exception as exc:
        log.error("no webhook secret from the provider, asking it to retry: %r", exc)
        metrics.WEBHOOKS.labels("unavailable").inc()
        raise ApiError(503, "unavailable", "cannot verify webhooks right now; retry later") from None


@routes.post("/api/v1/webhooks/replicate")
async def replicate_webhook(request: web.Request) -> web.Response:
    deps = get_deps(request)
    body = await read_body(request, WEBHOOK_BODY_LIMIT)
    headers = {name: request.headers.get(name, "") for name in _SIGNATURE_HEADERS}
    try:
        payload = verify(await _secret(deps), body, headers)
    except InvalidWebhook as exc:
        metrics.WEBHOOKS.labels("unauthorized").inc()
        log.warning("rejected webhook (request %s): %s", request_id(request), exc)
        raise ApiError(401, "unauthorized", "missing, invalid or expired webhook signature") from None
    webhook_id = headers["webhook-id"]
    try:
        prediction = Prediction.model_validate(payload)
    except ValidationError as exc:
        metrics.WEBHOOKS.labels("invalid").inc()
        raise ApiError(
            422,
            "validation_error",
            "the webhook body is not a prediction",
            details=field_errors(exc.errors(include_url=False, include_input=False)),
        ) from None
    if not prediction.terminal:
        return _answer("ignored")  # progress updates: the clip's fate is decided by the terminal one

    resolved = await _resolve(deps, prediction.id, request.query.get("marker"))
    if resolved is None:
        # Answer 2xx: the provider retrying cannot make an unknown prediction known. Not recorded as
        # seen, so a redelivery after the submission is recorded still gets through.
        log.warning("webhook %s for unknown prediction %s ignored", webhook_id, prediction.id)
        return _answer("unknown_prediction")
    generation_id, clip_id, attempt = resolved

    fresh = await deps.pool.fetchval(
        "INSERT INTO webhook_deliveries (webhook_id, prediction_id) VALUES ($1, $2)"
        " ON CONFLICT DO NOTHING RETURNING true",
        webhook_id,
        prediction.id,
    )
    if not fresh:
        return _answer("duplicate")

    event = gateway_event(
        topics.CLIP_COMPLETED,
        ClipCompleted(
            generation_id=generation_id,
            clip_id=clip_id,
            attempt=attempt,
            prediction=prediction,
            webhook_id=webhook_id,
        ),
        subject=generation_id,
        event_id=outcome_event_id(prediction),
    )
    try:
        await publish(deps.producer, [(topics.CLIP_COMPLETED, event)])
    except PublishFailed as exc:
        log.error("webhook %s not published, asking the provider to retry: %s", webhook_id, exc)
        await deps.pool.execute("DELETE FROM webhook_deliveries WHERE webhook_id = $1", webhook_id)
        metrics.WEBHOOKS.labels("unavailable").inc()
        raise ApiError(503, "unavailable", "could not record the webhook; retry later") from None
    log.info(
        "%s %s attempt %d: prediction %s %s",
        generation_id,
        clip_id,
        attempt,
        prediction.id,
        prediction.status,
    )
    return _answer("accepted")


@routes.get("/provider/outputs/{name}")
async def provider_output(request: web.Request) -> web.StreamResponse:
    """The local provider's renders, fetched by completion over HTTP exactly like Replicate outputs."""
    name = request.match_info["name"]
    if not _OUTPUT_NAME_RE.match(name):
        raise not_found("no such output")
    path = get_deps(request).settings.data_dir / "provider" / name
    if not await asyncio.to_thread(path.is_file):
        raise not_found("no such output")
    return web.FileResponse(path, headers={"Content-Type": "video/mp4"})
