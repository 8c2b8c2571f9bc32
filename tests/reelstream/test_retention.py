"""Retention on a real Postgres: old bookkeeping goes, recent or still-needed bookkeeping stays."""

import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace

import asyncpg
import pytest

from reelstream import db, retention
from reelstream.runtime import Sweeper
from reelstream.settings import Settings
from tests.reelstream.test_reconcile import fresh_database

DAYS = 7.0


@pytest.fixture(scope="module")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with fresh_database(database_url) as url:
        p = await db.create_pool(url, max_size=2)
        try:
            yield p
        finally:
            await p.close()


async def generation(pool: asyncpg.Pool, status: str) -> str:
    generation_id = "gen_" + uuid.uuid4().hex
    await pool.execute(
        "INSERT INTO generations (id, status, prompt, duration_seconds, aspect_ratio, options)"
        " VALUES ($1, $2, 'p', 5, '16:9', '{}')",
        generation_id,
        status,
    )
    return generation_id


async def processed(pool: asyncpg.Pool, generation_id: str | None, days_ago: float) -> str:
    event_id = str(uuid.uuid4())
    await pool.execute(
        "INSERT INTO processed_events (consumer, event_id, emitted, generation_id, processed_at)"
        " VALUES ('intake', $1, '[]', $2, now() - make_interval(days => $3))",
        event_id,
        generation_id,
        days_ago,
    )
    return event_id


async def delivery(pool: asyncpg.Pool, days_ago: float) -> str:
    webhook_id = f"msg_{uuid.uuid4().hex}"
    await pool.execute(
        "INSERT INTO webhook_deliveries (webhook_id, prediction_id, received_at)"
        " VALUES ($1, 'p', now() - make_interval(days => $2))",
        webhook_id,
        days_ago,
    )
    return webhook_id


async def submission(pool: asyncpg.Pool, generation_id: str, days_ago: float, *, legacy: bool = False) -> str:
    """A submission intent; ``legacy``: written before migration 0004 (marker only)."""
    marker = f"{generation_id}.clip_{uuid.uuid4().hex[:6]}.1"
    await pool.execute(
        "INSERT INTO submissions (marker, generation_id, clip_id, attempt, created_at)"
        " VALUES ($1, $2, 'clip', 1, now() - make_interval(days => $3))",
        marker,
        None if legacy else generation_id,
        days_ago,
    )
    return marker


async def remaining(pool: asyncpg.Pool, table: str, column: str, ids: list[str]) -> set[str]:
    rows = await pool.fetch(f"SELECT {column} FROM {table} WHERE {column} = ANY($1::text[])", ids)
    return {r[column] for r in rows}


async def test_old_rows_go_recent_and_still_needed_rows_stay(pool: asyncpg.Pool) -> None:
    done = await generation(pool, "completed")
    live = await generation(pool, "generating")

    old_events = [await processed(pool, done, 8) for _ in range(5)] + [await processed(pool, None, 30)]
    recent_event = await processed(pool, done, 6)
    live_event = await processed(pool, live, 8)  # the reconciler may still need it

    old_deliveries = [await delivery(pool, 8) for _ in range(3)]
    recent_delivery = await delivery(pool, 1)

    old_submissions = [await submission(pool, done, 8), await submission(pool, done, 9, legacy=True)]
    recent_submission = await submission(pool, done, 2)
    outstanding = [await submission(pool, live, 8), await submission(pool, live, 8, legacy=True)]

    counts = await retention.delete_expired(pool, DAYS, batch=2)  # several batches per table

    assert counts == {"processed_events": 6, "webhook_deliveries": 3, "submissions": 2}
    all_events = [*old_events, recent_event, live_event]
    assert await remaining(pool, "processed_events", "event_id", all_events) == {recent_event, live_event}
    assert await remaining(pool, "webhook_deliveries", "webhook_id", [*old_deliveries, recent_delivery]) == {
        recent_delivery
    }
    all_submissions = [*old_submissions, recent_submission, *outstanding]
    assert await remaining(pool, "submissions", "marker", all_submissions) == {
        recent_submission,
        *outstanding,
    }

    # Once the generation has ended, what it kept goes too; a second round finds nothing else.
    await pool.execute("UPDATE generations SET status = 'failed' WHERE id = $1", live)
    assert await retention.delete_expired(pool, DAYS) == {
        "processed_events": 1,
        "webhook_deliveries": 0,
        "submissions": 2,
    }
    assert await retention.delete_expired(pool, DAYS) == {
        "processed_events": 0,
        "webhook_deliveries": 0,
        "submissions": 0,
    }


async def test_a_round_reads_the_window_from_the_settings(pool: asyncpg.Pool) -> None:
    done = await generation(pool, "canceled")
    old, kept = await processed(pool, done, 3), await processed(pool, done, 1)

    settings = Settings(retention_days=2)
    await retention.retention_round(Sweeper("intake", pool, None, SimpleNamespace(settings=settings)))  # type: ignore[arg-type]

    assert await remaining(pool, "processed_events", "event_id", [old, kept]) == {kept}


def test_the_window_cannot_be_shorter_than_a_day() -> None:
    """Shorter than a day would forget webhooks and redeliveries that can still come."""
    with pytest.raises(ValueError):
        Settings(retention_days=0.5)
    assert Settings().retention_days == 7
