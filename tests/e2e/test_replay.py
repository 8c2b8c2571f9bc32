"""Replay on a whole in-process stack: replaying every topic from the beginning spends nothing and changes
nothing; ``--force`` starts a new attempt that renders a new video."""

import asyncio
import hashlib
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import av
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from reelstream import db, metrics, service
from reelstream.replay import PIPELINE_TOPICS, select_events
from schemas.api import DELIVERY_SIZES

from .conftest import Stack, running_stack, stack_settings

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent / "reelstream"
SUBJECTS = (
    "A skateboarder at golden hour, slow motion, warm and free",
    "Rain on a tin roof, a cat asleep by the window, cosy",
    "A chef flambes a pan in a busy kitchen, fast and bright",
    "A lighthouse keeper's morning, calm sea, soft light",
    "Kites over dunes at noon, playful and light",
)
#: Ten orders, as the issue asks: every topic replayed after ten completed generations.
PROMPTS = tuple(f"{subject} (take {n})" for n in (1, 2) for subject in SUBJECTS)


@dataclass
class Finished:
    stack: Stack
    pool: asyncpg.Pool
    generation_ids: list[str]


@pytest.fixture(scope="module")
async def finished(
    kafka_bootstrap: str, new_database: Callable[[], Awaitable[str]], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Finished]:
    """A stack of this module's own with ten generations completed by the local renderer."""
    database_url = await new_database()
    settings = stack_settings(tmp_path_factory.mktemp("replay-stack"), kafka_bootstrap, database_url)
    pool = await db.create_pool(database_url, max_size=4)
    try:
        async with running_stack(settings) as stack:
            async with aiohttp.ClientSession() as session:
                ids = []
                for prompt in PROMPTS:
                    body = {"prompt": prompt, "duration_seconds": 5, "aspect_ratio": "1:1"}
                    async with session.post(f"{stack.url}/api/v1/generations", json=body) as resp:
                        assert resp.status == 202, await resp.text()
                        ids.append((await resp.json())["generation_id"])
            for generation_id in ids:
                assert await wait_until_ended(pool, generation_id) == "completed"
            yield Finished(stack, pool, ids)
    finally:
        await pool.close()


async def wait_until_ended(pool: asyncpg.Pool, generation_id: str, within: float = 240) -> str:
    """The generation's terminal status; fails fast when a generating attempt submits no clip at all."""
    idle_since: float | None = None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        row = await pool.fetchrow(
            "SELECT g.status, count(c.clip_id) FILTER (WHERE c.status <> 'pending') AS moving"
            " FROM generations g LEFT JOIN clips c ON c.generation_id = g.id WHERE g.id = $1"
            " GROUP BY g.status",
            generation_id,
        )
        state: str = row["status"]
        if state in ("completed", "failed", "canceled"):
            return state
        stuck = state == "generating" and row["moving"] == 0
        idle_since = (idle_since or loop.time()) if stuck else None
        assert idle_since is None or loop.time() - idle_since < 30, (
            f"{generation_id} has been generating for 30 s without submitting a clip"
        )
        await asyncio.sleep(0.5)
    raise AssertionError(f"{generation_id} did not end within {within} s")


async def settle(bootstrap: str, within: float = 120) -> None:
    """Wait until every stage group has committed everything on its topics, and nothing new arrives."""
    groups = {name: service.load_stage(name).topics for name in service.STAGE_NAMES}
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    members = {
        name: AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=name, enable_auto_commit=False)
        for name in groups
    }
    await reader.start()
    for member in members.values():
        await member.start()  # never subscribed: it reads the group's offsets without joining it
    try:
        partitions = {
            name: [TopicPartition(t, p) for t in names for p in reader.partitions_for_topic(t) or ()]
            for name, names in groups.items()
        }
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        previous: dict[TopicPartition, int] | None = None
        while loop.time() < deadline:
            ends = await reader.end_offsets([tp for tps in partitions.values() for tp in tps])
            behind = [
                (name, tp)
                for name, tps in partitions.items()
                for tp in tps
                if (await members[name].committed(tp) or 0) < ends[tp]
            ]
            if not behind and ends == previous:
                return
            previous = ends if not behind else None
            await asyncio.sleep(1.0)
        raise AssertionError(f"the stages did not catch up within {within} s: {behind[:5]}")
    finally:
        for member in members.values():
            await member.stop()
        await reader.stop()


def cli_env(finished: Finished) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELSTREAM_")}
    settings = finished.stack.settings
    env.update(
        REELSTREAM_DATA_DIR=str(settings.data_dir / "cli"),
        REELSTREAM_KAFKA_BOOTSTRAP=settings.kafka_bootstrap or "",
        REELSTREAM_DATABASE_URL=settings.database_url or "",
    )
    return env


async def run_cli(finished: Finished, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        str(BIN),
        *args,
        env=cli_env(finished),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, f"reelstream {' '.join(args)}: {err.decode()}"
    return out.decode()


async def snapshot(finished: Finished) -> dict[str, Any]:
    """What a replay must not change: spending, stored files and the finished rows."""
    ids = finished.generation_ids
    storage = finished.stack.settings.data_dir / "storage" / "generations"
    files = {}
    for generation_id in ids:
        for path in sorted((storage / generation_id).rglob("*")):
            if path.is_file():
                stat = path.stat()
                files[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest(), stat.st_mtime_ns)
    return {
        "predictions": await finished.pool.fetchval(
            "SELECT count(*) FROM predictions WHERE generation_id = ANY($1::text[])", ids
        ),
        "submissions": await finished.pool.fetchval(
            "SELECT count(*) FROM submissions WHERE split_part(marker, '.', 1) = ANY($1::text[])", ids
        ),
        "files": files,
        "generations": [
            dict(r)
            for r in await finished.pool.fetch(
                "SELECT id, status, attempt, video, updated_at, compute_seconds FROM generations"
                " WHERE id = ANY($1::text[]) ORDER BY id",
                ids,
            )
        ],
        "clips": [
            dict(r)
            for r in await finished.pool.fetch(
                "SELECT generation_id, clip_id, status, attempts, prediction_id, storage_key, updated_at"
                " FROM clips WHERE generation_id = ANY($1::text[]) ORDER BY generation_id, clip_id",
                ids,
            )
        ],
    }


def duplicates() -> int:
    """Events the stages of this process recognised as already handled (the runtime's metric)."""
    return int(
        sum(
            sample.value
            for metric in metrics.EVENTS_HANDLED.collect()
            for sample in metric.samples
            if sample.name.endswith("_total") and sample.labels["outcome"] == "duplicate"
        )
    )


async def test_replaying_every_topic_from_the_beginning_changes_nothing(finished: Finished) -> None:
    before = await snapshot(finished)
    bootstrap = finished.stack.settings.kafka_bootstrap or ""
    ours = [
        s.topic
        for s in (await select_events(bootstrap, PIPELINE_TOPICS)).events
        if s.event.subject in finished.generation_ids
    ]
    duplicates_before = duplicates()
    jobs = len(finished.generation_ids)
    assert before["predictions"] >= jobs and before["submissions"] >= jobs
    assert len(before["files"]) >= 3 * jobs  # clips, final.mp4 and thumbnail.jpg of each
    assert {g["status"] for g in before["generations"]} == {"completed"}

    published = {}
    for topic in PIPELINE_TOPICS:
        out = await run_cli(finished, "replay", "--topic", topic, "--since", "1970-01-01T00:00:00Z")
        counts = [line.split(":")[1] for line in out.splitlines() if line.strip().startswith(f"{topic}:")]
        published[topic] = int(counts[0]) if counts else 0
    # At least this module's generations went through each of these once more.
    for topic in ("generation.requested", "generation.accepted", "generation.prompted", "clip.completed"):
        assert published[topic] >= jobs, published

    await settle(bootstrap)
    # Every stage saw each re-published event of ours on its topics and knew it had handled it already
    # (at least that many: re-emitted events and other modules' generations add more).
    consumers = {
        topic: sum(topic in service.load_stage(name).topics for name in service.STAGE_NAMES)
        for topic in PIPELINE_TOPICS
    }
    assert duplicates() - duplicates_before >= sum(consumers[topic] for topic in ours) > 0
    after = await snapshot(finished)
    assert after["predictions"] == before["predictions"], "a replay created predictions"
    assert after["submissions"] == before["submissions"], "a replay submitted clips"
    assert after["files"] == before["files"], "a replay rewrote stored files"
    assert after["generations"] == before["generations"], "a replay changed finished generations"
    assert after["clips"] == before["clips"]
    print(
        f"\nreplayed every topic after {jobs} completed generations: {sum(published.values())} events"
        f" re-published; new predictions {after['predictions'] - before['predictions']}, new submissions"
        f" {after['submissions'] - before['submissions']}, files rewritten 0, generations changed 0"
    )


def probe(path: Path) -> tuple[str, float, int, int]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert container.duration is not None
        return stream.codec_context.name, container.duration / 1_000_000, stream.width, stream.height


async def test_force_starts_a_new_attempt_that_completes(finished: Finished, tmp_path: Path) -> None:
    generation_id = finished.generation_ids[0]
    before = await snapshot(finished)
    out = await run_cli(finished, "replay", "--generation", generation_id, "--force")
    assert f"estimate for {generation_id}:" in out and f"started attempt 2 of {generation_id}" in out

    assert await wait_until_ended(finished.pool, generation_id) == "completed"
    row = await finished.pool.fetchrow("SELECT attempt, video FROM generations WHERE id = $1", generation_id)
    assert row["attempt"] == 2 and row["video"] is not None
    clips = await finished.pool.fetch(
        "SELECT status, attempts, first_attempt FROM clips WHERE generation_id = $1", generation_id
    )
    assert all(c["status"] == "succeeded" and c["attempts"] >= c["first_attempt"] >= 2 for c in clips)
    new_predictions = await finished.pool.fetchval(
        "SELECT count(*) FROM predictions WHERE generation_id = $1 AND attempt >= 2", generation_id
    )
    assert new_predictions >= len(clips), "the new attempt paid for no new clips"
    assert (await snapshot(finished))["predictions"] == before["predictions"] + new_predictions

    async with aiohttp.ClientSession() as session:
        async with session.get(f"{finished.stack.url}/api/v1/generations/{generation_id}/video") as resp:
            assert resp.status == 200
            video = tmp_path / "attempt2.mp4"
            video.write_bytes(await resp.read())
    codec, seconds, width, height = probe(video)
    assert codec == "h264" and seconds == pytest.approx(5, abs=0.1)
    assert (width, height) == DELIVERY_SIZES[("1:1", "720p")]
