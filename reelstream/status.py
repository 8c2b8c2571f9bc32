"""Generation status: forward-only transitions in Postgres, each announced on ``generation.status``.

Every stage moves the status through here, so the rule "statuses only move forward" lives in one place.
"""

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import asyncpg
from pydantic import BaseModel

from reelstream import metrics
from reelstream.events import now
from schemas import topics
from schemas.api import STATUS_ORDER, TERMINAL, ErrorInfo, Progress
from schemas.events import GenerationFailed, GenerationStatusChanged

if TYPE_CHECKING:  # the runtime imports this module to fail dead-lettered generations
    from reelstream.runtime import Context

#: Rough share of the work done when a generation enters each status; generating spans 25..85 by clips.
_PERCENT = {"queued": 0, "analyzing": 5, "planning": 15, "prompting": 20, "generating": 25, "assembling": 90}


_WRITABLE = frozenset(
    {"analysis", "scenes", "video", "error", "compute_seconds", "assembly_event", "compliance"}
)


_CLIP_COUNTS = (
    "count(c.clip_id) AS total,"
    " count(c.clip_id) FILTER (WHERE c.status = 'succeeded') AS done,"
    " count(c.clip_id) FILTER (WHERE c.status = 'failed') AS failed"
)


def _progress(stage: str, row: asyncpg.Record | None) -> Progress:
    total, done, failed = (row["total"], row["done"], row["failed"]) if row is not None else (0, 0, 0)
    if stage == "completed":
        percent = 100
    elif stage == "generating" and total:
        percent = 25 + int(60 * done / total)
    elif stage in ("failed", "canceled"):
        percent = 0
    else:
        percent = _PERCENT.get(stage, 0)
    return Progress(
        stage=stage, percent=percent, clips_total=total, clips_completed=done, clips_failed=failed
    )


async def progress(conn: asyncpg.Connection, generation_id: str, status: str | None = None) -> Progress:
    """Progress as clients see it, derived from the clips table (never stored, so never stale)."""
    row = await conn.fetchrow(
        f"SELECT g.status, {_CLIP_COUNTS}"
        " FROM generations g LEFT JOIN clips c ON c.generation_id = g.id"
        " WHERE g.id = $1 GROUP BY g.status",
        generation_id,
    )
    if row is None:
        return _progress(status or "queued", None)
    return _progress(status or row["status"], row)


async def current(conn: asyncpg.Connection, generation_id: str, *, owner: str | None = None) -> str | None:
    """The generation's status, locking its row for the rest of the transaction.

    ``owner``: only if it belongs to that API key fingerprint (None: whoever owns it).
    """
    value: str | None = await conn.fetchval(
        "SELECT status FROM generations WHERE id = $1 AND ($2::text IS NULL OR owner = $2) FOR UPDATE",
        generation_id,
        owner,
    )
    return value


async def advance(ctx: "Context[Any]", status: str, **columns: Any) -> bool:
    """Move the generation forward to ``status`` (never backward, never out of a terminal status).

    Extra ``columns`` (e.g. ``analysis=...``) are written in the same statement. Returns False when the
    move was refused, e.g. because the generation was canceled meanwhile.
    """
    return await set_status(ctx.conn, ctx.generation_id, status, emit=ctx.emit, **columns)


async def set_status(
    conn: asyncpg.Connection, generation_id: str, status: str, *, emit: Callable[..., Any], **columns: Any
) -> bool:
    """The one UPDATE that changes a status: refused unless it moves forward from a non-terminal status."""
    unknown = set(columns) - _WRITABLE
    if unknown:
        raise ValueError(f"not a writable generation column: {sorted(unknown)}")
    assignments = "".join(f", {name} = ${i}" for i, name in enumerate(columns, start=4))
    where = "status <> ALL($3::text[])"
    if status not in TERMINAL:
        where += " AND array_position($4::text[], status) < array_position($4::text[], $2)"
        assignments = "".join(f", {name} = ${i}" for i, name in enumerate(columns, start=5))
    params: list[Any] = [sorted(TERMINAL)]
    if status not in TERMINAL:
        params.append(list(STATUS_ORDER))
    # One round trip: the move and the clip counts its announcement needs (a CTE's UPDATE and the
    # SELECT beside it see the same snapshot; the clips are not what changes here).
    row = await conn.fetchrow(
        f"WITH moved AS (UPDATE generations SET status = $2, updated_at = now(){assignments}"
        f" WHERE id = $1 AND {where} RETURNING id, created_at)"
        f" SELECT {_CLIP_COUNTS}, extract(epoch FROM now() - moved.created_at)::float8 AS age"
        " FROM moved LEFT JOIN clips c ON c.generation_id = moved.id"
        " GROUP BY moved.id, moved.created_at",
        generation_id,
        status,
        *params,
        *columns.values(),
    )
    if row is None:
        return False
    if status in TERMINAL:  # the order's whole time, by how it ended; and its callback
        metrics.GENERATION_SECONDS.labels(status).observe(max(0.0, row["age"]))
        await record_callback(conn, generation_id, status)
    emit(
        topics.GENERATION_STATUS,
        GenerationStatusChanged(
            generation_id=generation_id, status=status, progress=_progress(status, row), at=now()
        ),
    )
    return True


async def record_callback(conn: asyncpg.Connection, generation_id: str, status: str) -> None:
    """The outbound callback of this ending, if the order asked for one (``options.callback_url``).

    Written in the transaction that ends the generation, so the ending and its callback commit together
    and a restart cannot lose it; ``reelstream.callbacks`` delivers it. One per ending of an attempt
    (its ``webhook_id`` is derived from both, and stays the same on every retry).
    """
    await conn.execute(
        "INSERT INTO callbacks (webhook_id, generation_id, event, url)"
        " SELECT 'msg_' || substr(id, 5) || '_' || attempt, id, $2, options->>'callback_url'"
        " FROM generations WHERE id = $1 AND options->>'callback_url' IS NOT NULL"
        " ON CONFLICT (webhook_id) DO NOTHING",
        generation_id,
        f"generation.{status}",
    )


async def announce_progress(ctx: "Context[Any]") -> None:
    """Re-announce the current status with fresh progress (e.g. after a clip completed)."""
    status = await current(ctx.conn, ctx.generation_id)
    if status is None:
        return
    ctx.emit(
        topics.GENERATION_STATUS,
        GenerationStatusChanged(
            generation_id=ctx.generation_id,
            status=status,
            progress=await progress(ctx.conn, ctx.generation_id),
            at=now(),
        ),
    )


async def end_failed(
    conn: asyncpg.Connection, generation_id: str, error: ErrorInfo
) -> list[tuple[str, BaseModel]]:
    """End the generation ``failed`` with ``error``; returns the events that announce it (status, then
    ``generation.failed``) for the caller to send after its commit, or [] if it had already ended."""
    events: list[tuple[str, BaseModel]] = []
    failed = await set_status(
        conn,
        generation_id,
        "failed",
        emit=lambda topic, data, **_: events.append((topic, data)),
        error=error.model_dump(),
    )
    if not failed:
        return []
    events.append((topics.GENERATION_FAILED, GenerationFailed(generation_id=generation_id, error=error)))
    return events


async def fail(ctx: "Context[Any]", code: str, message: str) -> bool:
    """End the generation as failed and emit ``generation.failed`` (once: a second failure is a no-op)."""
    events = await end_failed(
        ctx.conn, ctx.generation_id, ErrorInfo(code=code, message=message, stage=ctx.stage)
    )
    for topic, data in events:
        ctx.emit(topic, data)
    return bool(events)
