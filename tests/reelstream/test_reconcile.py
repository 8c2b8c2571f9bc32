"""The reconciler against a real broker (tansu) and a real Postgres: what a stalled generation gets.

Each module gets a broker and a database of its own, so a round (which claims every stalled generation
in the database and publishes to the real topic names) never sees or feeds another test's work.
"""

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaConnectionError

from reelstream import db, embedded, reconcile
from reelstream.events import derive_id, make_event, now
from reelstream.kafka import Producer, all_topics, ensure_topics
from reelstream.runtime import Sweeper
from schemas import topics
from schemas.api import GenerationRequest, Progress
from schemas.envelope import CloudEvent
from schemas.events import (
    ClipCompleted,
    GenerationAccepted,
    GenerationAnalyzed,
    GenerationPrompted,
    GenerationStatusChanged,
    Prediction,
)
from stages.analysis.offline import analyze_offline

REQUEST = GenerationRequest.model_validate(
    {
        "prompt": "A lighthouse keeper brews coffee at dawn; waves, gulls, warm light.",
        "duration_seconds": 10,
        "aspect_ratio": "9:16",
        "brand": {"name": "Harbour Roast", "colors": ["#123456"], "guidelines": {"dont": ["cheap"]}},
        "options": {"seed": 7, "cta_text": "Taste the sea"},
    }
)


# -- infrastructure of this module ---------------------------------------------------------------------


def _with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


@asynccontextmanager
async def fresh_database(server_url: str) -> AsyncIterator[str]:
    """A migrated database of its own on the server of ``server_url``, dropped afterwards."""
    name = f"reelstream_reconcile_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = _with_database(server_url, name)
    try:
        await db.migrate(url)
        yield url
    finally:
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(scope="module")
async def broker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    service = await embedded.start_kafka(tmp_path_factory.mktemp("reconcile-kafka"))
    try:
        await ensure_topics(service.url, all_topics())
        yield service.url
    finally:
        await service.stop()


@pytest.fixture(scope="module")
async def module_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with fresh_database(database_url) as url:
        pool = await db.create_pool(url, max_size=6)
        try:
            yield pool
        finally:
            await pool.close()


@pytest.fixture
async def pool(module_pool: asyncpg.Pool) -> asyncpg.Pool:
    await module_pool.execute("TRUNCATE generations, processed_events, submissions CASCADE")
    return module_pool


@pytest.fixture(scope="module")
async def producer(broker: str) -> AsyncIterator[Producer]:
    p = Producer(broker)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


# -- helpers -------------------------------------------------------------------------------------------


def new_id() -> str:
    return "gen_" + uuid.uuid4().hex


async def insert_generation(
    pool: asyncpg.Pool,
    *,
    status: str = "queued",
    idle_seconds: float = 600,
    attempt: int = 1,
    reconciled_seconds_ago: float | None = None,
) -> str:
    """A row as the gateway writes it (then moved to ``status``), last touched ``idle_seconds`` ago."""
    generation_id = new_id()
    await pool.execute(
        "INSERT INTO generations (id, status, prompt, duration_seconds, aspect_ratio, brand, options,"
        " attempt, created_at, updated_at, reconciled_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() - make_interval(secs => $9 + 60),"
        "  now() - make_interval(secs => $9),"
        "  CASE WHEN $10::float8 IS NULL THEN NULL ELSE now() - make_interval(secs => $10) END)",
        generation_id,
        status,
        REQUEST.prompt,
        REQUEST.duration_seconds,
        REQUEST.aspect_ratio,
        REQUEST.brand.model_dump(mode="json") if REQUEST.brand else None,
        REQUEST.options.model_dump(mode="json"),
        attempt,
        float(idle_seconds),
        reconciled_seconds_ago,
    )
    return generation_id


async def record_step(
    pool: asyncpg.Pool,
    consumer: str,
    generation_id: str,
    emitted: list[tuple[str, CloudEvent]],
    *,
    seconds_ago: float = 600,
    event_id: str | None = None,
) -> None:
    """A ``processed_events`` row as the runtime writes it."""
    await pool.execute(
        "INSERT INTO processed_events (consumer, event_id, emitted, generation_id, processed_at)"
        " VALUES ($1, $2, $3, $4, now() - make_interval(secs => $5))",
        consumer,
        event_id or str(uuid.uuid4()),
        [{"topic": t, "event": e.model_dump(mode="json")} for t, e in emitted],
        generation_id,
        float(seconds_ago),
    )


def stage_event(topic: str, data: Any, stage: str, generation_id: str) -> CloudEvent:
    return make_event(
        topic, data, source=f"/reelstream/stages/{stage}", subject=generation_id, event_id=str(uuid.uuid4())
    )


def status_event(generation_id: str, status: str, stage: str) -> CloudEvent:
    return stage_event(
        topics.GENERATION_STATUS,
        GenerationStatusChanged(
            generation_id=generation_id,
            status=status,
            progress=Progress(stage=status, percent=5),
            at=now(),
        ),
        stage,
        generation_id,
    )


async def published(
    bootstrap: str,
    topic: str,
    generation_ids: set[str],
    *,
    expect: int,
    settle: float = 0.5,
    timeout: float = 20,
) -> list[dict[str, Any]]:
    """The events on ``topic`` keyed by one of ``generation_ids`` (all of them: duplicates show up).

    A group-less consumer reads the topic from the beginning until ``expect`` matching events arrived,
    then ``settle`` seconds more.
    """
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    found: list[dict[str, Any]] = []
    keys = {g.encode() for g in generation_ids}
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        settled_at: float | None = None
        while loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                found.extend(json.loads(r.value) for r in records if r.key in keys and r.value is not None)
            if len(found) >= expect:
                settled_at = settled_at or loop.time() + settle
                if loop.time() >= settled_at:
                    break
    finally:
        await consumer.stop()
    return found


def sweeper(pool: asyncpg.Pool, producer: Any, reconcile_seconds: float = 120) -> Sweeper:
    deps = SimpleNamespace(
        settings=SimpleNamespace(reconcile_seconds=reconcile_seconds, give_up_seconds=3600)
    )
    return Sweeper("intake", pool, producer, deps)


async def claimed_ids(pool: asyncpg.Pool, producer: Producer) -> set[str]:
    """One timed round (idle threshold 120 s); returns the ids it claimed."""
    cutoff = await pool.fetchval("SELECT now() - interval '120 seconds'")
    return set(await reconcile.reconcile_once(pool, producer, cutoff))


# -- (a) a generation whose request never reached the broker ---------------------------------------------


async def test_a_queued_generation_never_published_gets_the_gateways_request(
    pool: asyncpg.Pool, producer: Producer, broker: str
) -> None:
    first = await insert_generation(pool)
    replayed = await insert_generation(pool, attempt=2)

    await reconcile.reconcile_round(sweeper(pool, producer))

    events = {
        e["subject"]: e
        for e in await published(broker, topics.GENERATION_REQUESTED, {first, replayed}, expect=2)
    }
    assert set(events) == {first, replayed}
    event = events[first]
    assert event["id"] == derive_id(first, "gateway", topics.GENERATION_REQUESTED)
    assert event["source"] == "/reelstream/gateway"
    assert event["type"] == "reelstream.generation.requested"
    assert event["data"]["generation_id"] == first
    assert GenerationRequest.model_validate(event["data"]["request"]) == REQUEST
    created_at = await pool.fetchval("SELECT created_at FROM generations WHERE id = $1", first)
    assert datetime.fromisoformat(event["data"]["requested_at"]) == created_at
    # A forced replay's new attempt is asked for under the replay's id, not the first attempt's.
    assert events[replayed]["id"] == derive_id(replayed, "replay", topics.GENERATION_REQUESTED, "2")
    stamped = await pool.fetchval("SELECT count(*) FROM generations WHERE reconciled_at IS NOT NULL")
    assert stamped == 2


async def test_a_queued_generation_intake_already_accepted_gets_that_acceptance_again(
    pool: asyncpg.Pool, producer: Producer, broker: str
) -> None:
    generation_id = await insert_generation(pool)
    accepted = stage_event(
        topics.GENERATION_ACCEPTED,
        GenerationAccepted(generation_id=generation_id, request=REQUEST),
        "intake",
        generation_id,
    )
    requested_id = derive_id(generation_id, "gateway", topics.GENERATION_REQUESTED)
    await record_step(
        pool, "intake", generation_id, [(topics.GENERATION_ACCEPTED, accepted)], event_id=requested_id
    )

    sent = await reconcile.redrive(pool, producer, generation_id)

    assert sent == [f"{topics.GENERATION_ACCEPTED} {accepted.id}"]
    events = await published(broker, topics.GENERATION_ACCEPTED, {generation_id}, expect=1)
    assert [e["id"] for e in events] == [accepted.id]
    assert await published(broker, topics.GENERATION_REQUESTED, {generation_id}, expect=0, settle=0.3) == []


# -- (b) a stalled step is handed on again, unchanged -------------------------------------------------------


async def test_b_the_last_steps_event_is_republished_unchanged(
    pool: asyncpg.Pool, producer: Producer, broker: str
) -> None:
    generation_id = await insert_generation(pool, status="analyzing")
    accepted = stage_event(
        topics.GENERATION_ACCEPTED,
        GenerationAccepted(generation_id=generation_id, request=REQUEST),
        "intake",
        generation_id,
    )
    analyzed = stage_event(
        topics.GENERATION_ANALYZED,
        GenerationAnalyzed(generation_id=generation_id, request=REQUEST, analysis=analyze_offline(REQUEST)),
        "analysis",
        generation_id,
    )
    await record_step(
        pool, "intake", generation_id, [(topics.GENERATION_ACCEPTED, accepted)], seconds_ago=900
    )
    await record_step(
        pool,
        "analysis",
        generation_id,
        [
            (topics.GENERATION_STATUS, status_event(generation_id, "analyzing", "analysis")),
            (topics.GENERATION_ANALYZED, analyzed),
        ],
        seconds_ago=600,
    )

    assert await claimed_ids(pool, producer) == {generation_id}

    events = await published(broker, topics.GENERATION_ANALYZED, {generation_id}, expect=1)
    assert events == [analyzed.model_dump(mode="json")]  # same id, same everything
    assert CloudEvent.model_validate(events[0]) == analyzed
    # Neither the earlier step nor the status notification is sent again.
    assert await published(broker, topics.GENERATION_ACCEPTED, {generation_id}, expect=0, settle=0.3) == []
    assert await published(broker, topics.GENERATION_STATUS, {generation_id}, expect=0, settle=0.3) == []


# -- (c) moving and finished generations are left alone -------------------------------------------------


async def test_c_recent_progress_of_any_kind_and_terminal_generations_are_left_alone(
    pool: asyncpg.Pool, producer: Producer
) -> None:
    stalled = await insert_generation(pool, status="planning")
    recently_updated = await insert_generation(pool, status="planning", idle_seconds=10)
    recently_reconciled = await insert_generation(pool, status="planning", reconciled_seconds_ago=10)
    clip_moved = await insert_generation(pool, status="generating")
    await pool.execute(
        "INSERT INTO clips (generation_id, clip_id, scene_id, idx, duration_seconds, status, updated_at)"
        " VALUES ($1, 'clip_0', 'scene_0', 0, 5, 'processing', now() - interval '5 seconds')",
        clip_moved,
    )
    event_handled = await insert_generation(pool, status="analyzing")
    await record_step(pool, "analysis", event_handled, [], seconds_ago=5)
    terminal = [
        await insert_generation(pool, status=s, idle_seconds=86400)
        for s in ("completed", "failed", "canceled")
    ]

    assert await claimed_ids(pool, producer) == {stalled}

    for generation_id in terminal:
        assert await reconcile.redrive(pool, producer, generation_id) == []
    assert await reconcile.redrive(pool, producer, new_id()) == []  # unknown
    untouched = await pool.fetchval(
        "SELECT count(*) FROM generations WHERE reconciled_at IS NULL AND id = ANY($1::text[])",
        [recently_updated, clip_moved, event_handled, *terminal],
    )
    assert untouched == 6
    assert await pool.fetchval(
        "SELECT reconciled_at < now() - interval '5 seconds' FROM generations WHERE id = $1",
        recently_reconciled,
    )


# -- (d) replicas: each generation re-driven once ------------------------------------------------------


async def test_d_two_sweepers_at_once_redrive_each_generation_once(
    pool: asyncpg.Pool, broker: str, database_url: str
) -> None:
    ids = {await insert_generation(pool) for _ in range(20)}
    name = await pool.fetchval("SELECT current_database()")
    other_pool = await db.create_pool(_with_database(database_url, name), max_size=4)
    other_producer = Producer(broker)
    await other_producer.start()
    first_producer = Producer(broker)
    await first_producer.start()
    try:
        cutoff = await pool.fetchval("SELECT now() - interval '120 seconds'")

        async def drain(p: asyncpg.Pool, prod: Producer) -> list[str]:
            claimed: list[str] = []
            while batch := await reconcile.reconcile_once(p, prod, cutoff, limit=3):
                claimed.extend(batch)
            return claimed

        a, b = await asyncio.gather(drain(pool, first_producer), drain(other_pool, other_producer))
    finally:
        await other_producer.stop()
        await first_producer.stop()
        await other_pool.close()

    assert not set(a) & set(b)
    assert set(a) | set(b) == ids
    events = await published(broker, topics.GENERATION_REQUESTED, ids, expect=20, settle=1.0)
    assert Counter(e["subject"] for e in events) == Counter({g: 1 for g in ids})


# -- (e) one re-drive per stall, not one per round ---------------------------------------------------------


async def test_e_reconciled_at_keeps_a_redrive_from_repeating_every_round(
    pool: asyncpg.Pool, producer: Producer, broker: str
) -> None:
    generation_id = await insert_generation(pool)

    assert await claimed_ids(pool, producer) == {generation_id}
    assert await claimed_ids(pool, producer) == set()
    await reconcile.reconcile_round(sweeper(pool, producer))
    assert len(await published(broker, topics.GENERATION_REQUESTED, {generation_id}, expect=1)) == 1

    # Still stalled a whole threshold after the re-drive: it is driven again (same id: deduplicated).
    await pool.execute(
        "UPDATE generations SET reconciled_at = now() - interval '10 minutes' WHERE id = $1", generation_id
    )
    assert await claimed_ids(pool, producer) == {generation_id}
    events = await published(broker, topics.GENERATION_REQUESTED, {generation_id}, expect=2)
    assert len({e["id"] for e in events}) == 1 and len(events) == 2


async def test_a_generation_without_progress_for_the_give_up_time_is_failed_not_redriven_forever(
    pool: asyncpg.Pool, producer: Producer, broker: str
) -> None:
    hopeless = await insert_generation(pool, status="planning", idle_seconds=7200)
    waiting = await insert_generation(pool, status="planning", idle_seconds=600)
    polled = await insert_generation(pool, status="generating", idle_seconds=7200)
    await pool.execute(  # a long prediction, still being polled: that is progress
        "INSERT INTO clips (generation_id, clip_id, scene_id, idx, duration_seconds, status, updated_at,"
        " polled_at) VALUES ($1, 'clip_00', 'scene_00', 0, 5, 'processing', now() - interval '2 hours',"
        " now())",
        polled,
    )

    await reconcile.reconcile_round(sweeper(pool, producer))

    rows = {r["id"]: r for r in await pool.fetch("SELECT id, status, error FROM generations")}
    assert rows[hopeless]["status"] == "failed"
    assert rows[hopeless]["error"]["code"] == "internal" and "given up" in rows[hopeless]["error"]["message"]
    assert rows[waiting]["status"] == "planning" and rows[polled]["status"] == "generating"
    failed = await published(broker, topics.GENERATION_FAILED, {hopeless, waiting, polled}, expect=1)
    assert [e["subject"] for e in failed] == [hopeless]


async def test_the_start_up_round_redrives_everything_idle_since_the_start_once(
    pool: asyncpg.Pool, producer: Producer, broker: str
) -> None:
    just_moved = await insert_generation(pool, idle_seconds=1)
    long_stalled = [await insert_generation(pool) for _ in range(reconcile.BATCH + 3)]  # over a batch
    finished = await insert_generation(pool, status="completed")

    # A timed round leaves what moved a second ago alone...
    assert just_moved not in await claimed_ids(pool, producer)
    await pool.execute("UPDATE generations SET reconciled_at = NULL")

    # ...the start-up round takes everything not terminal, batch after batch, each once.
    await reconcile.catch_up(sweeper(pool, producer))

    stamped = {
        r["id"] for r in await pool.fetch("SELECT id FROM generations WHERE reconciled_at IS NOT NULL")
    }
    assert stamped == {just_moved, *long_stalled}
    assert finished not in stamped
    assert len(await published(broker, topics.GENERATION_REQUESTED, {just_moved}, expect=1)) == 1


# -- (f) assembly cut short ------------------------------------------------------------------------------


async def _succeeded_clips(pool: asyncpg.Pool, generation_id: str) -> list[CloudEvent]:
    outcomes = []
    for i in range(2):
        clip_id = f"clip_{i}"
        outcome = stage_event(
            topics.CLIP_COMPLETED,
            ClipCompleted(
                generation_id=generation_id,
                clip_id=clip_id,
                attempt=1,
                prediction=Prediction(id=f"p{i}", status="succeeded", output=f"http://x/{i}.mp4"),
            ),
            "gateway",
            generation_id,
        )
        await pool.execute(
            "INSERT INTO clips (generation_id, clip_id, scene_id, idx, duration_seconds, status, attempts,"
            " settled, outcome, updated_at)"
            " VALUES ($1, $2, 'scene', $3, 5, 'succeeded', 1, true, $4, now() - make_interval(secs => $5))",
            generation_id,
            clip_id,
            i,
            outcome.model_dump(mode="json"),
            float(900 - 100 * i),  # clip_1 is the newer outcome
        )
        outcomes.append(outcome)
    return outcomes


async def test_f_all_clips_succeeded_but_not_assembled_gets_the_newest_outcome_again(
    pool: asyncpg.Pool, producer: Producer, broker: str
) -> None:
    generating = await insert_generation(pool, status="generating")
    outcomes = await _succeeded_clips(pool, generating)
    prompted = stage_event(
        topics.GENERATION_PROMPTED,
        GenerationPrompted(generation_id=generating, request=REQUEST, clips=[]),
        "prompting",
        generating,
    )
    await record_step(
        pool,
        "prompting",
        generating,
        [
            (topics.GENERATION_STATUS, status_event(generating, "prompting", "prompting")),
            (topics.GENERATION_PROMPTED, prompted),
        ],
        seconds_ago=1000,
    )
    assembling = await insert_generation(pool, status="assembling")
    assembling_outcomes = await _succeeded_clips(pool, assembling)
    half_done = await insert_generation(pool, status="generating")
    await _succeeded_clips(pool, half_done)
    await pool.execute(
        "UPDATE clips SET status = 'processing' WHERE generation_id = $1 AND clip_id = 'clip_0'", half_done
    )

    sent = await reconcile.redrive(pool, producer, generating)
    assert sent == [
        f"{topics.GENERATION_PROMPTED} {prompted.id}",
        f"{topics.CLIP_COMPLETED} {outcomes[1].id}",
    ]
    assert await reconcile.redrive(pool, producer, assembling) == [
        f"{topics.CLIP_COMPLETED} {assembling_outcomes[1].id}"
    ]
    assert await reconcile.redrive(pool, producer, half_done) == []

    events = await published(broker, topics.CLIP_COMPLETED, {generating, assembling, half_done}, expect=2)
    assert sorted(e["id"] for e in events) == sorted([outcomes[1].id, assembling_outcomes[1].id])
    assert [e for e in events if e["id"] == outcomes[1].id] == [outcomes[1].model_dump(mode="json")]
    again = await published(broker, topics.GENERATION_PROMPTED, {generating}, expect=1)
    assert again == [prompted.model_dump(mode="json")]


# -- failures ---------------------------------------------------------------------------------------------


class DeadBroker:
    async def send_many(self, items: Any) -> None:
        raise KafkaConnectionError("broker gone")


async def test_a_broker_failure_ends_the_round_and_releases_the_claim(
    pool: asyncpg.Pool, producer: Producer
) -> None:
    ids = {await insert_generation(pool) for _ in range(3)}
    cutoff = await pool.fetchval("SELECT now() - interval '120 seconds'")

    with pytest.raises(KafkaConnectionError):
        await reconcile.reconcile_once(pool, DeadBroker(), cutoff)  # type: ignore[arg-type]

    assert await pool.fetchval("SELECT count(*) FROM generations WHERE reconciled_at IS NOT NULL") == 0
    assert await claimed_ids(pool, producer) == ids  # the next round tries again


# -- end to end --------------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_generations_written_as_the_gateway_does_but_never_published_complete(
    database_url: str, tmp_path: Path
) -> None:
    """A broker and a database of its own: the stack must see no other test's events or generations.

    The idle threshold is half a second, so generations are also re-driven while they render: what the
    reconciler re-publishes then must be deduplicated, never paid for twice.
    """
    from tests.e2e.conftest import running_stack, stack_settings

    kafka = await embedded.start_kafka(tmp_path / "kafka")
    try:
        async with fresh_database(database_url) as url:
            pool = await db.create_pool(url, max_size=2)
            try:
                await _run_and_check(
                    pool,
                    running_stack(stack_settings(tmp_path / "stack", kafka.url, url, reconcile_seconds=0.5)),
                )
            finally:
                await pool.close()
    finally:
        await kafka.stop()


async def _run_and_check(pool: asyncpg.Pool, stack_context: Any) -> None:
    # Written before the stack starts, as a gateway that died before publishing leaves it...
    before = await _insert_as_gateway(pool)
    async with stack_context as stack:
        # ...and while it runs, as one whose publish the broker lost.
        during = await _insert_as_gateway(pool)
        async with aiohttp.ClientSession() as session:
            for generation_id in (before, during):
                detail = await _wait_terminal(session, stack.url, generation_id)
                assert detail["status"] == "completed", detail
                assert all(c["status"] == "succeeded" and c["attempts"] == 1 for c in detail["clips"])
    predictions = await pool.fetch(
        "SELECT generation_id, count(*) AS n, count(DISTINCT clip_id) AS clips FROM predictions"
        " WHERE generation_id = ANY($1::text[]) GROUP BY generation_id",
        [before, during],
    )
    assert {r["generation_id"] for r in predictions} == {before, during}
    assert all(r["n"] == r["clips"] for r in predictions)  # one prediction per clip: nothing paid twice


async def _insert_as_gateway(pool: asyncpg.Pool) -> str:
    generation_id = new_id()
    request = GenerationRequest.model_validate(
        {"prompt": "Morning surf lesson, bright and friendly.", "duration_seconds": 12}
    )
    await pool.execute(
        "INSERT INTO generations (id, status, prompt, duration_seconds, aspect_ratio, brand, options)"
        " VALUES ($1, 'queued', $2, $3, $4, $5, $6)",
        generation_id,
        request.prompt,
        request.duration_seconds,
        request.aspect_ratio,
        None,
        request.options.model_dump(mode="json"),
    )
    return generation_id


async def _wait_terminal(
    session: aiohttp.ClientSession, url: str, generation_id: str, timeout: float = 180
) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            async with session.get(f"{url}/api/v1/generations/{generation_id}") as resp:
                detail = await resp.json()
            if detail["status"] in ("completed", "failed", "canceled"):
                return detail
            await asyncio.sleep(0.5)
