"""``reelstream dlq``: dead letters made by the real stage runtime, listed and redriven (tansu + Postgres)."""

import asyncio
import json
import os
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from reelstream import dlq
from reelstream.events import encode, make_event
from reelstream.kafka import Producer, ensure_topics
from reelstream.replay import ReplayError, read_to_end
from reelstream.runtime import Context, PermanentError, RuntimeConfig, Stage, StageRunner
from schemas import topics
from schemas.api import GenerationRequest
from schemas.envelope import CloudEvent
from schemas.events import GenerationAccepted

BIN = Path(sys.executable).parent / "reelstream"
REQUEST = GenerationRequest(prompt="A lighthouse in a storm", duration_seconds=5)


def new_id() -> str:
    return "gen_" + uuid.uuid4().hex


def accepted(generation_id: str) -> CloudEvent:
    return make_event(
        topics.GENERATION_ACCEPTED,
        GenerationAccepted(generation_id=generation_id, request=REQUEST),
        source="/tests",
        subject=generation_id,
    )


async def insert_generation(pool: asyncpg.Pool, generation_id: str, status: str) -> None:
    await pool.execute(
        "INSERT INTO generations (id, status, prompt, duration_seconds, aspect_ratio, options)"
        " VALUES ($1, $2, $3, 5, '16:9', '{}'::jsonb)",
        generation_id,
        status,
        REQUEST.prompt,
    )


async def read_all(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    return [(r.key, r.value) async for r in read_to_end(bootstrap, [topic])]


async def _offsets(bootstrap: str, topic: str) -> str:
    """Begin and end offsets of every partition, for a failure message."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await c.start()
    try:
        tps = [TopicPartition(topic, i) for i in sorted(c.partitions_for_topic(topic) or ())]
        return f"{topic}: {await c.beginning_offsets(tps)} {await c.end_offsets(tps)}"
    finally:
        await c.stop()


async def dead_letter_with_the_runtime(
    bootstrap: str, pool: asyncpg.Pool, producer: Producer, topic: str, items: list[tuple[bytes, bytes]]
) -> str:
    """Run a stage that refuses everything on ``topic`` until each item is in ``topic``.dlq; its name."""
    group = f"refuser_{uuid.uuid4().hex[:8]}"

    async def refuse(ctx: Context[GenerationAccepted]) -> None:
        raise PermanentError(f"cannot handle [{ctx.generation_id}]")

    stage = Stage(name=group, topics=[topic], handler=refuse, payloads={topic: GenerationAccepted})
    config = RuntimeConfig(bootstrap=bootstrap, session_timeout_ms=2000, heartbeat_interval_ms=500)
    runner = StageRunner(stage, pool, producer, config)
    task = asyncio.create_task(runner.run())
    try:
        for key, value in items:
            await producer.send_raw(topic, value, key=key, headers=[])
        for _ in range(300):
            letters = await read_all(bootstrap, topics.dlq(topic))
            if len(letters) >= len(items):
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(
                f"the runtime did not dead-letter {len(items)} records within 60 s: {letters}"
                f" {await _offsets(bootstrap, topics.dlq(topic))} {await _offsets(bootstrap, topic)}"
            )
    finally:
        runner.stop()
        await task
    return group


@pytest.fixture
async def source_topic(kafka_bootstrap: str, topic_name: str) -> str:
    topic = f"{topic_name}.accepted"
    await ensure_topics(kafka_bootstrap, [topic, topics.dlq(topic)])
    return topic


async def test_list_shows_what_the_runtime_dead_lettered(
    kafka_bootstrap: str, pool: asyncpg.Pool, producer: Producer, source_topic: str
) -> None:
    gen, other = new_id(), new_id()
    event = accepted(gen)
    before = datetime.now(UTC) - timedelta(seconds=1)
    group = await dead_letter_with_the_runtime(
        kafka_bootstrap,
        pool,
        producer,
        source_topic,
        [(gen.encode(), encode(event)), (other.encode(), b"{not json")],
    )
    letters = await dlq.list_dead_letters(kafka_bootstrap, [topics.dlq(source_topic)])
    by_generation = {letter.generation_id: letter for letter in letters}
    assert set(by_generation) == {gen, other}

    refused = by_generation[gen]
    assert refused.event_id == event.id
    assert refused.original_topic == source_topic and refused.dlq_topic == topics.dlq(source_topic)
    assert refused.error == f"PermanentError: cannot handle [{gen}]"
    assert refused.error_type == "PermanentError" and refused.consumer == group
    assert before <= refused.timestamp <= datetime.now(UTC) + timedelta(seconds=1)
    assert refused.value == encode(event) and refused.key == gen.encode()

    garbage = by_generation[other]  # not a CloudEvent: the generation comes from the Kafka key
    assert garbage.event_id is None and garbage.error_type == "JSONDecodeError"

    listed = refused.as_json()
    assert listed["topic"] == source_topic and listed["event_id"] == event.id
    assert listed["generation_id"] == gen and listed["error"].startswith("PermanentError")
    assert listed["time"].endswith("Z") and datetime.fromisoformat(listed["time"]) == refused.timestamp


async def test_redrive_hands_letters_back_but_never_revives_an_ended_generation(
    kafka_bootstrap: str, pool: asyncpg.Pool, producer: Producer, source_topic: str
) -> None:
    live, ended = new_id(), new_id()
    await insert_generation(pool, live, "analyzing")
    await insert_generation(pool, ended, "failed")
    live_event, ended_event = accepted(live), accepted(ended)
    group = await dead_letter_with_the_runtime(
        kafka_bootstrap,
        pool,
        producer,
        source_topic,
        [(live.encode(), encode(live_event)), (ended.encode(), encode(ended_event))],
    )
    # The runtime failed both generations as it dead-lettered their events. A letter whose generation
    # is still live is one whose failure could not be recorded (Postgres was down at that moment):
    assert await pool.fetchval("SELECT status FROM generations WHERE id = $1", live) == "failed"
    await pool.execute("UPDATE generations SET status = 'analyzing', error = NULL WHERE id = $1", live)
    letters = await dlq.list_dead_letters(kafka_bootstrap, [topics.dlq(source_topic)])

    report = await dlq.redrive(kafka_bootstrap, pool, letters)
    assert report.redriven == {source_topic: 1}
    assert report.ended == [(ended_event.id, ended, "failed")]
    records = await read_all(kafka_bootstrap, source_topic)
    assert records.count((live.encode(), encode(live_event))) == 2  # the original and the redriven copy
    assert records.count((ended.encode(), encode(ended_event))) == 1

    # Once its stage has handled the event, the letter is not handed back again.
    await pool.execute(
        "INSERT INTO processed_events (consumer, event_id, emitted) VALUES ($1, $2, '[]'::jsonb)",
        group,
        live_event.id,
    )
    again = await dlq.redrive(kafka_bootstrap, pool, letters)
    assert sum(again.redriven.values()) == 0 and again.handled == 1

    with pytest.raises(ReplayError, match="no dead letter"):
        await dlq.redrive(kafka_bootstrap, pool, letters, event_id=str(uuid.uuid4()))
    only = await dlq.redrive(kafka_bootstrap, pool, letters, event_id=ended_event.id)
    assert sum(only.redriven.values()) == 0 and len(only.ended) == 1


async def test_redrive_sends_each_event_once_per_run(
    kafka_bootstrap: str, pool: asyncpg.Pool, producer: Producer, source_topic: str
) -> None:
    gen = new_id()
    await insert_generation(pool, gen, "planning")
    event = accepted(gen)
    headers = [("error", b"Boom: x"), ("original_topic", source_topic.encode()), ("consumer", b"c")]
    for _ in range(2):  # dead-lettered twice (say, redriven once already and refused again)
        await producer.send_raw(topics.dlq(source_topic), encode(event), key=gen.encode(), headers=headers)
    letters = await dlq.list_dead_letters(kafka_bootstrap, [topics.dlq(source_topic)])
    report = await dlq.redrive(kafka_bootstrap, pool, letters)
    assert report.redriven == {source_topic: 1} and report.repeats == 1


def test_dlq_topics() -> None:
    assert dlq.dlq_topics() == [topics.dlq(t) for t in topics.ALL]
    assert dlq.dlq_topics("clip.completed") == ["clip.completed.dlq"]
    assert dlq.dlq_topics("clip.completed.dlq") == ["clip.completed.dlq"]
    with pytest.raises(ValueError):
        dlq.dlq_topics("nope")


# -- the command ------------------------------------------------------------------------------------


def cli_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELSTREAM_")}
    env["REELSTREAM_DATA_DIR"] = str(tmp_path / "data")
    env.update({f"REELSTREAM_{k.upper()}": v for k, v in settings.items()})
    return env


async def run_cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(BIN), *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_lists_and_redrives_on_the_real_topics(
    tmp_path: Path, kafka_bootstrap: str, database_url: str, pool: asyncpg.Pool, producer: Producer
) -> None:
    """The runtime's headers on generation.accepted.dlq; the generation has ended, so nothing is revived."""
    env = cli_env(tmp_path, kafka_bootstrap=kafka_bootstrap, database_url=database_url)
    gen = new_id()
    await insert_generation(pool, gen, "failed")
    event = accepted(gen)
    topic = topics.GENERATION_ACCEPTED
    await ensure_topics(kafka_bootstrap, [topic, topics.dlq(topic)])
    headers = [
        ("error", b"ValueError: the analyzer choked"),
        ("error_type", b"ValueError"),
        ("original_topic", topic.encode()),
        ("original_partition", b"0"),
        ("original_offset", b"7"),
        ("consumer", b"analysis"),
    ]
    await producer.send_raw(topics.dlq(topic), encode(event), key=gen.encode(), headers=headers)

    code, out, err = await run_cli(env, "dlq", "list", "--topic", topic, "--json")
    assert code == 0, err
    [mine] = [item for item in json.loads(out) if item["event_id"] == event.id]
    assert mine["topic"] == topic and mine["generation_id"] == gen
    assert mine["error"] == "ValueError: the analyzer choked" and mine["consumer"] == "analysis"
    assert datetime.fromisoformat(mine["time"]) > datetime.now(UTC) - timedelta(minutes=5)

    code, out, err = await run_cli(env, "dlq", "list")
    assert code == 0, err
    [line] = [line for line in out.splitlines() if event.id in line]
    assert line.split("\t")[:4] == [topic, event.id, gen, "ValueError: the analyzer choked"]

    code, out, err = await run_cli(env, "dlq", "redrive", "--id", event.id)
    assert code == 0, err
    assert "redrove 0 dead letter(s)" in out
    assert f"of {gen} (failed)" in out and "replay --force starts a new attempt" in out
    assert [r for r in await read_all(kafka_bootstrap, topic) if r[0] == gen.encode()] == []

    code, _, err = await run_cli(env, "dlq", "redrive", "--id", str(uuid.uuid4()))
    assert code == 1 and "no dead letter" in err and "Traceback" not in err
    code, _, err = await run_cli(env, "dlq", "list", "--topic", "nope")
    assert code == 2 and err.strip().count("\n") == 0 and "unknown topic" in err
    code, _, err = await run_cli(cli_env(tmp_path, kafka_bootstrap="127.0.0.1:1"), "dlq", "list")
    assert code == 1 and err.strip().count("\n") == 0 and "cannot reach the broker" in err
