"""Retention: the bookkeeping that makes repeats harmless is kept for ``retention_days``, then deleted.

``processed_events`` (one row per event a stage handled), ``webhook_deliveries`` (one per provider webhook)
and ``submissions`` (one per clip submission tried) grow with every job and are only ever needed while a
repeat can still arrive; the window is a setting, longer than any redelivery or retry (see
``Settings.retention_days``). Deleted in small batches (``ctid`` ... ``LIMIT``) so a round never holds
long locks or a long transaction, and never a row something in flight may still need:

* ``processed_events`` of a generation that is not terminal: the reconciler re-drives it from them, and
  they are what turns a redelivered event into a no-op;
* ``submissions`` of a generation that is not terminal: a clip that may still be outstanding is found
  again through its submission instead of being paid for twice. Once the generation has ended nothing
  submits for it any more.

Every replica of the intake stage runs it; batches are taken with ``SKIP LOCKED``, so two replicas at once
share the rows instead of waiting on each other.
"""

import logging
from typing import Any

import asyncpg

from reelstream import metrics
from reelstream.runtime import Sweep, Sweeper

log = logging.getLogger(__name__)

#: Rows per DELETE: short statements, short locks.
BATCH = 1000
#: DELETEs per table and round, so one round has an end even far behind; the next round goes on.
MAX_BATCHES = 100
#: Seconds between rounds: the window is days, an hour late is nothing.
EVERY_SECONDS = 3600.0

#: table → the DELETE of one batch; $1 = retention in days, $2 = batch size.
_DELETES: dict[str, str] = {
    "processed_events": """
DELETE FROM processed_events WHERE ctid IN (
    SELECT p.ctid FROM processed_events p
    WHERE p.processed_at < now() - make_interval(days => $1)
      AND NOT EXISTS (
          SELECT 1 FROM generations g
          WHERE g.id = p.generation_id AND g.status NOT IN ('completed', 'failed', 'canceled'))
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)""",
    "webhook_deliveries": """
DELETE FROM webhook_deliveries WHERE ctid IN (
    SELECT ctid FROM webhook_deliveries
    WHERE received_at < now() - make_interval(days => $1)
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)""",
    # A row from before migration 0004 has no generation_id: its marker starts with it.
    "submissions": """
DELETE FROM submissions WHERE ctid IN (
    SELECT s.ctid FROM submissions s
    WHERE s.created_at < now() - make_interval(days => $1)
      AND NOT EXISTS (
          SELECT 1 FROM generations g
          WHERE g.id = COALESCE(s.generation_id, split_part(s.marker, '.', 1))
            AND g.status NOT IN ('completed', 'failed', 'canceled'))
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)""",
}


async def delete_expired(
    pool: asyncpg.Pool, days: float, *, batch: int = BATCH, max_batches: int = MAX_BATCHES
) -> dict[str, int]:
    """Delete the rows older than ``days`` that nothing in flight needs; returns the count per table."""
    counts: dict[str, int] = {}
    for table, sql in _DELETES.items():
        deleted = 0
        for _ in range(max_batches):
            status: str = await pool.execute(sql, float(days), batch)
            n = int(status.split()[-1])  # "DELETE <n>"
            deleted += n
            if n < batch:
                break
        counts[table] = deleted
        if deleted:
            metrics.RETENTION_DELETED.labels(table).inc(deleted)
    return counts


async def retention_round(sweeper: Sweeper) -> None:
    deps: Any = sweeper.deps
    days = float(deps.settings.retention_days)
    counts = await delete_expired(sweeper.pool, days)
    if any(counts.values()):
        log.info(
            "retention: deleted rows older than %g days: %s",
            days,
            ", ".join(f"{table} {n}" for table, n in counts.items()),
        )


sweep = Sweep(name="retention", run=retention_round, every=lambda _deps: EVERY_SECONDS)
