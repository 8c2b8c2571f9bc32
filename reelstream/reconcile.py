"""The reconciler: a generation that stopped moving is driven on again from what Postgres holds.

Postgres is the truth, Kafka only the transport: a message lost with the broker (the embedded one keeps
topics in memory), a gateway that died between its insert and its publish, or an assembly cut short must
not leave a generation hanging. So every ``reconcile_seconds`` the intake stage claims the non-terminal
generations that made no progress for that long (``generations.updated_at``, their clips'
``updated_at``, their newest ``processed_events`` row, their last re-drive) and re-publishes what would
move each one on: stored events unchanged (same ids), or the gateway's ``generation.requested`` rebuilt
under the gateway's id. Consumers deduplicate by event id, so a re-drive never does anything twice; it
only hands a lost step to its stage again.

When the stage starts, every non-terminal generation whose last progress is older than the start is
re-driven at once: after a restart nothing in the broker can be relied on.

Rows are claimed with ``SKIP LOCKED`` and stamped (``reconciled_at``), so replicas never re-drive the same
generation in the same round and one re-drive is not repeated every round.
"""

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from reelstream import metrics, status
from reelstream.events import derive_id, make_event
from reelstream.kafka import Producer
from reelstream.runtime import TRANSIENT, Sweep, Sweeper
from schemas import topics
from schemas.api import TERMINAL, ErrorInfo, GenerationRequest
from schemas.envelope import CloudEvent
from schemas.events import GenerationRequested

log = logging.getLogger(__name__)

#: Generations claimed per round and replica: bounds a round's reads and publishes.
BATCH = 50
#: The gateway's CloudEvents ``source``: a rebuilt ``generation.requested`` is the gateway's event.
GATEWAY_SOURCE = "/reelstream/gateway"
#: The consumer (stage) name under which intake records the requests it handled.
INTAKE = "intake"

# The status list is spelled as in the partial index ``generations_open_idx``, so the planner uses it.
_CLAIM = """
UPDATE generations SET reconciled_at = now()
WHERE id IN (
    SELECT g.id FROM generations g
    WHERE g.status NOT IN ('completed', 'failed', 'canceled')
      AND g.updated_at < $1
      AND (g.reconciled_at IS NULL OR g.reconciled_at < $1)
      AND NOT EXISTS (
          SELECT 1 FROM clips c WHERE c.generation_id = g.id
          AND (c.updated_at >= $1 OR c.polled_at >= $1))
      AND NOT EXISTS (
          SELECT 1 FROM processed_events p WHERE p.generation_id = g.id AND p.processed_at >= $1)
    ORDER BY g.updated_at
    LIMIT $2
    FOR UPDATE OF g SKIP LOCKED
)
RETURNING id, status, reconciled_at
"""

# Newest first; a row that emitted only status notifications drove nothing and is passed over.
_LAST_STEP = """
SELECT consumer, emitted FROM processed_events
WHERE generation_id = $1
  AND EXISTS (SELECT 1 FROM jsonb_array_elements(emitted) e WHERE e->>'topic' <> $2)
ORDER BY processed_at DESC, event_id DESC
LIMIT 1
"""

_STORED_EVENT = """
SELECT e->'event' FROM processed_events p, jsonb_array_elements(p.emitted) e
WHERE p.generation_id = $1 AND e->>'topic' = $2
ORDER BY p.processed_at DESC, p.event_id DESC
LIMIT 1
"""


@dataclass
class Plan:
    """What re-drives one generation: ``(action, topic, event)`` in publishing order, each id once."""

    generation_id: str
    status: str
    items: list[tuple[str, str, CloudEvent]] = field(default_factory=list)

    def add(self, action: str, topic: str, event: CloudEvent) -> None:
        if topic == topics.GENERATION_STATUS or any(e.id == event.id for _, _, e in self.items):
            return  # status notifications drive nothing; a repeat would only be deduplicated
        self.items.append((action, topic, event))


def requested_event_id(generation_id: str, attempt: int) -> str:
    """The id of the ``generation.requested`` that starts ``attempt``: the gateway's, or a forced replay's."""
    if attempt > 1:
        return derive_id(generation_id, "replay", topics.GENERATION_REQUESTED, str(attempt))
    return derive_id(generation_id, "gateway", topics.GENERATION_REQUESTED)


def rebuild_requested(row: asyncpg.Record) -> CloudEvent:
    """``generation.requested`` as the gateway (or a forced replay) sent it, from the generation's row."""
    request = GenerationRequest.model_validate(
        {
            "prompt": row["prompt"],
            "duration_seconds": row["duration_seconds"],
            "aspect_ratio": row["aspect_ratio"],
            "brand": row["brand"],
            "options": row["options"],
        }
    )
    generation_id: str = row["id"]
    return make_event(
        topics.GENERATION_REQUESTED,
        GenerationRequested(
            generation_id=generation_id,
            request=request,
            requested_at=row["created_at"],
            owner=row.get("owner"),
        ),
        source=GATEWAY_SOURCE,
        subject=generation_id,
        event_id=requested_event_id(generation_id, row["attempt"]),
    )


async def plan(conn: asyncpg.Connection, generation_id: str) -> Plan | None:
    """What to re-publish for ``generation_id``; None when it is unknown or terminal (never revived)."""
    row = await conn.fetchrow(
        "SELECT id, status, attempt, prompt, duration_seconds, aspect_ratio, brand, options, created_at,"
        " owner FROM generations WHERE id = $1",
        generation_id,
    )
    if row is None or row["status"] in TERMINAL:
        return None
    found = Plan(generation_id, row["status"])
    if row["status"] == "queued":
        await _plan_queued(conn, row, found)
        return found
    last = await conn.fetchrow(_LAST_STEP, generation_id, topics.GENERATION_STATUS)
    if last is not None:
        for item in last["emitted"]:
            found.add("last_step", item["topic"], CloudEvent.model_validate(item["event"]))
    if row["status"] == "generating":
        prompted = await conn.fetchval(_STORED_EVENT, generation_id, topics.GENERATION_PROMPTED)
        if prompted is not None:
            found.add("prompted", topics.GENERATION_PROMPTED, CloudEvent.model_validate(prompted))
    if row["status"] in ("generating", "assembling"):
        outcome = await _assembly_outcome(conn, generation_id)
        if outcome is not None:
            found.add("outcome", topics.CLIP_COMPLETED, outcome)
    return found


async def _plan_queued(conn: asyncpg.Connection, row: asyncpg.Record, found: Plan) -> None:
    """Queued: what intake emitted for this attempt's request, or the request itself if intake never had it.

    Looked up by the attempt's own request id rather than "the newest step", because a forced replay's
    new attempt starts queued with the previous attempt's rows still there.
    """
    requested_id = requested_event_id(row["id"], row["attempt"])
    emitted = await conn.fetchval(
        "SELECT emitted FROM processed_events WHERE consumer = $1 AND event_id = $2", INTAKE, requested_id
    )
    if emitted is None:
        found.add("requested", topics.GENERATION_REQUESTED, rebuild_requested(row))
        return
    for item in emitted:
        found.add("last_step", item["topic"], CloudEvent.model_validate(item["event"]))


async def _assembly_outcome(conn: asyncpg.Connection, generation_id: str) -> CloudEvent | None:
    """When every clip has succeeded, assembly was cut short: the ``clip.completed`` that claimed it,
    else the newest recorded one (the last clip finished, whose event found every clip done)."""
    row = await conn.fetchrow(
        "SELECT count(*) AS total, count(*) FILTER (WHERE status = 'succeeded') AS succeeded,"
        " (SELECT c.outcome FROM clips c JOIN generations g ON g.id = c.generation_id"
        "  WHERE c.generation_id = $1 AND c.outcome IS NOT NULL"
        "  ORDER BY (c.outcome->>'id' IS NOT DISTINCT FROM g.assembly_event) DESC,"
        "  c.updated_at DESC, c.clip_id DESC LIMIT 1) AS outcome"
        " FROM clips WHERE generation_id = $1",
        generation_id,
    )
    if row["total"] == 0 or row["succeeded"] < row["total"] or row["outcome"] is None:
        return None
    return CloudEvent.model_validate(row["outcome"])


async def redrive(pool: asyncpg.Pool, producer: Producer, generation_id: str) -> list[str]:
    """Re-publish what moves ``generation_id`` on; returns ``"topic event_id"`` of each event sent.

    Safe to call any time (``reelstream replay`` does): every event goes out under the id it had (or the
    gateway's deterministic one), so consumers that already handled it only deduplicate. A terminal or
    unknown generation is left alone (``[]``).
    """
    async with pool.acquire() as conn:
        found = await plan(conn, generation_id)
    if found is None:
        return []
    await producer.send_many([(topic, event) for _, topic, event in found.items])
    sent = [f"{topic} {event.id}" for _, topic, event in found.items]
    for action in dict.fromkeys(action for action, _, _ in found.items) or ["nothing"]:
        metrics.RECONCILER_ACTIONS.labels(action).inc()
    if sent:
        log.info(
            "%s (%s) re-driven: re-published %s",
            generation_id,
            found.status,
            ", ".join(sent),
            extra={"generation_id": generation_id},
        )
    else:
        log.warning(
            "%s (%s) stalled and Postgres holds nothing to re-drive it with",
            generation_id,
            found.status,
            extra={"generation_id": generation_id},
        )
    return sent


async def claim(pool: asyncpg.Pool, cutoff: datetime, limit: int) -> list[asyncpg.Record]:
    """Claim (stamp ``reconciled_at``) up to ``limit`` non-terminal generations idle since ``cutoff``."""
    rows: list[asyncpg.Record] = await pool.fetch(_CLAIM, cutoff, limit)
    return rows


async def _release(pool: asyncpg.Pool, rows: list[asyncpg.Record]) -> None:
    """Undo the stamp of claimed generations not re-driven, so the next round tries them again."""
    await pool.execute(
        "UPDATE generations SET reconciled_at = NULL WHERE id = ANY($1::text[]) AND reconciled_at = $2",
        [r["id"] for r in rows],
        rows[0]["reconciled_at"],
    )


async def reconcile_once(
    pool: asyncpg.Pool, producer: Producer, cutoff: datetime, *, limit: int = BATCH
) -> list[str]:
    """Claim one batch idle since ``cutoff`` and re-drive each; returns the generation ids claimed.

    A broker or database failure ends the round and releases the rest of the batch for the next one; a
    generation that cannot be re-driven for any other reason (a stored event that no longer validates)
    is logged and keeps its stamp, so it is not retried every round.
    """
    rows = await claim(pool, cutoff, limit)
    for i, row in enumerate(rows):
        try:
            await redrive(pool, producer, row["id"])
        except TRANSIENT:
            await _release(pool, rows[i:])
            raise
        except Exception:
            log.exception(
                "%s (%s): could not re-drive", row["id"], row["status"], extra={"generation_id": row["id"]}
            )
    return [r["id"] for r in rows]


async def reconcile_round(sweeper: Sweeper) -> None:
    """A timed round: give up on the hopeless, then re-drive one batch idle for ``reconcile_seconds``."""
    deps: Any = sweeper.deps
    await give_up(sweeper, float(deps.settings.give_up_seconds))
    cutoff: datetime = await sweeper.pool.fetchval(
        "SELECT now() - make_interval(secs => $1)", float(deps.settings.reconcile_seconds)
    )
    await reconcile_once(sweeper.pool, sweeper.producer, cutoff)


# No progress at all (status, clips, polls, handled events) for the give-up time: re-drives did not help.
_HOPELESS = """
SELECT g.id, g.status FROM generations g
WHERE g.status NOT IN ('completed', 'failed', 'canceled')
  AND g.updated_at < now() - make_interval(secs => $1)
  AND NOT EXISTS (
      SELECT 1 FROM clips c WHERE c.generation_id = g.id
      AND (c.updated_at >= now() - make_interval(secs => $1)
           OR c.polled_at >= now() - make_interval(secs => $1)))
  AND NOT EXISTS (
      SELECT 1 FROM processed_events p WHERE p.generation_id = g.id
      AND p.processed_at >= now() - make_interval(secs => $1))
ORDER BY g.updated_at
LIMIT $2
FOR UPDATE OF g SKIP LOCKED
"""


async def give_up(sweeper: Sweeper, seconds: float) -> list[str]:
    """End ``failed`` (code ``internal``) every generation that made no progress for ``seconds``.

    Re-driving is bounded like every retry: a generation that even re-drives could not move for that
    long has something wrong that waiting will not fix, and the customer is owed an answer. Its
    outstanding predictions are then canceled by the clips stage's janitor.
    """
    failed: list[tuple[str, list[tuple[str, Any]]]] = []
    async with sweeper.pool.acquire() as conn, conn.transaction():
        for row in await conn.fetch(_HOPELESS, seconds, BATCH):
            error = ErrorInfo(
                code="internal",
                message=f"no progress for {seconds:.0f} s while {row['status']}: given up",
                stage=row["status"],
            )
            failed.append((row["id"], await status.end_failed(conn, row["id"], error)))
    for generation_id, events in failed:
        for topic, data in events:
            await sweeper.publish(
                topic, data, subject=generation_id, event_id=derive_id(generation_id, "give-up", topic)
            )
        metrics.RECONCILER_ACTIONS.labels("given_up").inc()
        metrics.GENERATIONS.labels("failed").inc()
        log.error(
            "%s: no progress for %.0f s; failed",
            generation_id,
            seconds,
            extra={"generation_id": generation_id},
        )
    return [generation_id for generation_id, _ in failed]


async def catch_up(sweeper: Sweeper) -> None:
    """The start-up round: every non-terminal generation idle since before now, batch after batch.

    The cutoff is fixed when the round starts, so a generation stamped by an earlier batch (or just
    moving again) is not claimed twice.
    """
    started: datetime = await sweeper.pool.fetchval("SELECT now()")
    total = 0
    while True:
        claimed = await reconcile_once(sweeper.pool, sweeper.producer, started)
        total += len(claimed)
        if len(claimed) < BATCH:
            break
    if total:
        log.info("reconciler: %d non-terminal generations re-driven at start-up", total)


def _every(deps: Any) -> float:
    """A quarter of the idle threshold (at most a minute): a stalled generation waits at most 1.25x."""
    return min(float(deps.settings.reconcile_seconds) / 4, 60.0)


sweep = Sweep(name="reconcile", run=reconcile_round, every=_every, at_start=catch_up)

for _action in ("requested", "last_step", "prompted", "outcome", "nothing", "given_up"):
    metrics.RECONCILER_ACTIONS.labels(_action)  # at 0 from the start: a dashboard shows "none yet"
