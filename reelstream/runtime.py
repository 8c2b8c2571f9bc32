"""The stage runtime: one aiokafka consumer loop, written once, that every stage runs.

A stage is "take this event, decide, record, emit". Its work comes in two phases:

* ``prepare`` (optional) does the outside work: provider calls, the language model, downloads, FFmpeg.
  It runs with no transaction open and no pooled connection held (it may take short transactions of
  its own through ``ctx.transaction()``: claim, commit, call, record), so a slow provider never holds a
  row lock or starves the pool. It must be safe to repeat: after a crash it runs again.
* ``handler`` records the outcome: it runs inside one Postgres transaction together with a
  ``processed_events`` row for (stage, event id) and may only talk to Postgres.

Guarantees, in the order a message meets them:

* A message that does not decode or validate goes to ``<topic>.dlq`` with the error and its original
  bytes, and so does an event whose handling keeps failing; the generation it belongs to then ends
  ``failed`` (code ``internal``, naming the stage) rather than hanging. The stage goes on.
* An event already handled (its ``processed_events`` row exists) is not handled again: what it emitted
  the first time is re-emitted instead. At-least-once delivery made effectively-once.
* Emitted events get ids derived from the input event and the topic, so a repeat emits the very same
  ids and downstream consumers deduplicate them too.
* The offset is committed only after the transaction committed and every emitted event was acknowledged
  (acks=all). Offsets are committed up to the first message still in flight, per partition.
* Messages with the same key (generation id) are handled one after another, in order; different keys run
  concurrently up to ``concurrency``, so one slow generation never stalls the others. A stage may
  order more finely (``Stage.order_by``: completion orders by clip, ``by_clip``).
* Transient failures (database, broker or provider unreachable) are retried with capped backoff for at
  most ``transient_budget`` seconds, then the event is dead-lettered (above). A waiting retry holds no
  concurrency slot, and backpressure pauses only the partitions that reached ``max_in_flight``
  unfinished messages: one stuck event never stalls the stage.
* On stop (SIGTERM) fetching stops, in-flight work gets a grace period, what finished is committed, and
  the consumer leaves the group. What did not finish is redelivered, or re-driven from Postgres by the
  reconciler.
"""

import asyncio
import contextlib
import logging
import random
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import ConsumerRecord
from opentelemetry.trace import SpanKind
from pydantic import BaseModel, ValidationError

from reelstream import db, logs, metrics, status, tracing
from reelstream.events import decode, derive_id, make_event
from reelstream.kafka import Producer
from schemas import topics as topic_names
from schemas.api import ErrorInfo
from schemas.envelope import CloudEvent
from schemas.events import PAYLOADS

log = logging.getLogger(__name__)

E = TypeVar("E", bound=BaseModel)

_GENERATION_ID = re.compile(r"gen_[0-9a-f]{32}")


class TransientError(Exception):
    """Raised when a dependency is unavailable: the event is retried (within the transient budget)."""


class PermanentError(Exception):
    """Raised for an event that can never succeed: it goes to the DLQ at once."""


TRANSIENT: tuple[type[BaseException], ...] = (
    TransientError,
    OSError,
    TimeoutError,
    KafkaError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.AdminShutdownError,
)


@dataclass
class Context(Generic[E]):
    """What ``prepare`` and the handler get: the event, its payload, the pool, and what to emit.

    ``conn`` is the handler's transaction and exists only while the handler runs; ``prepare`` takes
    short transactions of its own with :meth:`transaction` and holds no connection across a call out.
    """

    stage: str
    event: CloudEvent
    data: E
    pool: asyncpg.Pool
    deps: Any
    producer: Producer
    emitted: list[tuple[str, CloudEvent]] = field(default_factory=list)
    #: What ``prepare`` returned, for the handler to record.
    prepared: Any = None
    #: Calls out the handler asked for, run once its transaction committed (see :meth:`after_commit`).
    after: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _conn: asyncpg.Connection | None = None
    _sent: int = 0

    @property
    def generation_id(self) -> str:
        return self.event.subject

    @property
    def conn(self) -> asyncpg.Connection:
        if self._conn is None:
            raise RuntimeError("ctx.conn exists only in the handler; prepare uses ctx.transaction()")
        return self._conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A short transaction of its own (committed on exit): for ``prepare``'s claim and record steps."""
        async with self.pool.acquire() as conn, conn.transaction():
            yield conn

    def emit(
        self, topic: str, data: BaseModel, *, subject: str | None = None, event_id: str | None = None
    ) -> CloudEvent:
        """Queue an event; it is sent after the handler's transaction commits.

        Its id is derived from the input event, the stage, the topic and how many events this handling
        emitted to that topic before: a repeat of the handling emits the same ids. ``event_id`` names
        a fact that other paths may report too (it must be deterministic as well).
        """
        n = sum(1 for t, _ in self.emitted if t == topic)
        event = make_event(
            topic,
            data,
            source=f"/reelstream/stages/{self.stage}",
            subject=subject or self.event.subject,
            event_id=event_id or derive_id(self.event.id, self.stage, topic, str(n)),
        )
        self.emitted.append((topic, event))
        return event

    def after_commit(self, call: Callable[[], Awaitable[None]]) -> None:
        """Call out once the handler's transaction committed and its events were sent: best effort
        follow-up (e.g. canceling predictions of a generation that just failed), never inside the
        transaction. A failure is logged; whatever must happen for sure needs a sweep as well."""
        self.after.append(call)

    async def flush(self) -> None:
        """Send what was emitted so far right now, e.g. a status change before a long call out."""
        pending = self.emitted[self._sent :]
        if pending:
            await self.producer.send_many(pending)
        self._sent = len(self.emitted)


Handler = Callable[[Context[Any]], Awaitable[None]]
Prepare = Callable[[Context[Any]], Awaitable[Any]]


@dataclass
class Sweeper:
    """What a sweep gets: the stage's pool, producer and deps, and a way to publish like a handler."""

    stage: str
    pool: asyncpg.Pool
    producer: Producer
    deps: Any

    async def publish(self, topic: str, data: BaseModel, *, subject: str, event_id: str) -> None:
        """Send one event now; ``event_id`` must be deterministic, so consumers dedupe a repeat."""
        event = make_event(
            topic, data, source=f"/reelstream/stages/{self.stage}", subject=subject, event_id=event_id
        )
        await self.producer.send(topic, event)


@dataclass
class Sweep:
    """Work a stage does on a timer rather than on an event, such as asking after a lost webhook.

    Sweeps run in every replica of the stage, so they must claim their rows (``SKIP LOCKED``) and
    publish with deterministic ids: two replicas sweeping at once may not do anything twice.
    """

    name: str
    run: Callable[[Sweeper], Awaitable[None]]
    #: Seconds between sweeps, read from the deps (the settings) when the stage starts.
    every: Callable[[Any], float]
    #: Run once as soon as the stage starts, instead of waiting out the first interval: catching up
    #: after a restart differs from a timed round (the reconciler's start-up round, for one).
    at_start: Callable[[Sweeper], Awaitable[None]] | None = None


@dataclass
class Stage:
    """A consumer group named ``name`` that handles the events of ``topics``.

    ``prepare`` (optional) does the event's outside work with no transaction open; ``handler`` records
    the outcome inside the handling transaction (see the module docstring).
    """

    name: str
    topics: list[str]
    handler: Handler
    payloads: Mapping[str, type[BaseModel]] = field(default_factory=lambda: dict(PAYLOADS))
    sweeps: list[Sweep] = field(default_factory=list)
    prepare: Prepare | None = None
    #: Events with the same value are handled one after another, in order; unset: the message key (the
    #: generation). A stage whose events of one generation are independent (completion finishes each
    #: clip on its own) orders them more finely, so they run side by side.
    order_by: Callable[[CloudEvent], str] | None = None


@dataclass
class RuntimeConfig:
    bootstrap: str
    concurrency: int = 16
    #: Unfinished messages per partition, at most; a partition at the limit is paused until one ends.
    max_in_flight: int = 64
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000
    #: How long the broker may hold an empty fetch. Kafka answers as soon as data arrives whatever this
    #: is; tansu holds the fetch for its whole wait, so on the embedded broker it is each hop's latency.
    fetch_max_wait_ms: int = 500
    max_backoff: float = 5.0
    permanent_attempts: int = 3
    #: Seconds an event may keep failing transiently before it is dead-lettered.
    transient_budget: float = 300.0
    shutdown_grace: float = 10.0


class _AlreadyHandled(Exception):
    """The event's ``processed_events`` row exists already: roll this handling back, re-send that one's."""


class _Stopping(Exception):
    """The runtime is stopping while this event waited on a transient failure: abandon, do not commit."""


@dataclass
class _InFlight:
    offset: int
    done: bool = False


class StageRunner:
    def __init__(
        self, stage: Stage, pool: asyncpg.Pool, producer: Producer, config: RuntimeConfig, deps: Any = None
    ):
        self.stage = stage
        self.pool = pool
        self.producer = producer
        self.config = config
        self.deps = deps
        self._stopping = asyncio.Event()
        self._semaphore = asyncio.Semaphore(config.concurrency)
        self._pending: dict[TopicPartition, deque[_InFlight]] = {}
        self._tasks: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        self._chains: dict[tuple[TopicPartition, bytes | None], asyncio.Task[None]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        #: The next offset to read per partition, as last committed by us: what consumer lag counts from.
        self._committed: dict[TopicPartition, int] = {}
        self._lag_at = 0.0
        self.ready = asyncio.Event()
        # Failure series exist at 0 from the start: "none" on a dashboard, not "no data".
        for kind in ("transient", "error", "permanent", "undecodable"):
            metrics.ERRORS.labels(stage.name, kind)
        metrics.RETRIES.labels(stage.name)
        for topic in stage.topics:
            metrics.DEAD_LETTERED.labels(stage.name, topic)

    # -- lifecycle -------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        cfg = self.config
        consumer = AIOKafkaConsumer(
            bootstrap_servers=cfg.bootstrap,
            group_id=self.stage.name,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=cfg.heartbeat_interval_ms,
            max_poll_interval_ms=300_000,
            fetch_max_wait_ms=cfg.fetch_max_wait_ms,
            metadata_max_age_ms=30_000,
        )
        self._consumer = consumer
        consumer.subscribe(self.stage.topics, listener=_Listener(self))
        await consumer.start()
        log.info("stage %s consuming %s", self.stage.name, ", ".join(self.stage.topics))
        sweeps = [
            asyncio.create_task(self._sweep(sweep), name=f"sweep-{sweep.name}") for sweep in self.stage.sweeps
        ]
        try:
            while not self._stopping.is_set():
                self._apply_backpressure(consumer)
                batch = await consumer.getmany(timeout_ms=200, max_records=min(500, cfg.max_in_flight))
                if consumer.assignment():
                    self.ready.set()
                for tp, records in batch.items():
                    for record in records:
                        self._dispatch(tp, record)
                await self._commit(consumer)
                await self._measure_lag(consumer)
        finally:
            for task in sweeps:
                task.cancel()
            await asyncio.gather(*sweeps, return_exceptions=True)
            await self._drain(list(self._pending))
            await self._commit(consumer)
            await consumer.stop()
            log.info("stage %s stopped", self.stage.name)

    async def _sweep(self, sweep: Sweep) -> None:
        """Run ``sweep.at_start`` at once (if any), then ``sweep.run`` every ``sweep.every`` seconds until
        stopped; a failed round is logged and retried."""
        every = max(0.05, sweep.every(self.deps))
        sweeper = Sweeper(self.stage.name, self.pool, self.producer, self.deps)
        first = sweep.at_start
        while not self._stopping.is_set():
            if first is None:
                try:
                    await asyncio.wait_for(self._stopping.wait(), timeout=every)
                    return
                except TimeoutError:
                    pass
            run, first = first or sweep.run, None
            try:
                await run(sweeper)
            except TRANSIENT as exc:
                log.warning(
                    "sweep %s/%s failed, next round in %.1fs: %r", self.stage.name, sweep.name, every, exc
                )
            except Exception:
                log.exception("sweep %s/%s crashed, next round in %.1fs", self.stage.name, sweep.name, every)

    # -- dispatch and ordering ---------------------------------------------------------------
    def _unfinished(self, tp: TopicPartition) -> int:
        """Messages of ``tp`` still being handled; finished ones waiting for their commit do not count."""
        return sum(1 for entry in self._pending.get(tp, ()) if not entry.done)

    def _apply_backpressure(self, consumer: AIOKafkaConsumer) -> None:
        """Pause exactly the partitions at their in-flight limit; resume them once they have room."""
        paused = consumer.paused()
        for tp in consumer.assignment():
            full = self._unfinished(tp) >= self.config.max_in_flight
            if full and tp not in paused:
                consumer.pause(tp)
            elif not full and tp in paused:
                consumer.resume(tp)

    def _dispatch(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        entry = _InFlight(record.offset)
        self._pending.setdefault(tp, deque()).append(entry)
        chain_key = (tp, self._order_key(record))
        previous = self._chains.get(chain_key)
        task = asyncio.create_task(self._run_in_order(previous, tp, record, entry))
        self._chains[chain_key] = task
        self._tasks.setdefault(tp, set()).add(task)

        def _forget(t: asyncio.Task[None]) -> None:
            self._tasks.get(tp, set()).discard(t)
            if self._chains.get(chain_key) is t:
                del self._chains[chain_key]

        task.add_done_callback(_forget)

    def _order_key(self, record: ConsumerRecord[bytes, bytes]) -> bytes | None:
        key: bytes | None = record.key
        if self.stage.order_by is None:
            return key
        try:
            return self.stage.order_by(decode(record.value)).encode()
        except (ValueError, ValidationError, KeyError, TypeError):
            return key  # undecodable: _process dead-letters it, in the generation's order

    async def _run_in_order(
        self,
        previous: asyncio.Task[None] | None,
        tp: TopicPartition,
        record: ConsumerRecord[bytes, bytes],
        entry: _InFlight,
    ) -> None:
        if previous is not None:
            await asyncio.wait([previous])
            if previous.cancelled():
                return  # the chain was abandoned (revoked or stopping); this event is redelivered later
        try:
            await self._process(tp, record)
        except _Stopping:
            return
        entry.done = True

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        offsets: dict[TopicPartition, int] = {}
        for tp, queue in self._pending.items():
            last = None
            while queue and queue[0].done:
                last = queue.popleft().offset
            if last is not None:
                offsets[tp] = last + 1
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
            self._committed.update(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # The work is recorded in Postgres; a redelivery will only re-emit. Nothing is lost.
            log.warning(
                "stage %s: offset commit failed (%s); events will be redelivered", self.stage.name, exc
            )

    async def _measure_lag(self, consumer: AIOKafkaConsumer) -> None:
        """Set ``reelstream_consumer_lag`` per assigned partition, at most once a second.

        The high watermark comes with every fetch (no extra request); the committed offset is ours,
        else the consumer's position (the group's committed offset, or where it started reading).
        """
        now = time.monotonic()
        if now - self._lag_at < 1.0:
            return
        self._lag_at = now
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            committed = self._committed.get(tp)
            if committed is None:
                try:
                    committed = await consumer.position(tp)
                except KafkaError:
                    continue
            metrics.CONSUMER_LAG.labels(self.stage.name, tp.topic, str(tp.partition)).set(
                max(0, highwater - committed)
            )

    async def _drain(self, partitions: list[TopicPartition]) -> None:
        """Give in-flight work on ``partitions`` a grace period, then abandon the rest."""
        tasks = [t for tp in partitions for t in self._tasks.get(tp, set())]
        if tasks:
            _, still = await asyncio.wait(tasks, timeout=self.config.shutdown_grace)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still)

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        if self._consumer is None:
            return
        await self._drain(list(revoked))
        await self._commit(self._consumer)
        for tp in revoked:
            self._pending.pop(tp, None)
            self._tasks.pop(tp, None)
            self._committed.pop(tp, None)
            with contextlib.suppress(KeyError):  # another member owns it now and reports its lag
                metrics.CONSUMER_LAG.remove(self.stage.name, tp.topic, str(tp.partition))

    # -- one message ---------------------------------------------------------------------------
    async def _process(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        started = time.monotonic()
        db.caller.set(self.stage.name)  # this task's round trips count as the stage's
        # This task's log lines carry the job (a task has its own copy of these context variables).
        logs.bind(stage=self.stage.name, generation_id=_generation_of(record, None))
        try:
            event = decode(record.value)
            model = self.stage.payloads.get(record.topic)
            if model is None:
                raise PermanentError(f"no payload model for topic {record.topic}")
            data = model.model_validate(event.data)
        except (ValueError, ValidationError, PermanentError) as exc:
            metrics.ERRORS.labels(self.stage.name, "undecodable").inc()
            await self._dead_letter(record, exc)
            metrics.EVENTS_HANDLED.labels(self.stage.name, record.topic, "dead_lettered").inc()
            return
        logs.bind(event_id=event.id, generation_id=event.subject, prediction_id=_prediction_of(event))
        with tracing.span(
            f"{self.stage.name} {record.topic}",
            traceparent=event.traceparent,
            kind=SpanKind.CONSUMER,
            attributes={
                "reelstream.stage": self.stage.name,
                "reelstream.generation_id": event.subject,
                "messaging.destination.name": record.topic,
                "messaging.message.id": event.id,
            },
        ) as span:
            outcome = await self._handle_with_retries(record, event, data)
            span.set_attribute("reelstream.outcome", outcome)
            # One line per step, with the job's ids and trace (reelstream/logs.py): one grep follows it.
            log.info("%s %s %s: %s", self.stage.name, record.topic, event.id, outcome)
        metrics.EVENTS_HANDLED.labels(self.stage.name, record.topic, outcome).inc()
        metrics.HANDLER_SECONDS.labels(self.stage.name).observe(time.monotonic() - started)

    async def _handle_with_retries(
        self, record: ConsumerRecord[bytes, bytes], event: CloudEvent, data: BaseModel
    ) -> str:
        transient = 0
        first_transient = 0.0
        permanent = 0
        while True:
            try:
                async with self._semaphore:  # held while working, never while waiting to retry
                    emitted, duplicate, after = await self._handle_once(event, data)
                await self._send_with_retries(emitted)
                await self._follow_up(event, after)
                return "duplicate" if duplicate else "handled"
            except PermanentError as exc:
                metrics.ERRORS.labels(self.stage.name, "permanent").inc()
                await self._dead_letter(record, exc, event)
                return "dead_lettered"
            except TRANSIENT as exc:
                metrics.ERRORS.labels(self.stage.name, "transient").inc()
                transient += 1
                now = time.monotonic()
                first_transient = first_transient or now
                if now - first_transient >= self.config.transient_budget:
                    reason = f"still failing after {transient} tries in {now - first_transient:.0f}s: {exc}"
                    await self._dead_letter(record, TransientError(reason), event)
                    return "dead_lettered"
                delay = self._backoff(transient)
                log.warning(
                    "stage %s: transient failure on %s (generation %s), retry %d in %.1fs: %r",
                    self.stage.name,
                    event.id,
                    event.subject,
                    transient,
                    delay,
                    exc,
                )
                metrics.RETRIES.labels(self.stage.name).inc()
                await self._sleep_unless_stopping(delay)
            except Exception as exc:
                metrics.ERRORS.labels(self.stage.name, "error").inc()
                permanent += 1
                if permanent >= self.config.permanent_attempts:
                    log.exception("stage %s: event %s failed %d times", self.stage.name, event.id, permanent)
                    await self._dead_letter(record, exc, event)
                    return "dead_lettered"
                log.warning("stage %s: error on %s, retrying: %r", self.stage.name, event.id, exc)
                await self._sleep_unless_stopping(self._backoff(permanent))

    def _backoff(self, failures: int) -> float:
        base: float = min(self.config.max_backoff, 0.2 * 2.0 ** (failures - 1))
        return base * random.uniform(0.8, 1.2)

    async def _sleep_unless_stopping(self, delay: float) -> None:
        if self._stopping.is_set():
            raise _Stopping
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=delay)
        except TimeoutError:
            return
        raise _Stopping

    async def _handle_once(
        self, event: CloudEvent, data: BaseModel
    ) -> tuple[list[tuple[str, CloudEvent]], bool, list[Callable[[], Awaitable[None]]]]:
        """Prepare (no transaction), then record in one transaction with the ``processed_events`` row.

        Returns what to send, whether the event was a repeat, and the handler's after-commit calls.
        """
        ctx: Context[Any] = Context(self.stage.name, event, data, self.pool, self.deps, self.producer)
        if self.stage.prepare is not None:
            stored = await self._stored(self.pool, event.id)
            if stored is not None:
                return stored, True, []
            ctx.prepared = await self.stage.prepare(ctx)
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                ctx._conn = conn
                try:
                    await self.stage.handler(ctx)
                finally:
                    ctx._conn = None
                # Recorded last, in the same transaction: one round trip. A concurrent handling of
                # the same event (a rebalance) waits here on the other's row and then rolls back.
                fresh = await conn.fetchval(
                    "INSERT INTO processed_events (consumer, event_id, emitted, generation_id)"
                    " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING true",
                    self.stage.name,
                    event.id,
                    [{"topic": t, "event": e.model_dump(mode="json")} for t, e in ctx.emitted],
                    event.subject,
                )
                if not fresh:
                    raise _AlreadyHandled
        except _AlreadyHandled:
            return await self._stored(self.pool, event.id) or [], True, []
        return ctx.emitted[ctx._sent :], False, ctx.after

    async def _follow_up(self, event: CloudEvent, calls: list[Callable[[], Awaitable[None]]]) -> None:
        for call in calls:
            try:
                await call()
            except Exception as exc:
                log.warning("stage %s: follow-up of %s failed: %r", self.stage.name, event.id, exc)

    async def _stored(
        self, conn: asyncpg.Pool | asyncpg.Connection, event_id: str
    ) -> list[tuple[str, CloudEvent]] | None:
        """What this stage emitted when it handled ``event_id``, or None if it has not handled it."""
        stored = await conn.fetchval(
            "SELECT emitted FROM processed_events WHERE consumer = $1 AND event_id = $2",
            self.stage.name,
            event_id,
        )
        if stored is None:
            return None
        return [(item["topic"], CloudEvent.model_validate(item["event"])) for item in stored]

    async def _send_with_retries(self, emitted: list[tuple[str, CloudEvent]]) -> None:
        failures = 0
        while True:
            try:
                await self.producer.send_many(emitted)
                return
            except KafkaError as exc:
                failures += 1
                log.warning("stage %s: emit failed (%r), retrying", self.stage.name, exc)
                await self._sleep_unless_stopping(self._backoff(failures))

    # -- dead letters ----------------------------------------------------------------------------
    async def _dead_letter(
        self, record: ConsumerRecord[bytes, bytes], exc: BaseException, event: CloudEvent | None = None
    ) -> None:
        generation_id = _generation_of(record, event)
        log.error(
            "stage %s: %s[%d]@%d (generation %s) to DLQ: %s",
            self.stage.name,
            record.topic,
            record.partition,
            record.offset,
            generation_id,
            exc,
        )
        headers = [
            ("error", f"{type(exc).__name__}: {exc}"[:4000].encode()),
            ("error_type", type(exc).__name__.encode()),
            ("original_topic", record.topic.encode()),
            ("original_partition", str(record.partition).encode()),
            ("original_offset", str(record.offset).encode()),
            ("consumer", self.stage.name.encode()),
        ]
        failures = 0
        while True:
            try:
                await self.producer.send_raw(
                    topic_names.dlq(record.topic), record.value, key=record.key, headers=headers
                )
                metrics.DEAD_LETTERED.labels(self.stage.name, record.topic).inc()
                break
            except KafkaError as send_error:
                failures += 1
                log.warning(
                    "stage %s: dead letter to %s failed (%r), retrying",
                    self.stage.name,
                    topic_names.dlq(record.topic),
                    send_error,
                )
                await self._sleep_unless_stopping(self._backoff(failures))
        if generation_id is not None:
            origin = event.id if event is not None else f"{record.topic}/{record.partition}/{record.offset}"
            await self._fail_generation(generation_id, origin, exc)

    async def _fail_generation(self, generation_id: str, origin: str, exc: BaseException) -> None:
        """End the dead letter's generation ``failed`` (code ``internal``) instead of leaving it hanging.

        If Postgres is what failed, this cannot be written now: the generation stays as it is and the
        reconciler drives it on (or fails it) once the database answers again.
        """
        error = ErrorInfo(
            code="internal",
            message=f"the {self.stage.name} stage could not handle this generation: {exc}"[:500],
            stage=self.stage.name,
        )
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                announced = await status.end_failed(conn, generation_id, error)
        except TRANSIENT as db_exc:
            log.warning("%s: could not record its failure (%r); the reconciler will", generation_id, db_exc)
            return
        if not announced:
            return  # already ended
        events = [
            (
                topic,
                make_event(
                    topic,
                    data,
                    source=f"/reelstream/stages/{self.stage.name}",
                    subject=generation_id,
                    event_id=derive_id(origin, self.stage.name, "dead-letter", topic),
                ),
            )
            for topic, data in announced
        ]
        metrics.GENERATIONS.labels("failed").inc()
        log.error("%s failed: %s", generation_id, error.message)
        await self._send_with_retries(events)


def _prediction_of(event: CloudEvent) -> str | None:
    """The prediction an event is about (``clip.submitted``, ``clip.completed``), for the log context."""
    data = event.data
    found = data.get("prediction_id")
    if found is None and isinstance(data.get("prediction"), dict):
        found = data["prediction"].get("id")
    return found if isinstance(found, str) else None


def by_clip(event: CloudEvent) -> str:
    """An order for ``Stage.order_by``: one clip's events in turn, a generation's clips side by side.

    Events without a clip are ordered by their generation alone.
    """
    clip_id = event.data.get("clip_id")
    return f"{event.subject}/{clip_id}" if isinstance(clip_id, str) else str(event.subject)


def _generation_of(record: ConsumerRecord[bytes, bytes], event: CloudEvent | None) -> str | None:
    """The generation a message belongs to: the event's subject, else its key (both are the id)."""
    candidate = event.subject if event is not None else (record.key or b"").decode(errors="replace")
    return candidate if _GENERATION_ID.fullmatch(candidate) else None


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: StageRunner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.runner._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        return None
