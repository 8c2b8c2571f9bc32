"""The stage runtime against a real broker (tansu) and a real Postgres: counts asserted, faults injected."""

import asyncio
import json
import signal
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from counter_stage import SCHEMA, Item, make_stage

from reelstream import db
from reelstream.events import encode, make_event
from reelstream.kafka import Producer, ensure_topics
from reelstream.runtime import RuntimeConfig, StageRunner
from schemas.topics import dlq

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "support" / "counter_stage.py"


@pytest.fixture
async def pg(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    await db.migrate(database_url)
    pool = await db.create_pool(database_url, max_size=4)
    await pool.execute(SCHEMA)
    yield pool
    await pool.close()


@pytest.fixture
async def topics(kafka_bootstrap: str) -> tuple[str, str, str]:
    tag = uuid.uuid4().hex[:8]
    names = (f"rt_in_{tag}", f"rt_out_{tag}", f"rt_grp_{tag}")
    await ensure_topics(kafka_bootstrap, [names[0], names[1], dlq(names[0])])
    return names


async def produce_items(
    bootstrap: str, topic: str, count: int, *, keys: int = 50, start: int = 0
) -> list[str]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    ids = []
    try:
        futures = []
        for n in range(start, start + count):
            key = f"gen_{n % keys:032x}"
            event = make_event(topic, Item(generation_id=key, n=n), source="/tests", subject=key)
            ids.append(event.id)
            futures.append(await producer.send(topic, encode(event), key=key.encode()))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return ids


class StageProcess:
    def __init__(
        self, bootstrap: str, url: str, in_topic: str, out_topic: str, group: str, delay: float = 0.0
    ):
        self.args = [sys.executable, str(SCRIPT), bootstrap, url, in_topic, out_topic, group, str(delay)]
        self.proc: subprocess.Popen[str] | None = None

    async def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        line = await asyncio.to_thread(self.proc.stdout.readline)  # type: ignore[union-attr]
        assert line.strip() == "ready", f"stage did not start: {line!r}"

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    async def terminate(self) -> dict[str, float]:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.to_thread(self.proc.communicate, timeout=60)
        assert self.proc.returncode == 0, f"exit code {self.proc.returncode}"
        return json.loads(out.strip().splitlines()[-1])


async def effects(pool: asyncpg.Pool, group: str) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT event_id, key, n, count, seq FROM counter_effects WHERE grp = $1", group)


async def wait_for_effects(pool: asyncpg.Pool, group: str, at_least: int, timeout: float = 120) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await pool.fetchval("SELECT count(*) FROM counter_effects WHERE grp = $1", group) >= at_least:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{group}: fewer than {at_least} events handled after {timeout}s")


async def read_topic(
    bootstrap: str, topic: str, expect: int, timeout: float = 30
) -> list[tuple[bytes | None, bytes | None, dict[str, bytes]]]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    out: list[tuple[bytes | None, bytes | None, dict[str, bytes]]] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(out) < expect and loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                out.extend((r.key, r.value, dict(r.headers)) for r in records)
        # Anything more that is already there counts too (duplicates would show up here).
        batch = await consumer.getmany(timeout_ms=1000)
        for records in batch.values():
            out.extend((r.key, r.value, dict(r.headers)) for r in records)
    finally:
        await consumer.stop()
    return out


def assert_in_key_order(rows: list[asyncpg.Record]) -> None:
    by_key: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for row in rows:
        by_key[row["key"]].append((row["seq"], row["n"]))
    for key, handled in by_key.items():
        ns = [n for _, n in sorted(handled)]
        assert ns == sorted(ns), f"events of {key} handled out of order: {ns}"


async def test_thousand_events_each_handled_and_emitted_once_across_sigkill(
    kafka_bootstrap: str, database_url: str, pg: asyncpg.Pool, topics: tuple[str, str, str]
) -> None:
    in_topic, out_topic, group = topics
    ids = await produce_items(kafka_bootstrap, in_topic, 1000)
    stage = StageProcess(kafka_bootstrap, database_url, in_topic, out_topic, group, delay=0.002)
    await stage.start()
    await wait_for_effects(pg, group, 250)
    stage.kill()  # SIGKILL in the middle: no commit, no goodbye
    handled_before = len(await effects(pg, group))
    assert 250 <= handled_before < 1000, "the kill must land mid-stream for this test to mean anything"

    stage = StageProcess(kafka_bootstrap, database_url, in_topic, out_topic, group)
    await stage.start()
    await wait_for_effects(pg, group, 1000)
    await stage.terminate()

    rows = await effects(pg, group)
    assert len(rows) == 1000
    assert {r["event_id"] for r in rows} == set(ids)
    assert [r for r in rows if r["count"] != 1] == [], "a side effect ran twice"
    assert_in_key_order(rows)

    # Downstream: every input produced exactly one distinct event id, and a deduplicating consumer
    # (the same runtime) handles each exactly once even if the kill made the topic carry repeats.
    emitted = await read_topic(kafka_bootstrap, out_topic, 1000)
    distinct = {json.loads(v)["id"] for _, v, _ in emitted if v}
    assert len(distinct) == 1000
    downstream = f"{group}_down"
    producer = Producer(kafka_bootstrap)
    await producer.start()
    runner = StageRunner(
        make_stage(downstream, out_topic, None, 0.0),
        pg,
        producer,
        RuntimeConfig(bootstrap=kafka_bootstrap, session_timeout_ms=2000, heartbeat_interval_ms=500),
    )
    task = asyncio.create_task(runner.run())
    try:
        await wait_for_effects(pg, downstream, 1000)
        await asyncio.sleep(1.0)  # let any repeats arrive
    finally:
        runner.stop()
        await task
        await producer.stop()
    down_rows = await effects(pg, downstream)
    assert len(down_rows) == 1000
    assert all(r["count"] == 1 for r in down_rows)


async def test_undecodable_message_goes_to_dlq_and_stage_goes_on(
    kafka_bootstrap: str, database_url: str, pg: asyncpg.Pool, topics: tuple[str, str, str]
) -> None:
    in_topic, out_topic, group = topics
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    garbage = b"\x00\xffnot json at all"
    wrong_shape = encode(make_event(in_topic, Item(generation_id="gen_x", n=1), source="/t", subject="gen_x"))
    wrong_shape = wrong_shape.replace(b'"n":1', b'"n":"one"')
    try:
        await producer.send_and_wait(in_topic, garbage, key=b"gen_bad")
        await producer.send_and_wait(in_topic, wrong_shape, key=b"gen_bad")
    finally:
        await producer.stop()
    await produce_items(kafka_bootstrap, in_topic, 20, keys=3)

    stage = StageProcess(kafka_bootstrap, database_url, in_topic, out_topic, group)
    await stage.start()
    await wait_for_effects(pg, group, 20)
    outcomes = await stage.terminate()

    dead = await read_topic(kafka_bootstrap, dlq(in_topic), 2)
    assert [v for _, v, _ in dead] == [garbage, wrong_shape]
    assert dead[0][2]["error_type"] in (b"UnicodeDecodeError", b"JSONDecodeError")
    assert dead[0][2]["error"].startswith(dead[0][2]["error_type"] + b": ")
    assert dead[1][2]["error_type"] == b"ValidationError" and b"valid integer" in dead[1][2]["error"]
    assert dead[1][2]["original_topic"] == in_topic.encode() and dead[1][2]["original_offset"] == b"1"
    assert len(await effects(pg, group)) == 20
    assert outcomes.get("handled") == 20


class FlakyProxy:
    """A TCP proxy in front of Postgres that can be cut: connections drop and new ones are refused."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server: asyncio.Server | None = None
        self.port = 0
        self.open: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        for writer in list(self.open):
            writer.transport.abort()
        self.open.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.open.update({writer, up_writer})

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def committed(bootstrap: str, group: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        total = 0
        for p in consumer.partitions_for_topic(topic) or set():
            total += await consumer.committed(TopicPartition(topic, p)) or 0
        return total
    finally:
        await consumer.stop()


async def test_postgres_outage_is_retried_without_commits_and_loses_nothing(
    kafka_bootstrap: str, database_url: str, pg: asyncpg.Pool, topics: tuple[str, str, str]
) -> None:
    in_topic, out_topic, group = topics
    pg_port = _port_of(database_url)
    proxy = FlakyProxy(pg_port)
    await proxy.start()
    proxied_url = _with_port(database_url, proxy.port)
    pool = await db.create_pool(proxied_url, min_size=1, max_size=4)
    producer = Producer(kafka_bootstrap)
    await producer.start()
    runner = StageRunner(
        make_stage(group, in_topic, out_topic, 0.0),
        pool,
        producer,
        RuntimeConfig(
            bootstrap=kafka_bootstrap, session_timeout_ms=2000, heartbeat_interval_ms=500, max_backoff=1.0
        ),
    )
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(runner.ready.wait(), 30)
        await produce_items(kafka_bootstrap, in_topic, 50, keys=5)
        await wait_for_effects(pg, group, 50)
        await asyncio.sleep(0.5)
        committed_before = await committed(kafka_bootstrap, group, in_topic)
        assert committed_before == 50

        await proxy.cut()
        await produce_items(kafka_bootstrap, in_topic, 100, keys=7, start=50)
        await asyncio.sleep(10)  # ten seconds without a database
        assert len(await effects(pg, group)) == 50, "nothing can have been handled while Postgres was away"
        assert await committed(kafka_bootstrap, group, in_topic) == committed_before, (
            "committed during outage"
        )
        assert not task.done(), "the stage must survive the outage"

        await proxy.start()  # Postgres is back (same port)
        await wait_for_effects(pg, group, 150, timeout=60)
        await asyncio.sleep(0.5)
        assert await committed(kafka_bootstrap, group, in_topic) == 150
    finally:
        runner.stop()
        await task
        await producer.stop()
        await pool.close()
        await proxy.cut()
    rows = await effects(pg, group)
    assert len(rows) == 150 and all(r["count"] == 1 for r in rows)
    assert_in_key_order(rows)


async def test_sigterm_exits_cleanly_and_nothing_is_handled_twice_after_restart(
    kafka_bootstrap: str, database_url: str, pg: asyncpg.Pool, topics: tuple[str, str, str]
) -> None:
    in_topic, out_topic, group = topics
    await produce_items(kafka_bootstrap, in_topic, 300, keys=20)
    stage = StageProcess(kafka_bootstrap, database_url, in_topic, out_topic, group, delay=0.01)
    await stage.start()
    await wait_for_effects(pg, group, 60)
    first = await stage.terminate()  # exit code 0 asserted inside
    handled_first = len(await effects(pg, group))
    assert handled_first < 300, "SIGTERM must land mid-stream for this test to mean anything"

    stage = StageProcess(kafka_bootstrap, database_url, in_topic, out_topic, group)
    await stage.start()
    await wait_for_effects(pg, group, 300)
    await asyncio.sleep(0.5)
    second = await stage.terminate()
    rows = await effects(pg, group)
    assert len(rows) == 300 and all(r["count"] == 1 for r in rows)
    # A clean shutdown committed everything it finished: the restart sees no already-handled event again.
    assert second.get("duplicate", 0) == 0
    assert first.get("handled", 0) + second.get("handled", 0) == 300


def _port_of(url: str) -> int:
    from urllib.parse import urlsplit

    return urlsplit(url).port or 5432


def _with_port(url: str, port: int) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = netloc[-1].split(":")[0]
    new = f"{host}:{port}" if len(netloc) == 1 else f"{netloc[0]}@{host}:{port}"
    return urlunsplit(parts._replace(netloc=new))


async def test_sweeps_run_on_their_timer_survive_a_failed_round_and_stop_with_the_stage(
    kafka_bootstrap: str, pg: asyncpg.Pool, topics: tuple[str, str, str]
) -> None:
    from reelstream.runtime import Sweep, Sweeper

    in_topic, out_topic, group = topics
    rounds: list[str] = []
    third = asyncio.Event()

    async def sweep(sweeper: Sweeper) -> None:
        rounds.append(sweeper.stage)
        if len(rounds) >= 3:
            third.set()
        if len(rounds) == 1:
            raise RuntimeError("a crashed round")  # logged; the next round still comes
        await sweeper.publish(
            out_topic, Item(generation_id="k", n=len(rounds)), subject="k", event_id=f"sweep-{group}"
        )

    stage = make_stage(group, in_topic, out_topic, 0.0)
    stage.sweeps = [Sweep(name="tick", run=sweep, every=lambda _deps: 0.1)]
    producer = Producer(kafka_bootstrap)
    await producer.start()
    runner = StageRunner(
        stage, pg, producer, RuntimeConfig(bootstrap=kafka_bootstrap, session_timeout_ms=2000)
    )
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(third.wait(), 60)
    finally:
        runner.stop()
        await task
        await producer.stop()
    after_stop = len(rounds)
    await asyncio.sleep(0.5)
    assert len(rounds) == after_stop  # stopped with the stage
    assert set(rounds) == {group}
    published = await read_topic(kafka_bootstrap, out_topic, 2)
    assert {json.loads(v)["id"] for _, v, _ in published if v} == {f"sweep-{group}"}
