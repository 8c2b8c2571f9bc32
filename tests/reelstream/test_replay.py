"""``reelstream replay`` on a real broker (tansu) and Postgres: selection, unchanged bytes, new attempts.

The library functions run against topics of their own (``topic_name``), so nothing here reaches the
stages of another test. The command runs as a user runs it, as a subprocess; where it has to use the
real topic names, the generations it touches are terminal, so any stage that later reads them does
nothing.
"""

import asyncio
import os
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from reelstream import replay
from reelstream.events import decode, encode, make_event
from reelstream.kafka import Producer, ensure_topics
from schemas import topics
from schemas.api import GenerationRequest
from schemas.envelope import CloudEvent
from schemas.events import GenerationAccepted, GenerationRequested

BIN = Path(sys.executable).parent / "reelstream"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
REQUEST = GenerationRequest(prompt="A red kite over green hills", duration_seconds=10)


def new_id() -> str:
    return "gen_" + uuid.uuid4().hex


@pytest.fixture
async def pipeline(kafka_bootstrap: str, topic_name: str) -> tuple[str, str]:
    """Two topics of this test's own, standing in for generation.requested and generation.accepted."""
    names = (f"{topic_name}.requested", f"{topic_name}.accepted")
    await ensure_topics(kafka_bootstrap, names)
    return names


async def insert_generation(
    pool: asyncpg.Pool, generation_id: str, status: str = "completed", **columns: Any
) -> None:
    await pool.execute(
        "INSERT INTO generations (id, status, prompt, duration_seconds, aspect_ratio, brand, options)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        generation_id,
        status,
        REQUEST.prompt,
        REQUEST.duration_seconds,
        REQUEST.aspect_ratio,
        None,
        REQUEST.options.model_dump(mode="json"),
    )
    for name, value in columns.items():
        await pool.execute(f"UPDATE generations SET {name} = $2 WHERE id = $1", generation_id, value)


def requested(generation_id: str, at: datetime) -> CloudEvent:
    event = make_event(
        topics.GENERATION_REQUESTED,
        GenerationRequested(generation_id=generation_id, request=REQUEST, requested_at=at),
        source="/tests",
        subject=generation_id,
    )
    return event.model_copy(update={"time": at})


def accepted(generation_id: str, at: datetime) -> CloudEvent:
    event = make_event(
        topics.GENERATION_ACCEPTED,
        GenerationAccepted(generation_id=generation_id, request=REQUEST),
        source="/tests",
        subject=generation_id,
    )
    return event.model_copy(update={"time": at})


async def produce(bootstrap: str, items: list[tuple[str, CloudEvent | bytes, bytes | None]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        for topic, value, key in items:
            raw = value if isinstance(value, bytes) else encode(value)
            await producer.send_and_wait(topic, raw, key=key)
    finally:
        await producer.stop()


async def read_all(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes]]:
    return [(r.key, r.value or b"") async for r in replay.read_to_end(bootstrap, [topic])]


# -- arguments ------------------------------------------------------------------------------------


def test_parse_time_takes_rfc3339_and_refuses_the_rest() -> None:
    assert replay.parse_time("2024-05-01T12:00:00Z") == T0
    assert replay.parse_time("2024-05-01T14:00:00+02:00") == T0
    for bad in ("yesterday", "2024-05-01T12:00:00", "2024-13-01T00:00:00Z", ""):
        with pytest.raises(ValueError):
            replay.parse_time(bad)


def test_replay_topics_are_the_pipeline_but_status() -> None:
    assert topics.GENERATION_STATUS not in replay.PIPELINE_TOPICS
    assert set(replay.PIPELINE_TOPICS) == set(topics.ALL) - {topics.GENERATION_STATUS}
    for bad in (topics.GENERATION_STATUS, "generation.accepted.dlq", "nope"):
        with pytest.raises(ValueError):
            replay.check_replay_topic(bad)


# -- selection and re-publishing ------------------------------------------------------------------


async def test_reading_a_topic_sees_every_record_of_its_last_batch(
    kafka_bootstrap: str, pipeline: tuple[str, str]
) -> None:
    """Records produced together travel in one batch; the embedded broker reports the partition's end
    as one past the batch's first record. Replay and ``dlq list`` must still see all of them."""
    topic = pipeline[0]
    keys = [new_id().encode() for _ in range(5)]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        sent = [producer.send(topic, f"value {i}".encode(), key=keys[i], partition=0) for i in range(5)]
        for ack in await asyncio.gather(*sent):
            await ack
    finally:
        await producer.stop()
    assert sorted(value for _, value in await read_all(kafka_bootstrap, topic)) == [
        f"value {i}".encode() for i in range(5)
    ]


async def test_select_by_the_events_own_time(kafka_bootstrap: str, pipeline: tuple[str, str]) -> None:
    topic = pipeline[0]
    gen = new_id()
    # Produced out of time order: the selection must read the envelope's time, not the arrival order.
    events = [requested(gen, T0 + timedelta(hours=h)) for h in (2, 0, 1, 3)]
    await produce(
        kafka_bootstrap,
        [(topic, e, gen.encode()) for e in events] + [(topic, b"not a cloudevent", gen.encode())],
    )
    selection = await replay.select_events(
        kafka_bootstrap, [topic], since=T0 + timedelta(hours=1), until=T0 + timedelta(hours=3)
    )
    assert sorted(s.event.time for s in selection.events) == [
        T0 + timedelta(hours=1),
        T0 + timedelta(hours=2),
    ]
    assert selection.unreadable == 1
    everything = await replay.select_events(kafka_bootstrap, [topic], since=T0)
    assert len(everything.events) == 4
    nothing = await replay.select_events(kafka_bootstrap, [topic], since=T0 + timedelta(days=1))
    assert nothing.events == []


async def test_select_by_generation_across_topics_in_pipeline_order(
    kafka_bootstrap: str, pipeline: tuple[str, str]
) -> None:
    req_topic, acc_topic = pipeline
    mine, other = new_id(), new_id()
    await produce(
        kafka_bootstrap,
        [
            (acc_topic, accepted(mine, T0), mine.encode()),
            (req_topic, requested(other, T0), other.encode()),
            (req_topic, requested(mine, T0), mine.encode()),
        ],
    )
    selection = await replay.select_events(kafka_bootstrap, [req_topic, acc_topic], generation_id=mine)
    assert [(s.topic, s.event.subject) for s in selection.events] == [(req_topic, mine), (acc_topic, mine)]


async def test_replay_generation_republishes_unchanged_bytes_keys_and_ids(
    kafka_bootstrap: str, pool: asyncpg.Pool, pipeline: tuple[str, str]
) -> None:
    req_topic, acc_topic = pipeline
    gen = new_id()
    await insert_generation(pool, gen)
    originals = [(req_topic, requested(gen, T0), gen.encode()), (acc_topic, accepted(gen, T0), gen.encode())]
    await produce(kafka_bootstrap, originals)

    report = await replay.replay_generation(kafka_bootstrap, pool, gen, names=pipeline)
    assert report.published == {req_topic: 1, acc_topic: 1}
    for topic, event, key in originals:
        assert isinstance(event, CloudEvent)
        records = await read_all(kafka_bootstrap, topic)
        assert records == [(key, encode(event))] * 2, "the copy must be byte-for-byte the original"

    # A second replay finds each event twice (original and copy) and sends it once more, not twice.
    again = await replay.replay_generation(kafka_bootstrap, pool, gen, names=pipeline)
    assert again.published == {req_topic: 1, acc_topic: 1}
    assert again.repeats == 2


async def test_replay_generation_refuses_a_generation_postgres_does_not_know(
    kafka_bootstrap: str, pool: asyncpg.Pool, pipeline: tuple[str, str]
) -> None:
    gen = new_id()
    await produce(kafka_bootstrap, [(pipeline[0], requested(gen, T0), gen.encode())])
    with pytest.raises(replay.UnknownGeneration):
        await replay.replay_generation(kafka_bootstrap, pool, gen, names=pipeline)
    assert len(await read_all(kafka_bootstrap, pipeline[0])) == 1


async def test_replay_range_leaves_out_generations_postgres_does_not_know(
    kafka_bootstrap: str, pool: asyncpg.Pool, pipeline: tuple[str, str]
) -> None:
    topic = pipeline[0]
    known, gone = new_id(), new_id()
    await insert_generation(pool, known)
    await produce(
        kafka_bootstrap,
        [(topic, requested(known, T0), known.encode()), (topic, requested(gone, T0), gone.encode())],
    )
    report = await replay.replay_range(kafka_bootstrap, pool, topic, T0)
    assert report.published == {topic: 1}
    assert report.unknown_generation == 1
    subjects = [decode(v).subject for _, v in await read_all(kafka_bootstrap, topic)]
    assert sorted(subjects) == sorted([known, gone, known])


async def test_replay_generation_rebuilds_a_new_attempts_missing_request(
    kafka_bootstrap: str, pool: asyncpg.Pool, pipeline: tuple[str, str]
) -> None:
    """A new attempt whose request never reached the topic (the broker failed after the reset)."""
    req_topic = pipeline[0]
    gen = new_id()
    await insert_generation(pool, gen, status="queued", attempt=2)
    report = await replay.replay_generation(
        kafka_bootstrap, pool, gen, names=pipeline, requested_topic=req_topic
    )
    assert report.rebuilt_request and report.published == {req_topic: 1}
    (key, value), *_ = await read_all(kafka_bootstrap, req_topic)
    event = decode(value)
    assert key == gen.encode() and event.id == replay.attempt_event_id(gen, 2)
    assert GenerationRequested.model_validate(event.data).request == REQUEST
    # Once it is on the topic it is replayed like any other event, not rebuilt again.
    again = await replay.replay_generation(
        kafka_bootstrap, pool, gen, names=pipeline, requested_topic=req_topic
    )
    assert not again.rebuilt_request and again.published == {req_topic: 1}


# -- a new attempt ----------------------------------------------------------------------------------


async def insert_clip(pool: asyncpg.Pool, generation_id: str, clip_id: str, **columns: Any) -> None:
    await pool.execute(
        "INSERT INTO clips (generation_id, clip_id, scene_id, idx, duration_seconds)"
        " VALUES ($1, $2, 's', 0, 5)",
        generation_id,
        clip_id,
    )
    for name, value in columns.items():
        await pool.execute(
            f"UPDATE clips SET {name} = $3 WHERE generation_id = $1 AND clip_id = $2",
            generation_id,
            clip_id,
            value,
        )


async def test_new_attempt_refuses_a_generation_that_is_still_running(
    pool: asyncpg.Pool, producer: Producer, pipeline: tuple[str, str]
) -> None:
    gen = new_id()
    await insert_generation(pool, gen, status="generating")
    with pytest.raises(replay.StillRunning, match="cancel it first"):
        await replay.start_new_attempt(
            pool, producer, gen, requested_topic=pipeline[0], status_topic=pipeline[1]
        )
    row = await pool.fetchrow("SELECT status, attempt FROM generations WHERE id = $1", gen)
    assert (row["status"], row["attempt"]) == ("generating", 1)
    with pytest.raises(replay.UnknownGeneration):
        await replay.start_new_attempt(pool, producer, new_id(), requested_topic=pipeline[0])


async def test_new_attempt_resets_a_finished_generation_and_requests_it_anew(
    kafka_bootstrap: str, pool: asyncpg.Pool, producer: Producer, pipeline: tuple[str, str]
) -> None:
    req_topic, status_topic = pipeline
    gen = new_id()
    await insert_generation(
        pool,
        gen,
        status="failed",
        analysis={"tone": "x"},
        scenes=[{"scene_id": "s"}],
        error={"code": "clip_failed", "message": "boom"},
        compute_seconds=3.5,
        reconciled_at=T0,
    )
    await insert_clip(
        pool, gen, "clip_01", status="succeeded", attempts=1, settled=True, prediction_id=f"p1-{gen}"
    )
    await insert_clip(
        pool, gen, "clip_02", status="failed", attempts=2, settled=True, error="bad", storage_key="k"
    )

    started = await replay.start_new_attempt(
        pool, producer, gen, requested_topic=req_topic, status_topic=status_topic
    )
    assert started.attempt == 2 and started.request == REQUEST

    row = await pool.fetchrow("SELECT * FROM generations WHERE id = $1", gen)
    assert row["status"] == "queued" and row["attempt"] == 2
    assert all(row[c] is None for c in ("analysis", "scenes", "video", "error", "compute_seconds"))
    assert row["reconciled_at"] is None
    clips = {r["clip_id"]: r for r in await pool.fetch("SELECT * FROM clips WHERE generation_id = $1", gen)}
    assert {c: (r["status"], r["first_attempt"], r["settled"]) for c, r in clips.items()} == {
        "clip_01": ("pending", 2, False),
        "clip_02": ("pending", 3, False),
    }
    assert all(r["prediction_id"] is None and r["storage_key"] is None for r in clips.values())
    assert all(r["error"] is None and r["outcome"] is None for r in clips.values())

    [(key, value)] = await read_all(kafka_bootstrap, req_topic)
    event = decode(value)
    assert key == gen.encode()
    assert event.id == started.event_id == replay.attempt_event_id(gen, 2)
    assert event.type == "reelstream.generation.requested" and event.source == replay.SOURCE
    assert GenerationRequested.model_validate(event.data).request == REQUEST
    [(_, status_value)] = await read_all(kafka_bootstrap, status_topic)
    assert decode(status_value).data["status"] == "queued"

    # Running again is refused while the new attempt runs; once it ended, it is attempt 3.
    with pytest.raises(replay.StillRunning):
        await replay.start_new_attempt(pool, producer, gen, requested_topic=req_topic)
    await pool.execute("UPDATE generations SET status = 'canceled' WHERE id = $1", gen)
    third = await replay.start_new_attempt(
        pool, producer, gen, requested_topic=req_topic, status_topic=status_topic
    )
    assert third.attempt == 3 and third.event_id != started.event_id


# -- the command, as a user runs it -------------------------------------------------------------


def cli_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELSTREAM_")}
    env["REELSTREAM_DATA_DIR"] = str(tmp_path / "data")  # no stack.json from a developer's own stack
    env.update({f"REELSTREAM_{k.upper()}": v for k, v in settings.items()})
    return env


async def run_cli(env: dict[str, str], *args: str, timeout: float = 90) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(BIN),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def assert_one_plain_line(stderr: str, *fragments: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    for fragment in fragments:
        assert fragment in lines[0], stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--topic", topics.GENERATION_ACCEPTED, "--since", "yesterday"], "RFC 3339"),
        (["--topic", topics.GENERATION_ACCEPTED, "--since", "2024-05-01T12:00:00"], "offset"),
        (["--generation", "gen_123"], "not a generation id"),
        (["--topic", topics.GENERATION_STATUS, "--since", "2024-05-01T12:00:00Z"], "notifications"),
        (["--topic", topics.GENERATION_ACCEPTED], "--since"),
        ([], "--generation"),
    ],
)
async def test_cli_refuses_bad_arguments_plainly(tmp_path: Path, args: list[str], fragment: str) -> None:
    code, _, err = await run_cli(cli_env(tmp_path), "replay", *args)
    assert code == 2
    assert_one_plain_line(err, "error:", fragment)


async def test_cli_unreachable_broker_and_database_are_one_line(
    tmp_path: Path, kafka_bootstrap: str, database_url: str
) -> None:
    code, _, err = await run_cli(
        cli_env(tmp_path, kafka_bootstrap="127.0.0.1:1", database_url=database_url),
        "replay",
        "--topic",
        topics.GENERATION_ACCEPTED,
        "--since",
        "2024-05-01T12:00:00Z",
    )
    assert code == 1
    assert_one_plain_line(err, "cannot reach the broker at 127.0.0.1:1")

    code, _, err = await run_cli(
        cli_env(
            tmp_path, kafka_bootstrap=kafka_bootstrap, database_url="postgresql://postgres@127.0.0.1:1/x"
        ),
        "replay",
        "--generation",
        new_id(),
    )
    assert code == 1
    assert_one_plain_line(err, "cannot reach the database")

    code, _, err = await run_cli(cli_env(tmp_path), "replay", "--generation", new_id())
    assert code == 1
    assert_one_plain_line(err, "no broker")


async def test_cli_unknown_generation_and_force_on_a_running_one(
    tmp_path: Path, kafka_bootstrap: str, database_url: str, pool: asyncpg.Pool
) -> None:
    env = cli_env(tmp_path, kafka_bootstrap=kafka_bootstrap, database_url=database_url)
    unknown = new_id()
    code, _, err = await run_cli(env, "replay", "--generation", unknown)
    assert code == 1
    assert_one_plain_line(err, f"no generation {unknown}")

    running = new_id()
    await insert_generation(pool, running, status="generating")
    try:
        code, _, err = await run_cli(env, "replay", "--generation", running, "--force")
        assert code == 1
        assert_one_plain_line(err, "still running", "cancel it first")
        assert await pool.fetchval("SELECT attempt FROM generations WHERE id = $1", running) == 1
    finally:
        await pool.execute("UPDATE generations SET status = 'canceled' WHERE id = $1", running)


async def test_cli_replays_a_generation_and_forces_a_new_attempt(
    tmp_path: Path, kafka_bootstrap: str, database_url: str, pool: asyncpg.Pool
) -> None:
    """On the real topic names: the generation is terminal, so the stages of a later test ignore it."""
    env = cli_env(tmp_path, kafka_bootstrap=kafka_bootstrap, database_url=database_url)
    gen = new_id()
    await insert_generation(pool, gen, status="completed")
    await ensure_topics(kafka_bootstrap, [topics.GENERATION_REQUESTED, topics.GENERATION_ACCEPTED])
    await produce(
        kafka_bootstrap,
        [
            (topics.GENERATION_REQUESTED, requested(gen, T0), gen.encode()),
            (topics.GENERATION_ACCEPTED, accepted(gen, T0), gen.encode()),
        ],
    )
    code, out, err = await run_cli(env, "replay", "--generation", gen)
    assert code == 0, err
    assert "2 event(s) re-published" in out
    assert f"{topics.GENERATION_REQUESTED}: 1" in out and f"{topics.GENERATION_ACCEPTED}: 1" in out

    code, out, err = await run_cli(env, "replay", "--generation", gen, "--force")
    try:
        assert code == 0, err
        assert f"estimate for {gen}: 3 clip(s) on local" in out
        assert f"started attempt 2 of {gen}" in out
        assert out.index("estimate") < out.index("started")
        assert await pool.fetchval("SELECT attempt FROM generations WHERE id = $1", gen) == 2
    finally:
        await pool.execute("UPDATE generations SET status = 'canceled' WHERE id = $1", gen)


async def test_cli_force_by_topic_prints_every_estimate_and_refuses_if_one_still_runs(
    tmp_path: Path, kafka_bootstrap: str, database_url: str, pool: asyncpg.Pool
) -> None:
    """A time window of its own (a random second in 2001), so only this test's events are selected."""
    env = cli_env(tmp_path, kafka_bootstrap=kafka_bootstrap, database_url=database_url)
    at = datetime(2001, 1, 1, tzinfo=UTC) + timedelta(seconds=uuid.uuid4().int % 10_000_000)
    window = ["--since", at.isoformat(), "--until", (at + timedelta(seconds=1)).isoformat()]
    done, running = new_id(), new_id()
    await insert_generation(pool, done, status="completed")
    await insert_generation(pool, running, status="prompting")
    await ensure_topics(kafka_bootstrap, [topics.GENERATION_REQUESTED])
    await produce(
        kafka_bootstrap,
        [(topics.GENERATION_REQUESTED, requested(g, at), g.encode()) for g in (done, running)],
    )
    try:
        code, out, err = await run_cli(
            env, "replay", "--topic", topics.GENERATION_REQUESTED, *window, "--force"
        )
        assert code == 1
        assert_one_plain_line(err, running, "still running", "cancel it first")
        assert "started" not in out
        assert await pool.fetchval("SELECT attempt FROM generations WHERE id = $1", done) == 1

        await pool.execute("UPDATE generations SET status = 'failed' WHERE id = $1", running)
        code, out, err = await run_cli(
            env, "replay", "--topic", topics.GENERATION_REQUESTED, *window, "--force"
        )
        assert code == 0, err
        assert f"estimate for {done}:" in out and f"estimate for {running}:" in out
        assert "total estimate: $0.00 for 2 generations" in out
        assert f"started attempt 2 of {done}" in out and f"started attempt 2 of {running}" in out
    finally:
        await pool.execute(
            "UPDATE generations SET status = 'canceled' WHERE id = ANY($1::text[])", [done, running]
        )
