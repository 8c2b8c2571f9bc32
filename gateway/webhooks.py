"""Provider webhooks in, ``clip.completed`` out; and the local provider's output files.

The order is deliberate: verify the signature on the raw bytes before parsing anything (an unsigned
body is never even decoded), then check the prediction is one we made, then dedupe on ``webhook-id``
(providers redeliver), then publish, and only then answer 2xx. If the publish fails the dedupe mark is
removed and we answer 503, so the provider's retry gets a second chance instead of being discarded as
a duplicate.

A signature proves the provider sent the webhook, not that we asked for the prediction: anyone holding
the account's token can create one with our URL and any ``?marker=`` (which the signature does not
cover). So a webhook is attached to a clip only for a prediction id we recorded, or, for one not recorded
yet, a marker naming a submission intent we wrote before calling the provider and not bound to another
prediction. Anything else is logged, its prediction canceled at the provider (in the background,
bounded) and answered 2xx, so the provider stops retrying.

Under load, the terminal webhooks of recorded predictions (nearly all of them) are resolved and marked as
seen for many requests at once: one statement per batch (:data:`DELIVERIES`, a
:class:`~gateway.batching.GroupCommit`) instead of two round trips each. The rest (progress updates,
predictions not recorded in Postgres, which may still be in Redis or named by a marker) take the path
above one by one.
"""

import asyncio
import functools
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp import web
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from gateway.batching import BurstLog, GroupCommit
from gateway.body import read_body
from gateway.database import connection
from gateway.deps import GatewayDeps, get_deps
from gateway.errors import ApiError, not_found, request_id
from gateway.publishing import PublishFailed, gateway_event, publish
from gateway.telemetry import exporting
from reelstream import logs, mapping, metrics, tracing
from reelstream.providers import outcome_event_id, parse_marker
from reelstream.webhooks import InvalidWebhook, verify
from schemas import topics
from schemas.api import field_errors
from schemas.events import ClipCompleted, Prediction

log = logging.getLogger(__name__)

for _outcome in ("accepted", "duplicate", "ignored", "unauthorized", "invalid", "unknown_prediction"):
    metrics.WEBHOOKS.labels(_outcome)  # at 0 from the start: a dashboard shows "none yet"
routes = web.RouteTableDef()

WEBHOOK_BODY_LIMIT = 1024 * 1024
_SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
_OUTPUT_NAME_RE = re.compile(r"^[a-z0-9_]{1,64}\.mp4\Z")
#: Bound on one cancel of a prediction that is not ours; it runs off the request path.
UNTRUSTED_CANCEL_TIMEOUT_SECONDS = 10.0
#: Cancels in flight at most: a flood of strangers' webhooks cannot pile up tasks.
MAX_PENDING_CANCELS = 100


def outcome_log() -> BurstLog:
    """The INFO line of each published outcome (see :class:`~gateway.batching.BurstLog`)."""
    return BurstLog(
        log,
        one="%s %s attempt %d: prediction %s %s",
        many="webhooks published: ",
        item="%s %s attempt %d: prediction %s %s",
    )


OUTCOME_LOG = web.AppKey("reelstream_outcome_log", BurstLog)

#: Predictions being canceled because their webhook was not ours, by prediction id.
CANCELS = web.AppKey("reelstream_untrusted_cancels", dict[str, "asyncio.Task[None]"])


#: Each outcome's counter, and its answer's body, made once.
_OUTCOMES: dict[str, tuple[Any, bytes]] = {}


def _answer(outcome: str, status: int = 200) -> web.Response:
    found = _OUTCOMES.get(outcome)
    if found is None:
        body = json.dumps({"status": outcome}).encode()
        found = _OUTCOMES[outcome] = (metrics.WEBHOOKS.labels(outcome), body)
    found[0].inc()
    return web.Response(body=found[1], status=status, content_type="application/json", charset="utf-8")


async def _resolve(
    conn: asyncpg.Connection, deps: GatewayDeps, prediction_id: str, mark: str | None
) -> mapping.ClipRef | None:
    """(generation, clip, attempt) of a prediction we made; None for one we did not.

    Our records first (Redis cache, ``predictions``); they always win over the marker. Else the marker,
    trusted only when it names a submission intent (written before the provider was called) whose
    prediction is still unknown or is this one: a fast webhook that beats the recording of its
    submission, or a create whose answer was lost. The intent's own columns win over the marker's text.
    """
    ref = await mapping.lookup(deps.redis, conn, prediction_id)
    if ref is not None:
        return ref
    parsed = parse_marker(mark) if mark else None
    if parsed is None:
        return None
    intent = await conn.fetchrow(
        "SELECT generation_id, clip_id, attempt, prediction_id FROM submissions WHERE marker = $1", mark
    )
    if intent is None or intent["prediction_id"] not in (None, prediction_id):
        return None
    return mapping.ClipRef(
        intent["generation_id"] or parsed[0],
        intent["clip_id"] or parsed[1],
        intent["attempt"] if intent["attempt"] is not None else parsed[2],
    )


@dataclass(frozen=True)
class Delivery:
    """A verified terminal webhook to resolve and mark as seen."""

    webhook_id: str
    prediction_id: str


@dataclass(frozen=True)
class Resolved:
    """What the batch found: the prediction's clip, and whether this ``webhook-id`` is new."""

    ref: mapping.ClipRef
    fresh: bool
    #: The trace context of the span that submitted the prediction: its webhook continues that trace.
    traceparent: str | None = None


#: For each delivery whose prediction is recorded: its clip, and whether this delivery was new (its
#: ``webhook-id`` inserted now). The first of two equal ids in one batch wins (``DISTINCT ON``, by ``n``).
_RESOLVE_AND_MARK = """
WITH d AS (
    SELECT * FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS d(webhook_id, prediction_id, n)
), known AS (
    SELECT d.n, d.webhook_id, d.prediction_id, p.generation_id, p.clip_id, p.attempt, p.traceparent
    FROM d JOIN predictions p ON p.prediction_id = d.prediction_id
), fresh AS (
    INSERT INTO webhook_deliveries (webhook_id, prediction_id)
    SELECT DISTINCT ON (webhook_id) webhook_id, prediction_id FROM known ORDER BY webhook_id, n
    ON CONFLICT DO NOTHING
    RETURNING webhook_id
)
SELECT k.n, k.webhook_id, k.generation_id, k.clip_id, k.attempt, k.traceparent,
    f.webhook_id IS NOT NULL AS fresh
FROM known k LEFT JOIN fresh f ON f.webhook_id = k.webhook_id
ORDER BY k.n
"""


async def resolve_and_mark(deps: GatewayDeps, deliveries: Sequence[Delivery]) -> list[Resolved | None]:
    """One statement for many deliveries: None for a prediction not recorded (the caller looks further)."""
    async with connection(deps) as conn:
        records = await conn.fetch(
            _RESOLVE_AND_MARK,
            [d.webhook_id for d in deliveries],
            [d.prediction_id for d in deliveries],
        )
    found: list[Resolved | None] = [None] * len(deliveries)
    claimed: set[str] = set()
    for r in records:
        # The same webhook-id twice in one batch: only the first is new, like two requests in a row.
        fresh = bool(r["fresh"]) and r["webhook_id"] not in claimed
        if fresh:
            claimed.add(r["webhook_id"])
        found[r["n"] - 1] = Resolved(
            mapping.ClipRef(r["generation_id"], r["clip_id"], r["attempt"]), fresh, r["traceparent"]
        )
    return found


def delivery_writer(deps: GatewayDeps) -> GroupCommit[Delivery, Resolved | None]:
    return GroupCommit(functools.partial(resolve_and_mark, deps), name="webhook-deliveries")


DELIVERIES: web.AppKey[GroupCommit[Delivery, Resolved | None]] = web.AppKey(
    "reelstream_webhook_deliveries", GroupCommit
)


async def _cancel_quietly(deps: GatewayDeps, prediction_id: str) -> None:
    """Best effort: a prediction we fail to cancel ends on its own; its webhooks stay refused."""
    if deps.provider is None:
        return
    try:
        await asyncio.wait_for(deps.provider.cancel(prediction_id), timeout=UNTRUSTED_CANCEL_TIMEOUT_SECONDS)
        log.info("canceled prediction %s, which is not ours", prediction_id)
    except Exception as exc:
        log.warning(
            "could not cancel prediction %s, which is not ours: %s", prediction_id, type(exc).__name__
        )


def cancel_in_background(app: web.Application, deps: GatewayDeps, prediction_id: str) -> None:
    """Start canceling ``prediction_id`` without holding up the webhook's answer (once per id at a time)."""
    pending = app[CANCELS]
    if prediction_id in pending:
        return
    if len(pending) >= MAX_PENDING_CANCELS:
        log.warning("too many cancels in flight; prediction %s is left to end on its own", prediction_id)
        return
    task = asyncio.create_task(_cancel_quietly(deps, prediction_id), name=f"cancel-{prediction_id}")
    pending[prediction_id] = task
    task.add_done_callback(lambda _: pending.pop(prediction_id, None))


async def stop_cancels(app: web.Application) -> None:
    """On cleanup: the cancels still running are abandoned (best effort, and shutdown is bounded)."""
    tasks = list(app[CANCELS].values())
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _refuse(
    request: web.Request, deps: GatewayDeps, webhook_id: str, prediction: Prediction, mark: str | None
) -> web.Response:
    """Not a submission of ours: log who it claims to be for, cancel it, and answer 2xx.

    Not recorded as seen: a redelivery once the submission is recorded would still get through.
    """
    parsed = parse_marker(mark) if mark else None
    log.warning(
        "webhook %s for prediction %s (%s) is not from a submission of ours%s; canceling the prediction",
        webhook_id,
        prediction.id,
        prediction.status,
        f" (its marker names {parsed[0]} {parsed[1]} attempt {parsed[2]})" if parsed else "",
    )
    cancel_in_background(request.app, deps, prediction.id)
    return _answer("unknown_prediction")


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
    mark = request.query.get("marker")

    batched = None
    if prediction.terminal:
        # Our records win over the marker: a prediction recorded in Postgres is resolved (and its
        # delivery marked) together with the other webhooks arriving now. Redis would not save the
        # round trip here: marking the delivery needs Postgres anyway.
        batched = await request.app[DELIVERIES].submit(Delivery(webhook_id, prediction.id))
    traceparent = None
    if batched is not None:
        resolved, fresh, traceparent = batched.ref, batched.fresh, batched.traceparent
    else:
        async with connection(deps) as conn:
            found = await _resolve(conn, deps, prediction.id, mark)
            if found is None:
                # Progress updates too: a stranger's prediction still running is the one worth canceling.
                return _refuse(request, deps, webhook_id, prediction, mark)
            if not prediction.terminal:
                return _answer("ignored")  # progress updates: the clip's fate is decided by the terminal one
            resolved = found
            fresh = await conn.fetchval(
                "INSERT INTO webhook_deliveries (webhook_id, prediction_id) VALUES ($1, $2)"
                " ON CONFLICT DO NOTHING RETURNING true",
                webhook_id,
                prediction.id,
            )
    if not fresh:
        return _answer("duplicate")
    generation_id = resolved.generation_id
    logs.bind(generation_id=generation_id, prediction_id=prediction.id)
    if traceparent is None and not exporting():
        # The span would be the API's invalid no-op one: the event would carry no trace either way.
        return await _publish_outcome(request, deps, resolved, prediction, webhook_id)
    with tracing.span(
        "webhook clip.completed",
        traceparent=traceparent,  # the submission's: one generation, one trace
        kind=SpanKind.SERVER,
        attributes={"reelstream.generation_id": generation_id, "reelstream.prediction_id": prediction.id},
    ):
        return await _publish_outcome(request, deps, resolved, prediction, webhook_id)


async def _publish_outcome(
    request: web.Request,
    deps: GatewayDeps,
    resolved: mapping.ClipRef,
    prediction: Prediction,
    webhook_id: str,
) -> web.Response:
    """Put a new terminal outcome on ``clip.completed``; if the broker cannot take it, forget the
    delivery and answer 503, so the provider retries it."""
    generation_id, clip_id, attempt = resolved
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
        async with connection(deps) as conn:
            await conn.execute("DELETE FROM webhook_deliveries WHERE webhook_id = $1", webhook_id)
        metrics.WEBHOOKS.labels("unavailable").inc()
        raise ApiError(503, "unavailable", "could not record the webhook; retry later") from None
    request.app[OUTCOME_LOG].add(generation_id, clip_id, attempt, prediction.id, prediction.status)
    return _answer("accepted")


@routes.get("/provider/outputs/{name}")
async def provider_output(request: web.Request) -> web.StreamResponse:
    """The local provider's renders, fetched by completion over HTTP exactly like Replicate outputs."""
    name = request.match_info["name"]
    if not _OUTPUT_NAME_RE.fullmatch(name):
        raise not_found("no such output")
    path = get_deps(request).settings.data_dir / "provider" / name
    if not await asyncio.to_thread(path.is_file):
        raise not_found("no such output")
    return web.FileResponse(path, headers={"Content-Type": "video/mp4"})
