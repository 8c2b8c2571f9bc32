"""What a crash leaves behind is finished from Postgres: an interrupted assembly, a lost request.

The stack runs in this process with a short ``reconcile_seconds``. Each test puts Postgres in the
exact state a crash at that point leaves (what committed is there, what rolled back is not, and the
broker's message is gone as with the embedded broker's memory storage) and checks that the order
still ends as the customer expects.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
import av
import pytest

from .conftest import Stack, running_stack, stack_settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def stack(
    kafka_bootstrap: str, new_database: Callable[[], Awaitable[str]], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    settings = stack_settings(
        tmp_path_factory.mktemp("recovery"),
        kafka_bootstrap,
        await new_database(),
        reconcile_seconds=1.0,
        prediction_poll_seconds=1.0,
    )
    async with running_stack(settings) as running:
        yield running


@pytest.fixture
async def db(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    assert stack.settings.database_url
    conn = await asyncpg.connect(stack.settings.database_url)
    try:
        yield conn
    finally:
        await conn.close()


async def order(stack: Stack, duration: int = 10) -> str:
    body = {
        "prompt": f"Rain on a tin roof, a cat asleep inside ({uuid.uuid4().hex[:6]})",
        "duration_seconds": duration,
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{stack.url}/api/v1/generations", json=body) as resp,
    ):
        assert resp.status == 202, await resp.text()
        generation_id: str = (await resp.json())["generation_id"]
        return generation_id


async def ended(stack: Stack, generation_id: str, timeout: float = 60) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, asyncio.timeout(timeout):
        while True:
            async with session.get(f"{stack.url}/api/v1/generations/{generation_id}") as resp:
                detail: dict[str, Any] = await resp.json()
            if detail["status"] in ("completed", "failed", "canceled"):
                return detail
            await asyncio.sleep(0.2)


async def test_an_assembly_cut_short_by_a_crash_is_finished(stack: Stack, db: asyncpg.Connection) -> None:
    generation_id = await order(stack)
    first = await ended(stack, generation_id)
    assert first["status"] == "completed", first["error"]
    final = stack.settings.data_dir / "storage" / "generations" / generation_id / "final.mp4"
    predictions = await db.fetchval(
        "SELECT count(*) FROM predictions WHERE generation_id = $1", generation_id
    )

    # The state a SIGKILL during assembly leaves: every clip recorded (committed before assembly), the
    # status "assembling" (committed), the handling of the last outcome rolled back, no final video,
    # and the event gone with the broker.
    last = await db.fetchval(
        "SELECT outcome->>'id' FROM clips WHERE generation_id = $1 ORDER BY updated_at DESC LIMIT 1",
        generation_id,
    )
    await db.execute(
        "UPDATE generations SET status = 'assembling', video = NULL, updated_at = now() - interval '1 minute'"
        " WHERE id = $1",
        generation_id,
    )
    await db.execute("DELETE FROM processed_events WHERE consumer = 'completion' AND event_id = $1", last)
    await db.execute("UPDATE processed_events SET processed_at = processed_at - interval '1 minute'")
    await db.execute(
        "UPDATE clips SET updated_at = updated_at - interval '1 minute' WHERE generation_id = $1",
        generation_id,
    )
    await asyncio.to_thread(final.unlink)

    again = await ended(stack, generation_id)
    assert again["status"] == "completed", again["error"]
    with av.open(str(final)) as container:
        assert container.duration is not None
        assert abs(container.duration / 1_000_000 - 10) < 0.05
    after = await db.fetchval("SELECT count(*) FROM predictions WHERE generation_id = $1", generation_id)
    assert after == predictions  # finished from what was stored: nothing paid again


async def test_an_outcome_lost_between_the_clips_stage_and_completion_is_polled_again(
    stack: Stack, db: asyncpg.Connection
) -> None:
    generation_id = await order(stack)
    first = await ended(stack, generation_id)
    assert first["status"] == "completed", first["error"]
    folder = stack.settings.data_dir / "storage" / "generations" / generation_id
    predictions = await db.fetchval(
        "SELECT count(*) FROM predictions WHERE generation_id = $1", generation_id
    )

    # The clips stage saw the last clip's outcome (its slot is settled) but completion never did: the
    # message was lost with the broker. Completion's record of it, the clip file and the video are not there.
    clip_id, outcome_id = await db.fetchrow(
        "SELECT clip_id, outcome->>'id' FROM clips WHERE generation_id = $1 ORDER BY idx DESC LIMIT 1",
        generation_id,
    )
    await db.execute(
        "UPDATE clips SET status = 'submitted', storage_key = NULL, outcome = NULL, polled_at = NULL,"
        " updated_at = now() - interval '1 minute' WHERE generation_id = $1 AND clip_id = $2",
        generation_id,
        clip_id,
    )
    await db.execute(
        "UPDATE generations SET status = 'generating', video = NULL WHERE id = $1", generation_id
    )
    await db.execute(
        "DELETE FROM processed_events WHERE consumer = 'completion' AND event_id = $1", outcome_id
    )
    for path in (folder / "final.mp4", folder / "clips" / f"{clip_id}.mp4"):
        await asyncio.to_thread(path.unlink)

    again = await ended(stack, generation_id)
    assert again["status"] == "completed", again["error"]
    assert await asyncio.to_thread((folder / "clips" / f"{clip_id}.mp4").is_file)
    with av.open(str(folder / "final.mp4")) as container:
        assert container.duration is not None
        assert abs(container.duration / 1_000_000 - 10) < 0.05
    after = await db.fetchval("SELECT count(*) FROM predictions WHERE generation_id = $1", generation_id)
    assert after == predictions  # asked the provider again, paid nothing again


async def test_a_request_the_gateway_never_published_is_taken_up(
    stack: Stack, db: asyncpg.Connection
) -> None:
    # The gateway died between its insert and its publish: the row exists, no event does.
    generation_id = "gen_" + uuid.uuid4().hex
    await db.execute(
        "INSERT INTO generations (id, status, prompt, duration_seconds, aspect_ratio, options, updated_at)"
        " VALUES ($1, 'queued', 'A kite over dunes at noon', 5, '9:16', '{}'::jsonb,"
        " now() - interval '1 minute')",
        generation_id,
    )
    detail = await ended(stack, generation_id)
    assert detail["status"] == "completed", detail["error"]
    assert detail["video"]["duration_seconds"] == pytest.approx(5, abs=0.05)
