"""``/api/v1/generations``: create (idempotently), list, read, cancel.

Creating writes the row first and publishes ``generation.requested`` before answering 202, so the id a
client gets is immediately readable (``queued``, never 404) and is already on its way to the stages.

Under load the rows of concurrent creates share one ``INSERT`` (:mod:`gateway.batching`, a group
commit): a round trip to Postgres costs far more than a row, and a request waits for at most the insert
in flight plus its own. A request that goes away after its row was queued still leaves the row (the
reconciler drives it on). Orders with an ``Idempotency-Key`` take their own transaction (key and row).

While Postgres is unreachable (and the broker is not) orders still come in: the request goes to
``generation.requested`` without its row, and intake inserts the row (idempotently, with the same
``created_at``) once the database is back. The gateway remembers what it accepted
(:mod:`gateway.memory`), so reading the generation back works meanwhile. An order with an
``Idempotency-Key`` is refused with 503 instead: its key cannot be checked.
"""

import base64
import binascii
import functools
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, get_args

import asyncpg
from aiohttp import web
from pydantic import BaseModel

from gateway.auth import owner_of
from gateway.batching import BurstLog, GroupCommit
from gateway.body import json_body
from gateway.database import DatabaseUnavailable, connection
from gateway.deps import GatewayDeps, get_deps
from gateway.errors import ApiError, json_response, not_found, request_id, validation_error
from gateway.memory import RECENT
from gateway.publishing import PublishFailed, gateway_event, publish
from reelstream import callbacks, finishing, metrics, outstanding, status
from reelstream.detail import (
    generation_path,
    load_detail,
    summary_from_row,
    valid_generation_id,
    websocket_path,
)
from reelstream.estimates import estimate
from reelstream.events import derive_id, now
from reelstream.settings import Settings
from schemas import topics
from schemas.api import (
    TERMINAL,
    FieldError,
    GenerationCreated,
    GenerationDetail,
    GenerationPage,
    GenerationRequest,
    GenerationStatus,
    Links,
)
from schemas.envelope import CloudEvent
from schemas.events import GenerationRequested

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

IDEMPOTENCY_HEADER = "Idempotency-Key"
_IDEMPOTENCY_MAX = 255
#: Visible ASCII, inner spaces allowed (what an HTTP field value carries); also the OpenAPI pattern.
IDEMPOTENCY_PATTERN = r"^[!-~]([ -~]*[!-~])?$"
_IDEMPOTENCY_RE = re.compile(IDEMPOTENCY_PATTERN)  # used with fullmatch: no trailing newline slips by
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
#: Every status a generation can have; the list filter accepts a comma-separated subset.
_STATUSES: frozenset[str] = frozenset(get_args(GenerationStatus))
_ONE_STATUS = r"[ \t]*(" + "|".join(get_args(GenerationStatus)) + r")[ \t]*"
#: The list filter as the OpenAPI document states it: empty, or statuses separated by commas.
STATUS_FILTER_PATTERN = f"^$|^{_ONE_STATUS}(,{_ONE_STATUS})*$"


# -- create -------------------------------------------------------------------------------------------


def _idempotency_key(request: web.Request) -> str | None:
    """The header, namespaced by the caller's API key so two clients' keys can never collide."""
    value = request.headers.get(IDEMPOTENCY_HEADER)
    if value is None:
        return None
    if len(value) > _IDEMPOTENCY_MAX or not _IDEMPOTENCY_RE.fullmatch(value):
        raise validation_error(
            IDEMPOTENCY_HEADER, f"must be 1..{_IDEMPOTENCY_MAX} printable ASCII characters"
        )
    owner = owner_of(request)
    if owner is not None:
        return f"{owner[:16]}:{value}"
    return value


def request_hash(req: GenerationRequest) -> str:
    """sha256 of the canonical JSON of the validated request: formatting and defaults don't matter."""
    canonical = json.dumps(
        req.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _created(generation_id: str, state: str, created_at: datetime) -> GenerationCreated:
    return GenerationCreated(
        generation_id=generation_id,
        status=state,
        created_at=created_at,
        links=Links(self=generation_path(generation_id), websocket=websocket_path(generation_id)),
    )


async def _replay(conn: asyncpg.Connection, key: str, digest: str) -> GenerationCreated | None:
    """The generation an unexpired key already created, 409 if the body differs, None if the key is free."""
    found = await conn.fetchrow(
        "SELECT k.request_hash, g.id, g.status, g.created_at FROM idempotency_keys k"
        " JOIN generations g ON g.id = k.generation_id"
        " WHERE k.key = $1 AND k.created_at > now() - interval '24 hours'",
        key,
    )
    if found is None:
        return None
    if found["request_hash"] != digest:
        raise ApiError(
            409, "conflict", f"this {IDEMPOTENCY_HEADER} was already used with a different request body"
        )
    return _created(found["id"], found["status"], found["created_at"])


async def _insert(
    conn: asyncpg.Connection,
    generation_id: str,
    req: GenerationRequest,
    key: str | None,
    digest: str,
    owner: str | None,
) -> datetime:
    """The generation row and its idempotency key, in one transaction (both or neither)."""
    async with conn.transaction():
        if key is not None:
            # An expired key (or one whose generation is gone) may be reused.
            await conn.execute(
                "DELETE FROM idempotency_keys k WHERE k.key = $1"
                " AND (k.created_at <= now() - interval '24 hours'"
                "      OR NOT EXISTS (SELECT 1 FROM generations g WHERE g.id = k.generation_id))",
                key,
            )
        created_at: datetime = await conn.fetchval(
            "INSERT INTO generations"
            " (id, status, prompt, duration_seconds, aspect_ratio, brand, options, owner)"
            " VALUES ($1, 'queued', $2, $3, $4, $5, $6, $7) RETURNING created_at",
            generation_id,
            req.prompt,
            req.duration_seconds,
            req.aspect_ratio,
            req.brand.model_dump(mode="json") if req.brand is not None else None,
            req.options.model_dump(mode="json"),
            owner,
        )
        if key is not None:
            await conn.execute(
                "INSERT INTO idempotency_keys (key, request_hash, generation_id) VALUES ($1, $2, $3)",
                key,
                digest,
                generation_id,
            )
    return created_at


async def _abandon(deps: GatewayDeps, generation_id: str, key: str | None, reason: str) -> None:
    """The request never reached the broker: end the row as failed and free the idempotency key.

    Freeing the key lets the client's retry (same key, after our 503) create a fresh generation instead
    of being handed back this dead one.
    """
    async with connection(deps) as conn, conn.transaction():
        await status.set_status(
            conn,
            generation_id,
            "failed",
            emit=lambda *_: None,  # the broker is what just failed; nobody can be watching this id yet
            error={
                "code": "unavailable",
                "message": f"could not queue the request: {reason}",
                "stage": "gateway",
            },
        )
        if key is not None:
            await conn.execute(
                "DELETE FROM idempotency_keys WHERE key = $1 AND generation_id = $2", key, generation_id
            )


async def _store(
    deps: GatewayDeps, generation_id: str, req: GenerationRequest, key: str, digest: str, owner: str | None
) -> GenerationCreated | datetime:
    """Insert the row and its key: its ``created_at``, or the generation an idempotent replay returns."""
    async with connection(deps) as conn:
        for _ in range(3):
            replayed = await _replay(conn, key, digest)
            if replayed is not None:
                return replayed
            try:
                return await _insert(conn, generation_id, req, key, digest, owner)
            except asyncpg.UniqueViolationError:
                continue  # a concurrent request with the same key won the race: answer with its generation
    raise ApiError(409, "conflict", f"this {IDEMPOTENCY_HEADER} is being used concurrently; retry")


@dataclass(frozen=True)
class NewRow:
    """A generation row to insert (an order without an ``Idempotency-Key``)."""

    generation_id: str
    request: GenerationRequest
    #: Fingerprint of the API key that ordered it (:func:`gateway.auth.owner_of`).
    owner: str | None = None


_INSERT_ROWS = (
    "INSERT INTO generations (id, status, prompt, duration_seconds, aspect_ratio, brand, options, owner)"
    " SELECT r.id, 'queued', r.prompt, r.duration, r.aspect, r.brand::jsonb, r.options::jsonb, r.owner"
    " FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::text[], $6::text[], $7::text[])"
    " AS r(id, prompt, duration, aspect, brand, options, owner)"
    " RETURNING id, created_at"
)


async def insert_rows(deps: GatewayDeps, rows: Sequence[NewRow]) -> list[datetime]:
    """Insert ``rows`` in one statement (all or none); their ``created_at``, in order."""
    columns: tuple[list[Any], ...] = ([], [], [], [], [], [], [])
    for row in rows:
        req = row.request
        brand = req.brand.model_dump_json() if req.brand is not None else None
        values = (row.generation_id, req.prompt, req.duration_seconds, req.aspect_ratio, brand)
        for column, value in zip(columns, (*values, req.options.model_dump_json(), row.owner), strict=True):
            column.append(value)
    async with connection(deps) as conn:
        records = await conn.fetch(_INSERT_ROWS, *columns)
    created = {r["id"]: r["created_at"] for r in records}
    return [created[row.generation_id] for row in rows]


def row_writer(deps: GatewayDeps) -> GroupCommit[NewRow, datetime]:
    """The rows of concurrent creates share one ``INSERT`` (see :mod:`gateway.batching`)."""
    return GroupCommit(functools.partial(insert_rows, deps), name="generation-rows")


ROWS: web.AppKey[GroupCommit[NewRow, datetime]] = web.AppKey("reelstream_generation_rows", GroupCommit)


def order_log() -> BurstLog:
    """The INFO line tying each accepted order's generation id to its request id (see :class:`BurstLog`)."""
    return BurstLog(
        log,
        one="generation %s requested (request %s)",
        many="generations requested: ",
        item="%s (request %s)",
    )


ORDER_LOG = web.AppKey("reelstream_order_log", BurstLog)


def check_budget(req: GenerationRequest, settings: Settings) -> None:
    """422 ``budget_exceeded`` when the estimate is above ``options.max_cost_usd``: nothing is ordered."""
    ceiling = req.options.max_cost_usd
    if ceiling is None:
        return
    quote = estimate(req, settings)
    if quote.estimated_cost_usd > ceiling:
        message = (
            f"the estimate is ${quote.estimated_cost_usd:.4f} ({len(quote.clips)} clips on {quote.model}),"
            f" above options.max_cost_usd ${ceiling:.4f}"
        )
        raise ApiError(
            422,
            "budget_exceeded",
            message,
            details=[FieldError(field="options.max_cost_usd", message=message)],
        )


async def check_callback_url(req: GenerationRequest, settings: Settings) -> None:
    """422 naming ``options.callback_url`` when callbacks could not be sent there (see the contract)."""
    url = req.options.callback_url
    if url is None:
        return
    problem = await callbacks.url_problem(url, allow_private=settings.storage_allow_private_urls)
    if problem is not None:
        raise validation_error("options.callback_url", problem)


@routes.post("/api/v1/generations")
async def create_generation(request: web.Request) -> web.Response:
    deps = get_deps(request)
    key = _idempotency_key(request)
    req = await json_body(request, GenerationRequest)
    await check_callback_url(req, deps.settings)
    check_budget(req, deps.settings)
    owner = owner_of(request)
    if (unfit := await finishing.unfit_disclaimer(req)) is not None:
        raise validation_error("brand.guidelines.required_disclaimer", unfit)
    generation_id = "gen_" + uuid.uuid4().hex
    inserted = True
    stored: GenerationCreated | datetime
    try:
        if key is None:
            stored = await request.app[ROWS].submit(NewRow(generation_id, req, owner))
        else:
            stored = await _store(deps, generation_id, req, key, request_hash(req), owner)
    except DatabaseUnavailable as exc:
        if key is not None:
            raise  # the key cannot be checked: 503, the client retries with the same key
        # Queue it without the row; intake inserts it (ON CONFLICT DO NOTHING, created_at = requested_at).
        log.warning("generation %s accepted without its row, database unavailable: %s", generation_id, exc)
        stored, inserted = now(), False
    if isinstance(stored, GenerationCreated):
        return json_response(stored, status=200)
    created_at = stored

    event = gateway_event(
        topics.GENERATION_REQUESTED,
        GenerationRequested(generation_id=generation_id, request=req, requested_at=created_at, owner=owner),
        subject=generation_id,
        event_id=derive_id(generation_id, "gateway", topics.GENERATION_REQUESTED),
    )
    try:
        await publish(deps.producer, [(topics.GENERATION_REQUESTED, event)])
    except PublishFailed as exc:
        log.error("generation %s not queued (request %s): %s", generation_id, request_id(request), exc)
        if inserted:
            await _abandon(deps, generation_id, key, str(exc))
        raise ApiError(503, "unavailable", "the job queue is unavailable; retry later") from None
    request.app[RECENT].accepted(generation_id, req, created_at, owner)
    request.app[ORDER_LOG].add(generation_id, request_id(request))
    return json_response(
        _created(generation_id, "queued", created_at),
        status=202,
        headers={"Location": generation_path(generation_id)},
    )


# -- list ----------------------------------------------------------------------------------------------


def encode_cursor(created_at: datetime, generation_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), generation_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) position a cursor stands for; 422 naming ``cursor`` if it is not ours."""
    try:
        if len(cursor) > 200:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, generation_id = json.loads(raw)
        at = datetime.fromisoformat(created)
        if at.tzinfo is None or not isinstance(generation_id, str) or not valid_generation_id(generation_id):
            raise ValueError("not a cursor")
    except (ValueError, TypeError, binascii.Error):
        raise validation_error("cursor", "not a cursor returned by this API") from None
    return at, generation_id


def _limit(request: web.Request) -> int:
    value = request.query.get("limit")
    if value is None:
        return DEFAULT_LIMIT
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise validation_error("limit", f"must be an integer from 1 to {MAX_LIMIT}")
    return int(value)


def _statuses(request: web.Request) -> list[str] | None:
    value = request.query.get("status")
    if value is None or value == "":
        return None
    wanted = [s.strip(" \t") for s in value.split(",")]
    bad = [s for s in wanted if s not in _STATUSES]
    if bad:
        raise validation_error("status", f"must be one of {', '.join(sorted(_STATUSES))} (comma-separated)")
    return wanted


@routes.get("/api/v1/generations")
async def list_generations(request: web.Request) -> web.Response:
    """Newest first, keyset-paginated on (created_at, id): stable while new generations arrive."""
    limit = _limit(request)
    wanted = _statuses(request)
    cursor = request.query.get("cursor")
    after: tuple[datetime, str] | tuple[None, None] = decode_cursor(cursor) if cursor else (None, None)
    async with connection(get_deps(request)) as conn:
        rows = await conn.fetch(
            "SELECT id, status, prompt, duration_seconds, aspect_ratio, created_at, updated_at, video"
            " FROM generations"
            " WHERE ($1::text[] IS NULL OR status = ANY($1::text[]))"
            " AND ($2::timestamptz IS NULL OR (created_at, id) < ($2::timestamptz, $3::text))"
            " AND ($5::text IS NULL OR owner = $5)"
            " ORDER BY created_at DESC, id DESC LIMIT $4",
            wanted,
            after[0],
            after[1],
            limit + 1,
            owner_of(request),
        )
    page = rows[:limit]
    more = len(rows) > limit
    next_cursor = encode_cursor(page[-1]["created_at"], page[-1]["id"]) if more and page else None
    return json_response(GenerationPage(items=[summary_from_row(r) for r in page], next_cursor=next_cursor))


# -- read ----------------------------------------------------------------------------------------------


async def detail_or_404(deps: GatewayDeps, generation_id: str, owner: str | None) -> GenerationDetail:
    if not valid_generation_id(generation_id):
        raise not_found(f"no generation {generation_id[:80]!r}")
    async with connection(deps) as conn:
        detail = await load_detail(conn, generation_id, owner=owner, settings=deps.settings)
    if detail is None:
        raise not_found(f"no generation {generation_id}")
    return detail


def _remembered(request: web.Request, generation_id: str) -> GenerationDetail | None:
    """This gateway's memory of the generation (see :mod:`gateway.memory`), if the caller may see it."""
    return request.app[RECENT].detail(
        generation_id,
        caller=owner_of(request),
        keys_required=bool(get_deps(request).settings.api_key_set),
    )


async def read_detail(request: web.Request, generation_id: str) -> GenerationDetail | None:
    """The detail from Postgres, else from memory; None when there is no such generation.

    Memory answers when Postgres cannot (never seen either: :class:`DatabaseUnavailable` goes up), and
    when Postgres has no row yet for an order accepted while it was away (intake inserts it shortly).
    """
    deps = get_deps(request)
    try:
        async with connection(deps) as conn:
            detail = await load_detail(conn, generation_id, owner=owner_of(request), settings=deps.settings)
    except DatabaseUnavailable:
        detail = _remembered(request, generation_id)
        if detail is None:
            raise
    if detail is None and request.app[RECENT].waiting_for_row(generation_id):
        detail = _remembered(request, generation_id)
    return detail


@routes.get("/api/v1/generations/{generation_id}")
async def get_generation(request: web.Request) -> web.Response:
    generation_id = request.match_info["generation_id"]
    if not valid_generation_id(generation_id):
        raise not_found(f"no generation {generation_id[:80]!r}")
    detail = await read_detail(request, generation_id)
    if detail is None:
        raise not_found(f"no generation {generation_id}")
    return json_response(detail)


# -- cancel --------------------------------------------------------------------------------------------


class _Collector:
    """The ``emit`` callback for :func:`reelstream.status.set_status`: keeps what to publish after commit."""

    def __init__(self) -> None:
        self.items: list[tuple[str, BaseModel]] = []

    def __call__(self, topic: str, data: BaseModel, **_: Any) -> None:
        self.items.append((topic, data))


@routes.post("/api/v1/generations/{generation_id}/cancel")
async def cancel_generation(request: web.Request) -> web.Response:
    deps = get_deps(request)
    generation_id = request.match_info["generation_id"]
    if not valid_generation_id(generation_id):
        raise not_found(f"no generation {generation_id[:80]!r}")
    collected = _Collector()
    async with connection(deps) as conn, conn.transaction():
        current = await status.current(conn, generation_id, owner=owner_of(request))  # locks the row
        if (
            current is None
            and request.app[RECENT].waiting_for_row(generation_id)
            and _remembered(request, generation_id) is not None
        ):
            # Accepted while the database was away; intake has not written its row yet.
            raise DatabaseUnavailable("the generation is not recorded yet")
        if current is None:
            raise not_found(f"no generation {generation_id}")
        if current in TERMINAL or not await status.set_status(
            conn, generation_id, "canceled", emit=collected
        ):
            raise ApiError(409, "conflict", f"generation {generation_id} has already ended ({current})")
        unfinished = await conn.fetch(
            "UPDATE clips c SET status = 'canceled', updated_at = now()"
            " FROM (SELECT clip_id, status, prediction_id FROM clips"
            "       WHERE generation_id = $1 AND status IN ('pending', 'submitted', 'processing')"
            "       FOR UPDATE) old"
            " WHERE c.generation_id = $1 AND c.clip_id = old.clip_id"
            " RETURNING old.status AS old_status, old.prediction_id",
            generation_id,
        )
    metrics.GENERATIONS.labels("canceled").inc()
    events: list[tuple[str, CloudEvent]] = [
        (
            topic,
            gateway_event(
                topic, data, subject=generation_id, event_id=derive_id(generation_id, "cancel", str(i))
            ),
        )
        for i, (topic, data) in enumerate(collected.items)
    ]
    try:
        await publish(deps.producer, events)
    except PublishFailed as exc:
        # Postgres already says canceled and every stage checks that before acting; only live
        # watchers miss the news (they get it with their next snapshot).
        log.warning("%s canceled but its status event was not published: %s", generation_id, exc)
    predictions = [
        r["prediction_id"]
        for r in unfinished
        if r["old_status"] in ("submitted", "processing") and r["prediction_id"]
    ]
    if deps.provider is not None:  # best effort: one we fail to cancel ends on its own, ignored
        await outstanding.cancel_predictions(deps.provider, generation_id, predictions)
    detail = await detail_or_404(deps, generation_id, owner_of(request))
    log.info("generation %s canceled (request %s)", generation_id, request_id(request))
    return json_response(detail, status=202)
