"""The runtime never stalls on one message and never leaves a generation hanging (real tansu + Postgres).

A handler that keeps failing is dead-lettered after the transient budget and its generation ends
``failed``; a slow or retrying key holds up neither its partition nor the stage; ``prepare`` runs with
no connection held.
"""

import asyncio
import inspect
import json
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import BaseModel

from reelstream import db
from reelstream.events import encode, make_event
from reelstream.kafka import Producer, ensure_topics
from reelstream.runtime import Context, RuntimeConfig, Stage, StageRunner, TransientError
from schemas import topics as topic_names
from schemas.topics import dlq


class Item(BaseModel):
    generation_id: str
    n: int


def gen_id() -> str:
    return "gen_" + uuid.uuid4().hex


async def new_topic(bootstrap: str, partitions: int = 4) -> str:
    name = f"rr_{uuid.uuid4().hex[:10]}"
    await ensure_topics(bootstrap, [name, dlq(name)], partitions=partitions)
    return name


async def produce(bootstrap: str, topic: str, items: list[Item]) -> None:
    kafka = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await kafka.start()
    try:
        for item in items:
            event = make_event(topic, item, source="/tests", subject=item.generation_id)
            await kafka.send_and_wait(topic, encode(event), key=item.generation_id.encode())
    finally:
        await kafka.stop()


async def insert_generation(pool: asyncpg.Pool, generation_id: str, status: str = "generating") -> None:
    await pool.execute(
        "INSERT INTO generations (id, status, prompt, duration_seconds, aspect_ratio, options)"
        " VALUES ($1, $2, 'a test', 5, '16:9', '{}'::jsonb)",
        generation_id,
        status,
    )


async def read_all(bootstrap: str, topic: str, seconds: float = 2.0) -> list[tuple[bytes | None, bytes]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    out: list[tuple[bytes | None, bytes]] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                out.extend((r.key, r.value) for r in records if r.value is not None)
    finally:
        await consumer.stop()
    return out


async def eventually(check: Callable[[], Any], timeout: float = 30.0) -> None:
    """Poll ``check`` (a plain or async predicate over state outside this test) until it holds."""
    async with asyncio.timeout(timeout):
        while True:
            result = check()
            if await result if inspect.isawaitable(result) else result:
                return
            await asyncio.sleep(0.1)


class Running:
    """A StageRunner in this process, stopped on exit."""

    def __init__(self, runner: StageRunner) -> None:
        self.runner = runner
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> StageRunner:
        self.task = asyncio.create_task(self.runner.run())
        await asyncio.wait_for(self.runner.ready.wait(), 30)
        return self.runner

    async def __aexit__(self, *_: object) -> None:
        self.runner.stop()
        assert self.task is not None
        await self.task


def config(bootstrap: str, **overrides: Any) -> RuntimeConfig:
    return RuntimeConfig(
        bootstrap=bootstrap,
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
        shutdown_grace=2.0,
        **overrides,
    )


async def test_an_event_that_keeps_failing_is_dead_lettered_and_its_generation_fails(
    kafka_bootstrap: str, pool: asyncpg.Pool, producer: Producer
) -> None:
    topic = await new_topic(kafka_bootstrap)
    doomed, poisoned = gen_id(), gen_id()
    others = [gen_id() for _ in range(10)]
    for generation in (doomed, poisoned, *others):
        await insert_generation(pool, generation)
    handled: list[str] = []

    async def handle(ctx: Context[Item]) -> None:
        if ctx.generation_id == doomed:
            raise TransientError("the provider stays unreachable")
        handled.append(ctx.generation_id)

    group = f"grp_{uuid.uuid4().hex[:8]}"
    stage = Stage(name=group, topics=[topic], handler=handle, payloads={topic: Item})
    runner = StageRunner(
        stage, pool, producer, config(kafka_bootstrap, transient_budget=1.5, max_backoff=0.3)
    )
    async with Running(runner):
        await produce(kafka_bootstrap, topic, [Item(generation_id=g, n=0) for g in (doomed, *others)])
        kafka = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await kafka.start()
        await kafka.send_and_wait(topic, b"\x00 not an event", key=poisoned.encode())
        await kafka.stop()

        async def both_failed() -> bool:
            rows = await pool.fetch("SELECT status FROM generations WHERE id = ANY($1)", [doomed, poisoned])
            return [r["status"] for r in rows] == ["failed", "failed"]

        await eventually(both_failed)
        await eventually(lambda: len(handled) == len(others))

    for generation in (doomed, poisoned):
        error = json.loads(
            await pool.fetchval("SELECT error::text FROM generations WHERE id = $1", generation)
        )
        assert error["code"] == "internal" and error["stage"] == group, error
    doomed_error = await pool.fetchval("SELECT error->>'message' FROM generations WHERE id = $1", doomed)
    assert "the provider stays unreachable" in doomed_error
    assert sorted(handled) == sorted(others)  # the rest went on
    letters = await read_all(kafka_bootstrap, dlq(topic))
    assert sorted(k for k, _ in letters) == sorted([doomed.encode(), poisoned.encode()])
    failed_events = [
        json.loads(v)["subject"] for _, v in await read_all(kafka_bootstrap, topic_names.GENERATION_FAILED)
    ]
    assert doomed in failed_events and poisoned in failed_events
    print(f"\n2 generations dead-lettered and failed, {len(handled)} others handled meanwhile")


async def test_a_slow_or_retrying_key_stalls_neither_its_partition_nor_the_stage(
    kafka_bootstrap: str, pool: asyncpg.Pool, producer: Producer
) -> None:
    topic = await new_topic(kafka_bootstrap, partitions=1)  # every key on one partition
    slow, flaky_a, flaky_b = gen_id(), gen_id(), gen_id()
    release = asyncio.Event()
    handled: list[str] = []

    async def handle(ctx: Context[Item]) -> None:
        if ctx.generation_id == slow:
            await release.wait()
        elif ctx.generation_id in (flaky_a, flaky_b) and not release.is_set():
            raise TransientError("not yet")
        handled.append(ctx.generation_id)

    group = f"grp_{uuid.uuid4().hex[:8]}"
    stage = Stage(name=group, topics=[topic], handler=handle, payloads={topic: Item})
    # Two handler slots and 8 unfinished messages per partition: the old runtime stalled on both.
    runner = StageRunner(stage, pool, producer, config(kafka_bootstrap, concurrency=2, max_in_flight=8))
    others = [gen_id() for _ in range(60)]
    async with Running(runner):
        await produce(kafka_bootstrap, topic, [Item(generation_id=g, n=0) for g in (slow, flaky_a, flaky_b)])
        await produce(kafka_bootstrap, topic, [Item(generation_id=g, n=0) for g in others])
        await eventually(lambda: set(others) <= set(handled))
        assert slow not in handled and flaky_a not in handled
        release.set()
        await eventually(lambda: {slow, flaky_a, flaky_b} <= set(handled))
    print(f"\n{len(others)} events handled while one key was stuck and two kept retrying")


async def test_prepare_holds_no_connection_while_it_calls_out(
    kafka_bootstrap: str, database_url: str, producer: Producer
) -> None:
    await db.migrate(database_url)
    pool = await db.create_pool(database_url, min_size=1, max_size=1)  # one connection in all
    topic = await new_topic(kafka_bootstrap)
    generation = gen_id()
    calling_out = asyncio.Event()
    may_answer = asyncio.Event()

    async def prepare(ctx: Context[Item]) -> str:
        calling_out.set()
        await may_answer.wait()  # a slow provider; the pool's only connection must stay free
        return "answer"

    async def handle(ctx: Context[Item]) -> None:
        await ctx.conn.execute(
            "INSERT INTO analysis_cache (cache_key, analysis) VALUES ($1, '{}'::jsonb)",
            ctx.prepared + ctx.event.id,
        )

    group = f"grp_{uuid.uuid4().hex[:8]}"
    stage = Stage(name=group, topics=[topic], handler=handle, prepare=prepare, payloads={topic: Item})
    try:
        async with Running(StageRunner(stage, pool, producer, config(kafka_bootstrap))):
            await produce(kafka_bootstrap, topic, [Item(generation_id=generation, n=0)])
            await asyncio.wait_for(calling_out.wait(), 20)
            async with asyncio.timeout(2):  # would hang if prepare held the connection
                assert await pool.fetchval("SELECT 1") == 1
            may_answer.set()
            await eventually(
                lambda: pool.fetchval(
                    "SELECT count(*) = 1 FROM analysis_cache WHERE cache_key LIKE 'answer%'"
                )
            )
    finally:
        await pool.close()
