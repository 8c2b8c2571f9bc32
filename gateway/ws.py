"""``/ws/generations/{id}``: a snapshot, then live ``status`` and ``clip`` messages.

Every gateway instance must see every status change, whichever instance a client is connected to, so
the :class:`StatusHub` reads ``generation.status`` *without* a consumer group: it assigns itself all
partitions and starts at the end (a WebSocket only cares about what happens from now on; the snapshot
covers the past).

Ordering without gaps: a connection subscribes first and reads its snapshot from Postgres second.
Events that arrive in between are held back and then filtered against the snapshot, so nothing that
happened after the snapshot is missed and nothing older than it is replayed as news. Statuses never
move backward for a subscriber (events of different stages can arrive out of order).

The hub also keeps this process's memory of recent generations (:mod:`gateway.memory`) current: the
last status of every generation on ``generation.status``, and every request on ``generation.requested``,
so reads can be answered while Postgres is unreachable. A WebSocket opened meanwhile gets its snapshot
from that memory (or is closed with 1013, try again later, for a generation not remembered).

Slow clients cannot slow anyone else down: the hub only ever does a non-blocking put into each
subscriber's bounded queue; a subscriber whose queue overflows is closed with 1013 (try again later)
and can reconnect for a fresh snapshot.

After the terminal status (``completed``, ``failed``, ``canceled``) has been sent, the server closes
the socket normally (1000): there is nothing more to say about that generation, and clients get a
clear end of stream without having to know which statuses are terminal. A connection to a generation
that has already ended gets its snapshot and the same normal close.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiohttp import WSCloseCode, WSMsgType, web
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from gateway.database import DatabaseUnavailable, connection
from gateway.deps import DEPS, GatewayDeps, get_deps
from gateway.errors import ApiError, request_id
from gateway.generations import read_detail
from gateway.memory import RECENT, RecentGenerations
from reelstream import metrics
from reelstream.detail import load_clips_of, valid_generation_id
from reelstream.events import decode
from schemas import topics
from schemas.api import (
    TERMINAL,
    Clip,
    ClipMessage,
    GenerationDetail,
    Progress,
    SnapshotMessage,
    StatusMessage,
    status_rank,
)
from schemas.events import GenerationRequested, GenerationStatusChanged

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

CLOSE_NOT_FOUND = 4404
CLOSE_TOO_SLOW = WSCloseCode.TRY_AGAIN_LATER  # 1013
#: Messages a subscriber may have waiting before it counts as too slow.
QUEUE_SIZE = 256
HEARTBEAT_SECONDS = 30.0
SHUTDOWN_GRACE_SECONDS = 2.0
#: How long one fetch of the hub may wait on the broker for records (an idle hub asks this often).
FETCH_MAX_WAIT_MS = 50
#: How long the app start waits for the hub to watch the topic before serving anyway.
HUB_READY_WAIT_SECONDS = 10.0

ClipState = tuple[str, int, str | None, str | None]


_CLIP_RANK = {"pending": 0, "submitted": 1, "processing": 2, "succeeded": 3, "failed": 3, "canceled": 3}


def _clip_state(clip: Clip) -> ClipState:
    return (clip.status, clip.attempts, clip.prediction_id, clip.url)


def _clip_order(state: ClipState) -> tuple[int, int]:
    """Clips also only move forward: a later attempt, or further along within the same attempt."""
    return (state[1], _CLIP_RANK.get(state[0], 0))


@dataclass
class _Close:
    code: int
    reason: str


class Rendered:
    """The messages of one status event as JSON, rendered once for every subscriber of its generation.

    Every subscriber of a generation is told the same ``status`` and ``clip`` messages (or fewer): with
    many sockets on one generation, serialising them once per event instead of once per socket is most
    of the hub's work saved.
    """

    def __init__(self, event: GenerationStatusChanged) -> None:
        self.event = event
        self._status: str | None = None
        self._clips: dict[tuple[str, ClipState], str] = {}

    def status(self) -> str:
        if self._status is None:
            event = self.event
            self._status = StatusMessage(
                generation_id=event.generation_id, status=event.status, progress=event.progress, at=event.at
            ).model_dump_json()
        return self._status

    def clip(self, clip: Clip) -> str:
        key = (clip.clip_id, _clip_state(clip))
        text = self._clips.get(key)
        if text is None:
            text = ClipMessage(
                generation_id=self.event.generation_id, clip=clip, at=self.event.at
            ).model_dump_json()
            self._clips[key] = text
        return text


@dataclass(eq=False)
class Subscriber:
    """One WebSocket's view of one generation: what it has been told, and what it still has to be told."""

    generation_id: str
    maxsize: int = QUEUE_SIZE
    queue: "asyncio.Queue[str | _Close]" = field(init=False)
    status: str | None = None
    rank: int = -1
    progress: Progress | None = None
    clips: dict[str, ClipState] = field(default_factory=dict)
    seeded: bool = False
    closing: bool = False
    early: list[tuple[GenerationStatusChanged, list[Clip] | None, Rendered]] = field(default_factory=list)
    #: Resolved when something is queued (or the socket's reader ends): what the sending side awaits.
    waiter: "asyncio.Future[None] | None" = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue(self.maxsize + 1)  # + 1: room for the close marker

    def seed(self, detail: GenerationDetail) -> None:
        """Start from the snapshot; then apply whatever arrived while the snapshot was being read."""
        self.status = detail.status
        self.rank = status_rank(detail.status)
        self.progress = detail.progress
        self.clips = {c.clip_id: _clip_state(c) for c in detail.clips}
        self.seeded = True
        early, self.early = self.early, []
        for event, clips, rendered in early:
            self._apply(event, clips, rendered)
        if self.status in TERMINAL:
            self._close(1000, f"generation {self.status}")

    def offer(
        self, event: GenerationStatusChanged, clips: list[Clip] | None, rendered: Rendered | None = None
    ) -> None:
        """Called by the hub for every status event of this generation; never blocks.

        ``rendered``: the event's messages, shared by every subscriber of the generation.
        """
        if self.closing:
            return
        rendered = rendered or Rendered(event)
        if not self.seeded:
            if len(self.early) >= self.maxsize:
                self._overflow()
                return
            self.early.append((event, clips, rendered))
            return
        self._apply(event, clips, rendered)
        if self.status in TERMINAL:
            self._close(1000, f"generation {self.status}")

    def _apply(self, event: GenerationStatusChanged, clips: list[Clip] | None, rendered: Rendered) -> None:
        # Clips first: a terminal status is then the last message of the stream.
        for clip in clips or ():
            state = _clip_state(clip)
            known = self.clips.get(clip.clip_id)
            if known != state and (known is None or _clip_order(state) >= _clip_order(known)):
                self.clips[clip.clip_id] = state
                self._put(rendered.clip(clip))
        if self._moves_forward(event):
            self.status, self.rank, self.progress = event.status, status_rank(event.status), event.progress
            self._put(rendered.status())

    def _moves_forward(self, event: GenerationStatusChanged) -> bool:
        if self.status in TERMINAL:
            return False
        rank = status_rank(event.status)
        if rank != self.rank:
            return rank > self.rank
        # Same status: news only if the progress changed, and never a step back in percent. Percent
        # first: comparing whole models (pydantic's __eq__) for every socket was a measurable cost.
        previous = self.progress
        if previous is None:
            return True
        if event.progress.percent != previous.percent:
            return event.progress.percent > previous.percent
        return event.progress != previous

    def _put(self, message: str) -> None:
        if self.closing:
            return
        if self.queue.qsize() >= self.maxsize:
            self._overflow()
            return
        self.queue.put_nowait(message)
        self.wake()

    def wake(self) -> None:
        """Let the sending side look at the queue (and at its reader) again."""
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def next(self, reader: "asyncio.Task[None]") -> "str | _Close | None":
        """The next item to send; None once the client has gone (``reader`` ended).

        A future per wait, resolved by :meth:`wake`, rather than racing ``queue.get()`` against the
        reader with ``asyncio.wait`` for every message: with thousands of sockets that race was the
        biggest cost of the fan-out.
        """
        while True:
            if reader.done():
                return None
            if not self.queue.empty():
                return self.queue.get_nowait()
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter

    def _overflow(self) -> None:
        log.warning("websocket for %s is too slow; dropping it", self.generation_id)
        while not self.queue.empty():
            self.queue.get_nowait()
        self.early.clear()
        self._close(CLOSE_TOO_SLOW, "client too slow; reconnect for a fresh snapshot")

    def close(self, code: int, reason: str) -> None:
        """Send nothing more; the socket is closed with ``code`` after what is already queued."""
        self._close(code, reason)

    def _close(self, code: int, reason: str) -> None:
        if not self.closing:
            self.closing = True
            self.queue.put_nowait(_Close(code, reason))
            self.wake()


class StatusHub:
    """Fans ``generation.status`` out to this process's WebSocket subscribers (one hub per process),
    and keeps ``recent`` up to date from it and from ``generation.requested``."""

    def __init__(
        self,
        deps: GatewayDeps,
        recent: RecentGenerations,
        *,
        topic: str = topics.GENERATION_STATUS,
        requests_topic: str = topics.GENERATION_REQUESTED,
        partition_refresh_seconds: float = 3.0,
    ) -> None:
        self._bootstrap = deps.kafka_bootstrap
        self._deps = deps
        self._recent = recent
        self._topic = topic
        self._requests_topic = requests_topic
        self._refresh = partition_refresh_seconds
        self._subs: dict[str, set[Subscriber]] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        #: Set once every known partition has a resolved position: events from then on are seen.
        self.ready = asyncio.Event()

    # -- subscriptions ----------------------------------------------------------------------------
    def subscribe(self, generation_id: str, *, maxsize: int = QUEUE_SIZE) -> Subscriber:
        sub = Subscriber(generation_id, maxsize)
        self._subs.setdefault(generation_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        subs = self._subs.get(sub.generation_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.generation_id]

    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subs.values())

    def close_all(self, code: int, reason: str) -> None:
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub.close(code, reason)

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self, *, wait_seconds: float = 10.0) -> None:
        """Start consuming; wait (bounded) until positions are resolved, so early clients miss nothing.

        A broker that is down does not stop the gateway from starting: the hub keeps retrying in the
        background and WebSockets get their snapshots meanwhile.
        """
        self._task = asyncio.create_task(self._run(), name="status-hub")
        try:
            await asyncio.wait_for(self.ready.wait(), timeout=wait_seconds)
        except TimeoutError:
            log.warning(
                "status hub not ready after %.0fs; live updates start once the broker answers", wait_seconds
            )

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        delay = 0.5
        while not self._stopping.is_set():
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self._bootstrap,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="latest",
                metadata_max_age_ms=int(self._refresh * 1000),
                # tansu answers a waiting fetch late when records arrive meanwhile: measured, a record
                # reached a consumer 64-93 ms (median) after it was acknowledged with aiokafka's default
                # 500 ms wait, 11 ms with 50 ms.
                fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            )
            try:
                await consumer.start()
            except (KafkaError, OSError) as exc:
                log.warning("status hub cannot reach the broker (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            delay = 0.5
            try:
                await self._consume(consumer)
            except (KafkaError, OSError) as exc:
                log.warning("status hub consumer failed (%s); restarting", exc)
                await asyncio.sleep(1.0)
            except Exception:  # never let live updates die silently with the process still up
                log.exception("status hub crashed; restarting")
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()

    async def _assign_new_partitions(self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]) -> None:
        """Add partitions that appeared since the last look, keeping the positions of the others.

        The first partitions start at the end; partitions found later start at their beginning,
        since everything in them was written after we started watching.
        """
        partitions = {
            TopicPartition(topic, p)
            for topic in (self._topic, self._requests_topic)
            for p in consumer.partitions_for_topic(topic) or ()
        }
        if not partitions:
            return
        new = partitions - assigned
        if not new:
            return
        kept = {tp: await consumer.position(tp) for tp in assigned}
        consumer.assign(list(assigned | new))
        for tp, offset in kept.items():
            consumer.seek(tp, offset)
        if assigned:
            await consumer.seek_to_beginning(*new)
        else:
            await consumer.seek_to_end(*new)
        for tp in new:
            await consumer.position(tp)  # resolve now, not lazily at the first fetch
        assigned |= new
        log.info(
            "status hub watching %d partitions of %s and %s", len(assigned), self._topic, self._requests_topic
        )
        self.ready.set()

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        assigned: set[TopicPartition] = set()
        next_look = 0.0
        while not self._stopping.is_set():
            if time.monotonic() >= next_look:
                await self._assign_new_partitions(consumer, assigned)
                next_look = time.monotonic() + self._refresh
            if not assigned:
                await asyncio.sleep(min(self._refresh, 0.5))
                continue
            batch = await consumer.getmany(timeout_ms=500, max_records=1000)
            records = [record for part in batch.values() for record in part]
            if records:
                await self._dispatch_batch(records)

    def _remember_request(self, record: ConsumerRecord[bytes, bytes], generation_id: str) -> None:
        if self._recent.has_request(generation_id):
            return  # accepted here (or seen already): decoding its request again would add nothing
        try:
            event = GenerationRequested.model_validate(decode(record.value).data)
        except (ValueError, ValidationError) as exc:
            log.warning(
                "undecodable request at %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc
            )
            return
        if event.generation_id == generation_id:
            self._recent.requested(event)

    def _status_event(self, record: ConsumerRecord[bytes, bytes]) -> GenerationStatusChanged | None:
        """The status event of a record (remembered), or None for a request, a keyless or a bad record."""
        if record.key is None:
            return None
        generation_id = record.key.decode(errors="replace")
        if record.topic == self._requests_topic:
            self._remember_request(record, generation_id)
            return None
        try:
            event = GenerationStatusChanged.model_validate(decode(record.value).data)
        except (ValueError, ValidationError) as exc:
            log.warning(
                "undecodable status event at %s[%d]@%d: %s",
                record.topic,
                record.partition,
                record.offset,
                exc,
            )
            return None
        if event.generation_id != generation_id:
            return None
        self._recent.status_seen(event)
        return event

    async def _dispatch_batch(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        """Offer every status event of a fetched batch to its subscribers, in order.

        The clips of every watched generation in the batch are read in one query, after every event of
        the batch was written (so never older than any of them), and shared by all their subscribers:
        one round trip per batch, not one per event, so a busy topic cannot outrun the hub.
        """
        events = [e for e in map(self._status_event, records) if e is not None]
        watched = sorted({e.generation_id for e in events if e.generation_id in self._subs})
        if not watched:
            return  # nobody here is watching
        clips: dict[str, list[Clip]] | None
        try:
            async with connection(self._deps) as conn:
                clips = await load_clips_of(conn, watched)
        except (
            DatabaseUnavailable,
            asyncpg.PostgresError,
        ) as exc:  # the statuses still go out, without clips
            log.warning("status hub could not read the clips of %d generations: %r", len(watched), exc)
            clips = None
        for event in events:
            subs = self._subs.get(event.generation_id)
            if not subs:
                continue
            rendered = Rendered(event)
            theirs = clips.get(event.generation_id, []) if clips is not None else None
            for sub in list(subs):
                sub.offer(event, theirs, rendered)


HUB = web.AppKey("reelstream_status_hub", StatusHub)
#: Open sockets and the tasks serving them, so shutdown can wait for them to finish closing.
SOCKETS = web.AppKey("reelstream_websockets", dict[web.WebSocketResponse, "asyncio.Task[Any]"])


async def hub_context(app: web.Application) -> AsyncIterator[None]:
    """App lifecycle: the hub runs exactly as long as the application (server or test server)."""
    hub = StatusHub(app[DEPS], app[RECENT])
    app[HUB] = hub
    await hub.start(wait_seconds=HUB_READY_WAIT_SECONDS)
    yield
    await hub.stop()


async def close_sockets(app: web.Application) -> None:
    """On shutdown: tell every client we are going away (1001), so it reconnects to another instance.

    Each connection closes itself after what it has queued, with a proper closing handshake; the
    few that do not manage within the grace period are closed from here.
    """
    app[HUB].close_all(WSCloseCode.GOING_AWAY, "server shutting down")
    sockets: dict[web.WebSocketResponse, asyncio.Task[Any]] = app[SOCKETS]
    if sockets:
        await asyncio.wait(list(sockets.values()), timeout=SHUTDOWN_GRACE_SECONDS)
    for ws in list(sockets):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")


async def _reader(ws: web.WebSocketResponse) -> None:
    """Drain what the client sends (nothing is expected) so close frames and pings are handled."""
    async for msg in ws:
        if msg.type == WSMsgType.ERROR:
            return


async def _stop(task: "asyncio.Task[None]") -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, ConnectionError):
        await task


async def _pump(ws: web.WebSocketResponse, sub: Subscriber, reader: "asyncio.Task[None]") -> None:
    """Send queued messages until the subscriber closes or the client goes away.

    On our own close the reader is stopped first: with a receive() pending, aiohttp would drop the
    connection instead of completing the closing handshake, and the client would see 1006.
    """
    reader.add_done_callback(lambda _: sub.wake())
    while True:
        item = await sub.next(reader)
        if item is None:
            return  # the client closed (or the connection broke)
        if isinstance(item, _Close):
            await _stop(reader)
            await ws.close(code=item.code, message=item.reason.encode())
            return
        await ws.send_str(item)


@routes.get("/ws/generations/{generation_id}")
async def generation_socket(request: web.Request) -> web.WebSocketResponse:
    generation_id = request.match_info["generation_id"]
    cap = get_deps(request).settings.gateway_max_websockets
    if len(request.app[SOCKETS]) >= cap:
        # Before the upgrade, so it is a plain 503 a client can back off from, not a dropped socket.
        raise ApiError(
            503, "unavailable", f"more than {cap} WebSockets open; retry later", headers={"Retry-After": "5"}
        )
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_SECONDS)
    await ws.prepare(request)
    if not valid_generation_id(generation_id):
        await ws.close(code=CLOSE_NOT_FOUND, message=b"generation not found")
        return ws
    hub = request.app[HUB]
    sockets = request.app[SOCKETS]
    sub = hub.subscribe(generation_id)  # before the snapshot: see the module docstring
    task = asyncio.current_task()
    assert task is not None
    sockets[ws] = task
    metrics.WEBSOCKETS.inc()
    try:
        try:
            detail = await read_detail(request, generation_id)
        except DatabaseUnavailable as exc:
            log.warning("websocket snapshot of %s: database unavailable (%s)", generation_id, exc)
            await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"database unavailable; retry later")
            return ws
        except Exception:  # the response is already a WebSocket: say it with a close code, not a body
            log.exception("websocket snapshot of %s failed (request %s)", generation_id, request_id(request))
            await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"internal error")
            return ws
        if detail is None:
            await ws.close(code=CLOSE_NOT_FOUND, message=b"generation not found")
            return ws
        reader = asyncio.create_task(_reader(ws))
        try:
            await ws.send_str(SnapshotMessage(generation=detail).model_dump_json())
            sub.seed(detail)
            await _pump(ws, sub, reader)
        except ConnectionError:
            pass  # the client vanished mid-send
        finally:
            await _stop(reader)
        if not ws.closed:
            await ws.close()
        return ws
    finally:
        hub.unsubscribe(sub)
        sockets.pop(ws, None)
        metrics.WEBSOCKETS.dec()
