"""Replay: hand a generation's jobs (or a time range of a topic) back to the stages, or start a new attempt.

Two very different operations share this module:

* **Replay** (the default) re-publishes events exactly as they were: the same value bytes, hence the same
  CloudEvent id, and the same key, to the topic they came from. Every stage records each (stage, event id)
  it handled in ``processed_events`` and re-emits what it emitted the first time instead of acting again,
  and every handler checks the generation's status before it does anything; so a replay spends nothing
  and changes nothing that finished. What it is for: a generation whose events were lost or skipped
  somewhere (a stage that was down, a bug since fixed) picks up where it stopped.
* **A new attempt** (``--force``) pays again: it resets a finished generation to ``queued`` in Postgres and
  publishes a ``generation.requested`` with a *new* id, which every stage treats as new work.

Events are selected by their own CloudEvents ``time`` (and ``subject``, the generation id), never by
Kafka's ``offsets_for_times``: tansu indexes arrival time there, not record timestamps. Topics are read
from the beginning by a consumer without a group (partitions assigned, nothing committed) up to the end
offsets taken when reading started, so a replay never reads what it re-published itself.
"""

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from reelstream import status
from reelstream.events import decode, derive_id, encode, make_event, now
from reelstream.kafka import Producer
from schemas import topics
from schemas.api import GENERATION_ID_RE, TERMINAL, GenerationRequest
from schemas.envelope import CloudEvent
from schemas.events import GenerationRequested, GenerationStatusChanged

log = logging.getLogger(__name__)

#: What ``replay --generation`` reads: every topic a stage consumes or a downstream consumer reacts to.
#: ``generation.status`` is left out: it carries notifications only, nothing reprocesses it, and
#: re-sending old statuses would only show live watchers a generation moving backwards.
PIPELINE_TOPICS: tuple[str, ...] = tuple(t for t in topics.ALL if t != topics.GENERATION_STATUS)
#: The CloudEvents ``source`` of what a new attempt publishes.
SOURCE = "/reelstream/replay"
#: How long reading a topic may make no progress before we give up (the broker stopped answering).
STALL_SECONDS = 30.0
#: Bound on publishing a new attempt's events, per try.
PUBLISH_TIMEOUT_SECONDS = 20.0


class ReplayError(Exception):
    """A problem the operator can act on; its message is one plain sentence, fit to print as is."""


class UnknownGeneration(ReplayError):
    pass


class StillRunning(ReplayError):
    pass


# -- arguments ----------------------------------------------------------------------------------------


def parse_time(value: str) -> datetime:
    """An RFC 3339 date-time with its offset (``2024-05-01T12:00:00Z``); ValueError with a plain message.

    A time without an offset is refused rather than guessed: the events carry UTC times and a local
    reading would silently shift the range.
    """
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"not an RFC 3339 time: {value!r} (e.g. 2024-05-01T12:00:00Z)") from None
    if parsed.tzinfo is None:
        raise ValueError(f"time {value!r} has no UTC offset (add Z or +HH:MM)")
    return parsed


def check_generation_id(value: str) -> str:
    """``gen_`` and 32 lowercase hex digits, as the gateway issues them; ValueError otherwise."""
    if not GENERATION_ID_RE.fullmatch(value):
        raise ValueError(f"not a generation id: {value[:80]!r} (expected gen_ and 32 hex digits)")
    return value


def check_replay_topic(value: str) -> str:
    """A pipeline topic whose jobs can be reprocessed; ValueError naming what to do instead."""
    if value == topics.GENERATION_STATUS:
        raise ValueError(f"{value} carries notifications only; nothing reprocesses it, so it is not replayed")
    if value.endswith(".dlq"):
        raise ValueError(f"{value} is a dead-letter topic: use `reelstream dlq redrive`")
    if value not in PIPELINE_TOPICS:
        raise ValueError(f"unknown topic {value!r}; choose from {', '.join(PIPELINE_TOPICS)}")
    return value


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# -- reading ------------------------------------------------------------------------------------------


async def _start(client: AIOKafkaConsumer | AIOKafkaProducer, bootstrap: str) -> None:
    """Start a Kafka client; a broker that cannot be reached is a plain :class:`ReplayError`."""
    try:
        await client.start()
    except (KafkaError, OSError) as exc:
        await client.stop()
        raise ReplayError(f"cannot reach the broker at {bootstrap}: {exc}") from None


async def read_to_end(
    bootstrap: str, names: Sequence[str], *, stall_seconds: float = STALL_SECONDS
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Every record of ``names`` written before this started, from the beginning.

    No consumer group: partitions are assigned and nothing is committed, so reading never disturbs the
    stages' groups. Topics that do not exist are empty (and are not created by asking).

    The end of a partition is its end offset when reading started, and then the rest of the batch that
    offset falls in: tansu (the embedded broker) answers a partition's end as one past the *first*
    record of its last batch, so records that arrived in one batch (a stage's emits, two dead letters at
    once) would otherwise be cut off. That tail is read on while its records predate the start.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=15000,
    )
    await _start(consumer, bootstrap)
    try:
        existing = await consumer.topics()
        partitions = [
            TopicPartition(name, p)
            for name in dict.fromkeys(names)
            if name in existing
            for p in sorted(consumer.partitions_for_topic(name) or ())
        ]
        if not partitions:
            return
        consumer.assign(partitions)
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        remaining = {tp: end for tp, end in ends.items() if end > starts[tp]}
        for tp in remaining:
            consumer.seek(tp, starts[tp])
        started_ms = time.time() * 1000
        last_progress = time.monotonic()
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=500, max_records=5000)
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= remaining[tp] and record.timestamp > started_ms:
                        del remaining[tp]  # written after reading started
                        break
                    last_progress = time.monotonic()
                    yield record
            for tp in list(remaining):
                if tp not in batch and await consumer.position(tp) >= remaining[tp]:
                    del remaining[tp]  # at its end, and nothing of the last batch follows
            if remaining and time.monotonic() - last_progress > stall_seconds:
                raise ReplayError(
                    f"reading {', '.join(sorted({tp.topic for tp in remaining}))} made no progress"
                    f" for {stall_seconds:.0f}s; is the broker at {bootstrap} still up?"
                )
    except KafkaError as exc:
        raise ReplayError(f"the broker at {bootstrap} failed while reading: {exc}") from None
    finally:
        await consumer.stop()


@dataclass(frozen=True)
class Message:
    """What is (re-)published: exactly these bytes, this key and these headers, to ``topic``."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class Selected(Message):
    """One record chosen for replay, where it was read, and its envelope decoded."""

    partition: int
    offset: int
    event: CloudEvent


@dataclass
class Selection:
    events: list[Selected] = field(default_factory=list)
    #: Records whose value is not a CloudEvent: they cannot be selected by time or generation.
    unreadable: int = 0
    #: Copies of an event already selected (an earlier replay re-published it): sent once.
    repeats: int = 0


async def select_events(
    bootstrap: str,
    names: Sequence[str],
    *,
    generation_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Selection:
    """The events of ``names`` whose CloudEvents ``time`` is in [since, until) and ``subject`` matches.

    Each (topic, event id) is selected once, at its first offset: earlier replays put copies of the same
    event on the topic, and one of them is all any consumer needs. The result is in topic order (as
    given), then partition, then offset, which keeps every generation's events in their original order.
    """
    selection = Selection()
    seen: set[tuple[str, str]] = set()
    since = _aware(since) if since is not None else None
    until = _aware(until) if until is not None else None
    async for record in read_to_end(bootstrap, names):
        try:
            event = decode(record.value)
        except (ValueError, ValidationError):
            selection.unreadable += 1
            continue
        if generation_id is not None and event.subject != generation_id:
            continue
        moment = _aware(event.time)
        if (since is not None and moment < since) or (until is not None and moment >= until):
            continue
        if (record.topic, event.id) in seen:
            selection.repeats += 1
            continue
        seen.add((record.topic, event.id))
        selection.events.append(
            Selected(
                record.topic,
                record.key,
                record.value,
                tuple(record.headers),
                record.partition,
                record.offset,
                event,
            )
        )
    order = {name: i for i, name in enumerate(names)}
    selection.events.sort(key=lambda s: (order.get(s.topic, len(order)), s.partition, s.offset))
    return selection


# -- re-publishing ------------------------------------------------------------------------------------


async def republish(bootstrap: str, events: Sequence[Message]) -> Counter[str]:
    """Send each event's original bytes with its original key and headers to its own topic.

    Sent in order (each send is queued before the next), acknowledged by all replicas before returning.
    Returns how many were sent per topic.
    """
    sent: Counter[str] = Counter()
    if not events:
        return sent
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=False,  # tansu does not support InitProducerId
        linger_ms=5,
        request_timeout_ms=15000,
    )
    await _start(producer, bootstrap)
    try:
        for chunk_start in range(0, len(events), 1000):
            chunk = events[chunk_start : chunk_start + 1000]
            futures = [
                await producer.send(s.topic, s.value, key=s.key, headers=list(s.headers)) for s in chunk
            ]
            await asyncio.gather(*futures)
            sent.update(s.topic for s in chunk)
    except KafkaError as exc:
        raise ReplayError(
            f"re-published {sum(sent.values())} of {len(events)} events before the broker failed ({exc});"
            " run the replay again: it is idempotent"
        ) from None
    finally:
        await producer.stop()
    return sent


@dataclass
class ReplayReport:
    """What a replay did, for the operator: counts per topic and what it left alone and why."""

    published: Counter[str] = field(default_factory=Counter)
    unreadable: int = 0
    repeats: int = 0
    #: Events of generations Postgres does not know (deleted, say): never revived by a replay.
    unknown_generation: int = 0
    #: The current attempt's ``generation.requested``, rebuilt from Postgres because it was not on the topic.
    rebuilt_request: bool = False


async def replay_generation(
    bootstrap: str,
    pool: asyncpg.Pool,
    generation_id: str,
    *,
    names: Sequence[str] = PIPELINE_TOPICS,
    requested_topic: str = topics.GENERATION_REQUESTED,
) -> ReplayReport:
    """Re-publish every event of one generation, unchanged, from every topic in ``names``.

    A generation Postgres does not know is refused: re-publishing its request would make intake create
    it afresh and pay for its clips, which is ``--force``'s job, not a replay's. A generation whose
    current attempt (see :func:`start_new_attempt`) is not over and whose request never reached the
    topic (the publish after the reset failed) gets that request rebuilt from Postgres, with the id the
    attempt was given, so it is never stranded.
    """
    row = await pool.fetchrow(
        "SELECT id, status, attempt, prompt, duration_seconds, aspect_ratio, brand, options"
        " FROM generations WHERE id = $1",
        generation_id,
    )
    if row is None:
        raise UnknownGeneration(f"no generation {generation_id} in the database")
    selection = await select_events(bootstrap, names, generation_id=generation_id)
    events = list(selection.events)
    report = ReplayReport(unreadable=selection.unreadable, repeats=selection.repeats)
    if row["status"] not in TERMINAL and row["attempt"] > 1 and requested_topic in names:
        wanted = attempt_event_id(generation_id, row["attempt"])
        if not any(s.event.id == wanted for s in events):
            event = request_event(generation_id, request_from_row(row), row["attempt"])
            events.insert(
                0,
                Selected(requested_topic, generation_id.encode(), encode(event), (), -1, -1, event),
            )
            report.rebuilt_request = True
    report.published = await republish(bootstrap, events)
    return report


async def replay_range(
    bootstrap: str, pool: asyncpg.Pool, topic: str, since: datetime, until: datetime | None = None
) -> ReplayReport:
    """Re-publish the events of ``topic`` whose own ``time`` is in [since, until), unchanged.

    Events of generations Postgres does not know are left out (see :func:`replay_generation`).
    """
    selection = await select_events(bootstrap, [topic], since=since, until=until)
    known = await known_generations(pool, {s.event.subject for s in selection.events})
    events = [s for s in selection.events if s.event.subject in known]
    report = ReplayReport(
        unreadable=selection.unreadable,
        repeats=selection.repeats,
        unknown_generation=len(selection.events) - len(events),
    )
    report.published = await republish(bootstrap, events)
    return report


async def known_generations(pool: asyncpg.Pool, ids: set[str]) -> set[str]:
    if not ids:
        return set()
    rows = await pool.fetch("SELECT id FROM generations WHERE id = ANY($1::text[])", sorted(ids))
    return {r["id"] for r in rows}


def generations_of(selection: Selection) -> list[str]:
    """The generations the selected events name, in the order they first appear."""
    return list(dict.fromkeys(s.event.subject for s in selection.events))


# -- a new attempt ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewAttempt:
    generation_id: str
    attempt: int
    request: GenerationRequest
    event_id: str


def attempt_event_id(generation_id: str, attempt: int) -> str:
    """The id of attempt ``attempt``'s ``generation.requested``: new per attempt, the same on every retry."""
    return derive_id(generation_id, "replay", topics.GENERATION_REQUESTED, str(attempt))


def request_from_row(row: asyncpg.Record | dict[str, Any]) -> GenerationRequest:
    """The original request, as the gateway stored it, validated again like a client's body."""
    try:
        return GenerationRequest.model_validate(
            {
                "prompt": row["prompt"],
                "duration_seconds": row["duration_seconds"],
                "aspect_ratio": row["aspect_ratio"],
                "brand": row["brand"],
                "options": row["options"],
            }
        )
    except ValidationError as exc:
        raise ReplayError(
            f"the stored request of {row['id']} no longer validates ({exc.error_count()} errors);"
            " submit it again instead"
        ) from None


def request_event(generation_id: str, request: GenerationRequest, attempt: int) -> CloudEvent:
    return make_event(
        topics.GENERATION_REQUESTED,
        GenerationRequested(generation_id=generation_id, request=request, requested_at=now()),
        source=SOURCE,
        subject=generation_id,
        event_id=attempt_event_id(generation_id, attempt),
    )


async def load_request(pool: asyncpg.Pool, generation_id: str) -> tuple[str, GenerationRequest]:
    """The generation's status and request (to print an estimate before deciding to pay)."""
    row = await pool.fetchrow(
        "SELECT id, status, prompt, duration_seconds, aspect_ratio, brand, options"
        " FROM generations WHERE id = $1",
        generation_id,
    )
    if row is None:
        raise UnknownGeneration(f"no generation {generation_id} in the database")
    return row["status"], request_from_row(row)


async def start_new_attempt(
    pool: asyncpg.Pool,
    producer: Producer,
    generation_id: str,
    *,
    requested_topic: str = topics.GENERATION_REQUESTED,
    status_topic: str = topics.GENERATION_STATUS,
) -> NewAttempt:
    """Reset a finished generation and request it again under a new event id: this pays for new clips.

    In one transaction on the locked row: refuse a generation that has not ended (two attempts would
    race on the same clips), else bump ``attempt``, clear everything the last attempt produced and put
    the clips back to ``pending`` numbering their submissions from ``first_attempt`` (so submission
    markers, and the predictions behind them, never repeat). After the commit, announce ``queued`` on
    ``generation.status`` and publish ``generation.requested`` rebuilt from the row.

    If publishing fails after the commit, the generation waits in ``queued``: ``replay --generation``
    rebuilds the missing request (see :func:`replay_generation`), as does the reconciler.
    """
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT id, status, prompt, duration_seconds, aspect_ratio, brand, options"
            " FROM generations WHERE id = $1 FOR UPDATE",
            generation_id,
        )
        if row is None:
            raise UnknownGeneration(f"no generation {generation_id} in the database")
        if row["status"] not in TERMINAL:
            raise StillRunning(
                f"generation {generation_id} is still running ({row['status']}); cancel it first"
            )
        request = request_from_row(row)
        attempt: int = await conn.fetchval(
            "UPDATE generations SET attempt = attempt + 1, status = 'queued', analysis = NULL,"
            " scenes = NULL, video = NULL, error = NULL, compute_seconds = NULL, reconciled_at = NULL,"
            " updated_at = now() WHERE id = $1 RETURNING attempt",
            generation_id,
        )
        await conn.execute(
            "UPDATE clips SET status = 'pending', first_attempt = attempts + 1, settled = false,"
            " prediction_id = NULL, storage_key = NULL, error = NULL, outcome = NULL, polled_at = NULL,"
            " updated_at = now() WHERE generation_id = $1",
            generation_id,
        )
        progress = await status.progress(conn, generation_id)
    queued = make_event(
        topics.GENERATION_STATUS,
        GenerationStatusChanged(generation_id=generation_id, status="queued", progress=progress, at=now()),
        source=SOURCE,
        subject=generation_id,
        event_id=derive_id(generation_id, "replay", topics.GENERATION_STATUS, str(attempt)),
    )
    requested = request_event(generation_id, request, attempt)
    try:
        await _publish_with_retries(producer, [(status_topic, queued)])
        await _publish_with_retries(producer, [(requested_topic, requested)])
    except (KafkaError, OSError, TimeoutError) as exc:
        raise ReplayError(
            f"attempt {attempt} of {generation_id} is queued, but its request could not be published"
            f" ({type(exc).__name__}: {exc}); run `reelstream replay --generation {generation_id}`"
            " once the broker is back"
        ) from None
    log.info("%s: attempt %d requested (event %s)", generation_id, attempt, requested.id)
    return NewAttempt(generation_id, attempt, request, requested.id)


async def _publish_with_retries(
    producer: Producer, items: list[tuple[str, CloudEvent]], *, tries: int = 3
) -> None:
    """Deterministic ids make a repeated send harmless, so a failed one is simply sent again."""
    for attempt in range(1, tries + 1):
        try:
            await asyncio.wait_for(producer.send_many(items), timeout=PUBLISH_TIMEOUT_SECONDS)
            return
        except (KafkaError, OSError, TimeoutError):
            if attempt == tries:
                raise
            await asyncio.sleep(0.5 * attempt)
