"""Dead letters: list what the stages gave up on, and hand it back to them once the cause is fixed.

The stage runtime puts a message it cannot handle on ``<topic>.dlq`` with its original value and key and
the headers ``error``, ``error_type``, ``original_topic``, ``original_partition``, ``original_offset`` and
``consumer`` (see :mod:`reelstream.runtime`). Dead-letter topics are only ever appended to (tansu cannot
delete records), so redriving is made safe rather than destructive: a letter whose event the stage has
handled since, or whose generation has ended, is skipped; and the stage deduplicates what is redriven
twice by its event id anyway.
"""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from pydantic import ValidationError

from reelstream.events import decode
from reelstream.replay import Message, ReplayError, read_to_end, republish
from schemas import topics
from schemas.api import TERMINAL


def dlq_topics(topic: str | None = None) -> list[str]:
    """The dead-letter topics to read: one pipeline topic's (given as ``X`` or ``X.dlq``), or all of them."""
    if topic is None:
        return [topics.dlq(t) for t in topics.ALL]
    base = topic.removesuffix(".dlq")
    if base not in topics.ALL:
        raise ValueError(f"unknown topic {topic!r}; choose from {', '.join(topics.ALL)}")
    return [topics.dlq(base)]


@dataclass(frozen=True)
class DeadLetter:
    """One record of a ``.dlq`` topic, with what the runtime said about it."""

    dlq_topic: str
    partition: int
    offset: int
    timestamp: datetime
    key: bytes | None
    value: bytes | None
    #: Where the message came from and where a redrive sends it.
    original_topic: str
    error: str
    error_type: str | None
    consumer: str | None
    #: From the CloudEvent when the value is one, else None.
    event_id: str | None
    #: The CloudEvent ``subject``, else the Kafka key.
    generation_id: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "topic": self.original_topic,
            "event_id": self.event_id,
            "generation_id": self.generation_id,
            "error": self.error,
            "error_type": self.error_type,
            "consumer": self.consumer,
            "time": rfc3339(self.timestamp),
            "dlq_topic": self.dlq_topic,
            "partition": self.partition,
            "offset": self.offset,
        }


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text(value: bytes | None) -> str | None:
    return value.decode(errors="replace") if value is not None else None


async def list_dead_letters(bootstrap: str, names: Sequence[str]) -> list[DeadLetter]:
    """Every record of the dead-letter topics ``names``, oldest first."""
    letters: list[DeadLetter] = []
    async for record in read_to_end(bootstrap, names):
        headers = {k: v for k, v in record.headers}
        event_id: str | None = None
        generation_id = _text(record.key)
        try:
            event = decode(record.value)
            event_id, generation_id = event.id, event.subject
        except (ValueError, ValidationError):
            pass
        letters.append(
            DeadLetter(
                dlq_topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                timestamp=datetime.fromtimestamp(record.timestamp / 1000, tz=UTC),
                key=record.key,
                value=record.value,
                original_topic=_text(headers.get("original_topic")) or record.topic.removesuffix(".dlq"),
                error=_text(headers.get("error")) or "",
                error_type=_text(headers.get("error_type")),
                consumer=_text(headers.get("consumer")),
                event_id=event_id,
                generation_id=generation_id,
            )
        )
    letters.sort(key=lambda letter: (letter.timestamp, letter.dlq_topic, letter.partition, letter.offset))
    return letters


@dataclass
class RedriveReport:
    redriven: Counter[str] = field(default_factory=Counter)
    #: (event id, generation id, status) of letters whose generation has ended: never revived.
    ended: list[tuple[str | None, str, str]] = field(default_factory=list)
    #: Letters whose event the consumer that gave up on it has handled since (an earlier redrive, say).
    handled: int = 0
    #: Further copies of a letter already redriven in this run.
    repeats: int = 0


async def redrive(
    bootstrap: str, pool: asyncpg.Pool, letters: Sequence[DeadLetter], *, event_id: str | None = None
) -> RedriveReport:
    """Re-publish dead letters (original bytes, original key) to the topic they came from.

    Skipped, and reported: letters of a generation that has ended in Postgres (completed, failed or
    canceled; a new attempt is ``replay --force``'s job), letters whose event the consumer that gave up
    on it has handled since, and repeated copies of one event. With ``event_id``, only that event.
    """
    report = RedriveReport()
    chosen = [letter for letter in letters if event_id is None or letter.event_id == event_id]
    if event_id is not None and not chosen:
        raise ReplayError(f"no dead letter with event id {event_id}")
    ended = await _ended(pool, {letter.generation_id for letter in chosen if letter.generation_id})
    handled = await _handled(pool, chosen)
    sent: set[tuple[str, str]] = set()
    outgoing: list[Message] = []
    for letter in chosen:
        if letter.generation_id in ended:
            report.ended.append((letter.event_id, letter.generation_id, ended[letter.generation_id]))
            continue
        if letter.event_id is not None:
            if (letter.consumer, letter.event_id) in handled:
                report.handled += 1
                continue
            if (letter.original_topic, letter.event_id) in sent:
                report.repeats += 1
                continue
            sent.add((letter.original_topic, letter.event_id))
        # The original message: its bytes and key, without the dead-letter headers.
        outgoing.append(Message(letter.original_topic, letter.key, letter.value, ()))
    report.redriven = await republish(bootstrap, outgoing)
    return report


async def _ended(pool: asyncpg.Pool, generation_ids: set[str]) -> dict[str, str]:
    if not generation_ids:
        return {}
    rows = await pool.fetch(
        "SELECT id, status FROM generations WHERE id = ANY($1::text[]) AND status = ANY($2::text[])",
        sorted(generation_ids),
        sorted(TERMINAL),
    )
    return {r["id"]: r["status"] for r in rows}


async def _handled(pool: asyncpg.Pool, letters: Sequence[DeadLetter]) -> set[tuple[str, str]]:
    pairs = {(letter.consumer, letter.event_id) for letter in letters if letter.consumer and letter.event_id}
    if not pairs:
        return set()
    consumers, ids = zip(*sorted(pairs), strict=True)
    rows = await pool.fetch(
        "SELECT p.consumer, p.event_id FROM processed_events p"
        " JOIN unnest($1::text[], $2::text[]) AS w(consumer, event_id)"
        " ON p.consumer = w.consumer AND p.event_id = w.event_id",
        list(consumers),
        list(ids),
    )
    return {(r["consumer"], r["event_id"]) for r in rows}
