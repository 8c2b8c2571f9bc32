"""Two-phase clip submission: record the intent, create at the provider, record the prediction.

Every clip attempt is paid for, so a prediction is never created twice for one attempt and never for
a generation that has ended:

1. **Intent.** The clip's next attempt is written as a ``submissions`` row (its marker is
   ``generation.clip.attempt``) and committed with the clip's window bookkeeping before anything is paid.
2. **Create**, outside any transaction, one intent at a time, each leased first so a handler and the
   drive sweep never create the same intent at once. An intent tried before (a crash, a lost answer)
   has the provider look for its prediction by marker, from the intent's time on, before creating.
3. **Record** the prediction id against the marker at once, with the clip row, in one short
   transaction. A generation that ended meanwhile gets the new prediction canceled straight away.

A provider refusal (422) fails the generation: nothing more is created and whatever was created is
canceled.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from reelstream import mapping, outstanding, status, tracing
from reelstream.providers import ProviderError, ProviderUnavailable, marker, webhook_url
from reelstream.runtime import TransientError
from reelstream.settings import Settings
from schemas.api import ErrorInfo, Options
from schemas.events import ClipSpec

log = logging.getLogger(__name__)

#: How long a create may take before another process may take the intent over (and look it up first).
LEASE_SECONDS = 300

Emit = Callable[..., Any]


@dataclass(frozen=True)
class Submitted:
    clip_id: str
    prediction_id: str
    attempt: int


def window(settings: Settings, options: Options) -> int:
    """How many of a generation's predictions may be in flight at once."""
    return settings.clip_concurrency if options.parallel_clips else 1


async def add_intent(conn: asyncpg.Connection, generation_id: str, clip_id: str, attempt: int) -> None:
    """Phase 1 for one clip, inside the caller's transaction: the clip's next attempt, not yet paid."""
    await conn.execute(
        "UPDATE clips SET attempts = $3, settled = false, prediction_id = NULL, updated_at = now()"
        " WHERE generation_id = $1 AND clip_id = $2",
        generation_id,
        clip_id,
        attempt,
    )
    await conn.execute(
        "INSERT INTO submissions (marker, generation_id, clip_id, attempt) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (marker) DO NOTHING",
        marker(generation_id, clip_id, attempt),
        generation_id,
        clip_id,
        attempt,
    )


_OPEN_SLOTS = """
WITH busy AS (
    SELECT count(*) AS n FROM clips WHERE generation_id = $1 AND attempts >= first_attempt
    AND NOT settled AND status NOT IN ('succeeded', 'failed', 'canceled')
), chosen AS (
    SELECT clip_id, first_attempt FROM clips
    WHERE generation_id = $1 AND attempts < first_attempt AND status = 'pending' AND spec IS NOT NULL
    ORDER BY idx LIMIT GREATEST(0, $2 - (SELECT n FROM busy))
)
UPDATE clips c SET attempts = chosen.first_attempt, settled = false, prediction_id = NULL, updated_at = now()
FROM chosen WHERE c.generation_id = $1 AND c.clip_id = chosen.clip_id
RETURNING c.clip_id, c.attempts
"""


async def fill_window(conn: asyncpg.Connection, generation_id: str, window: int) -> int:
    """Give the window's free slots to clips not yet tried in this attempt of the generation.

    A clip holds a slot from its intent until its outcome is settled. Runs inside the caller's
    transaction, with the generation's row locked; two round trips however many clips it takes.
    Returns how many intents it added.
    """
    taken = await conn.fetch(_OPEN_SLOTS, generation_id, window)
    if taken:
        await conn.execute(
            "INSERT INTO submissions (marker, generation_id, clip_id, attempt)"
            " SELECT m, $1, c, a FROM unnest($2::text[], $3::text[], $4::int[]) AS t(m, c, a)"
            " ON CONFLICT (marker) DO NOTHING",
            generation_id,
            [marker(generation_id, row["clip_id"], row["attempts"]) for row in taken],
            [row["clip_id"] for row in taken],
            [row["attempts"] for row in taken],
        )
    return len(taken)


_LEASE = """
UPDATE submissions SET leased_until = now() + make_interval(secs => $2), tries = tries + 1
WHERE marker = (
    SELECT s.marker FROM submissions s
    JOIN clips c ON c.generation_id = s.generation_id AND c.clip_id = s.clip_id
    JOIN generations g ON g.id = s.generation_id
    WHERE s.generation_id = $1 AND s.prediction_id IS NULL AND NOT s.abandoned
      AND (s.leased_until IS NULL OR s.leased_until < now()) AND g.status = 'generating'
    ORDER BY c.idx, s.attempt
    LIMIT 1
    FOR UPDATE OF s SKIP LOCKED
)
RETURNING marker, clip_id, attempt, created_at, tries,
    (SELECT spec FROM clips c WHERE c.generation_id = $1 AND c.clip_id = submissions.clip_id) AS spec
"""


# Phase 3 in one statement (one round trip, one implicit transaction): the prediction against its
# marker, in the predictions table, and on its clip; the generation's row is locked while the clip is
# written, so a cancel either comes before (and the clip is marked canceled here) or after (and finds it).
_RECORD = """
WITH sub AS (
    UPDATE submissions SET prediction_id = $5, leased_until = NULL WHERE marker = $4
), pred AS (
    INSERT INTO predictions (prediction_id, generation_id, clip_id, attempt, provider, traceparent)
    VALUES ($5, $1, $2, $3, $6, $7) ON CONFLICT DO NOTHING
), gen AS (
    SELECT status FROM generations WHERE id = $1 FOR UPDATE
), clip AS (
    UPDATE clips SET prediction_id = $5, updated_at = now(), status = CASE
        WHEN (SELECT status FROM gen) <> 'generating'
            AND clips.status IN ('pending', 'submitted', 'processing') THEN 'canceled'
        WHEN clips.status IN ('pending', 'submitted') THEN 'submitted'
        ELSE clips.status END
    WHERE generation_id = $1 AND clip_id = $2 AND attempts = $3
)
SELECT status FROM gen
"""


async def create_open(pool: asyncpg.Pool, deps: Any, generation_id: str, emit: Emit) -> list[Submitted]:
    """Phases 2 and 3 for every open intent of the generation; returns what was created.

    ``emit`` queues the events of a provider refusal (the generation's failure). A provider that cannot
    be reached raises :class:`TransientError` after giving the lease back: the intent stays open and
    the next try looks its prediction up first.
    """
    created: list[Submitted] = []
    while True:
        intent = await pool.fetchrow(_LEASE, generation_id, float(LEASE_SECONDS))
        if intent is None:
            return created
        mark, clip_id, attempt = intent["marker"], intent["clip_id"], intent["attempt"]
        spec = ClipSpec.model_validate(intent["spec"])
        since: datetime | None = intent["created_at"] if intent["tries"] > 1 else None
        try:
            prediction_id = await deps.provider.create(
                spec, webhook_url=webhook_url(deps.settings.gateway_url, mark), marker=mark, since=since
            )
        except ProviderUnavailable as exc:
            await pool.execute("UPDATE submissions SET leased_until = NULL WHERE marker = $1", mark)
            raise TransientError(f"{mark}: {exc}") from exc
        except ProviderError as exc:
            await _refused(pool, deps, generation_id, clip_id, str(exc), emit)
            return created
        if await _record(pool, deps, generation_id, clip_id, attempt, mark, prediction_id):
            created.append(Submitted(clip_id, prediction_id, attempt))
            log.info("%s %s attempt %d: prediction %s", generation_id, clip_id, attempt, prediction_id)


async def _record(
    pool: asyncpg.Pool,
    deps: Any,
    generation_id: str,
    clip_id: str,
    attempt: int,
    mark: str,
    prediction_id: str,
) -> bool:
    """Phase 3: the prediction against its marker and its clip; False (and canceled) if the job ended."""
    current = await pool.fetchval(
        _RECORD,
        generation_id,
        clip_id,
        attempt,
        mark,
        prediction_id,
        deps.provider.name,
        tracing.current_traceparent(),  # the webhook continues this generation's trace from here
    )
    live = current == "generating"
    if not live:
        log.warning("%s ended (%s) while %s was created: canceling it", generation_id, current, prediction_id)
        await outstanding.cancel_predictions(deps.provider, generation_id, [prediction_id])
        return False
    await mapping.remember(deps.redis, prediction_id, mapping.ClipRef(generation_id, clip_id, attempt))
    return True


async def _refused(
    pool: asyncpg.Pool, deps: Any, generation_id: str, clip_id: str, reason: str, emit: Emit
) -> None:
    """A provider refusal fails the generation; what it already created is canceled."""
    error = ErrorInfo(code="provider_rejected", message=f"{clip_id}: {reason}"[:1000], stage="clips")
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE submissions SET abandoned = true, leased_until = NULL"
            " WHERE generation_id = $1 AND prediction_id IS NULL AND NOT abandoned",
            generation_id,
        )
        announced = await status.end_failed(conn, generation_id, error)
    for topic, data in announced:
        emit(topic, data)
    if announced:
        log.warning("%s failed: the provider refused %s: %s", generation_id, clip_id, reason)
    await outstanding.cancel_outstanding(pool, deps.provider, generation_id)
