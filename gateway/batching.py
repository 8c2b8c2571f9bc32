"""Group commit: the database writes of concurrent requests share one statement; and log lines likewise.

Under load the gateway's cost per request was dominated by round trips to Postgres (and the CPU every
round trip costs both sides), not by the rows themselves. A :class:`GroupCommit` queues each request's
item; a write starts at once while fewer than ``max_in_flight`` are running, taking every item queued so
far (up to ``max_items``). An idle gateway so writes each item alone, with no added delay; a busy one
turns N round trips into one, and a request waits for at most the write in flight plus its own.

A failed batch (other than an outage, :class:`~gateway.database.DatabaseUnavailable`) is retried item by
item, so one bad item fails only its own request. The writes run in tasks of their own: a request that
goes away does not take its neighbours' write with it (its own item is still written).
"""

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from gateway.database import DatabaseUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """Run ``write`` over batches of submitted items; ``write`` returns one result per item, in order."""

    def __init__(
        self,
        write: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
        *,
        name: str,
        max_items: int = 512,
        max_in_flight: int = 2,
    ) -> None:
        self.name = name
        self.max_items = max_items
        self.max_in_flight = max_in_flight
        self._write = write
        self._queued: list[tuple[T, asyncio.Future[R]]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        #: Items written and statements used for them (what the tests look at).
        self.items = 0
        self.batches = 0

    async def submit(self, item: T) -> R:
        """The item's result once its batch is written; raises what writing it raised."""
        done: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queued.append((item, done))
        self._kick()
        return await done  # canceled here, the item is still written with its batch

    async def drain(self) -> None:
        """Wait for every write started so far (tests; shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _kick(self) -> None:
        while self._queued and self._in_flight < self.max_in_flight:
            batch, self._queued = self._queued[: self.max_items], self._queued[self.max_items :]
            self._in_flight += 1
            task = asyncio.create_task(self._flush(batch), name=self.name)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self, batch: list[tuple[T, "asyncio.Future[R]"]]) -> None:
        try:
            await self._run(batch)
        except asyncio.CancelledError:
            for _, done in batch:
                done.cancel()
            raise
        except Exception as exc:  # every waiter hears about it; nothing is left pending
            for _, done in batch:
                _settle(done, exc)
        finally:
            self._in_flight -= 1
            self._kick()

    async def _run(self, batch: list[tuple[T, "asyncio.Future[R]"]]) -> None:
        try:
            results = await self._write([item for item, _ in batch])
        except DatabaseUnavailable:
            raise
        except Exception:
            if len(batch) == 1:
                raise
            log.warning("%s: a batch of %d failed; writing its items one by one", self.name, len(batch))
            for item, done in batch:
                try:
                    (result,) = await self._write([item])
                except Exception as exc:
                    _settle(done, exc)
                else:
                    self._count(1)
                    _settle(done, result)
            return
        self._count(len(batch))
        for (_, done), result in zip(batch, results, strict=True):
            _settle(done, result)

    def _count(self, items: int) -> None:
        self.items += items
        self.batches += 1


def _settle(done: "asyncio.Future[R]", outcome: "R | Exception") -> None:
    """Hand a waiter its outcome, unless it has gone away (its future was canceled with its request)."""
    if done.done():
        return
    if isinstance(outcome, Exception):
        done.set_exception(outcome)
        done.exception()  # marked as retrieved: nobody may be left to await it
    else:
        done.set_result(outcome)


class BurstLog:
    """An INFO line per request, one line per burst of them: ``one`` alone, ``many`` + ``item``s under load.

    A line per request (a log record formatted, redacted, and written to a pipe the supervisor reads) was
    a tenth of the accept path's CPU under load. A request arriving while the gateway is quiet is logged
    at once, as before (``one % args``, in the request's own log context); those that come in the next
    ``delay`` seconds share one line (``many`` followed by ``item % args`` of each, comma-separated, at
    most ``max_items`` to a line), and so on while they keep coming. :meth:`flush` at shutdown writes
    what is pending, so nothing goes unlogged when the gateway stops.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        one: str,
        many: str,
        item: str,
        delay: float = 0.05,
        max_items: int = 100,
    ) -> None:
        self.logger = logger
        self.one, self.many, self.item = one, many, item
        self.delay = delay
        self.max_items = max_items
        self._pending: list[tuple[Any, ...]] = []
        self._timer: asyncio.TimerHandle | None = None

    def add(self, *args: Any) -> None:
        if self._timer is None:  # quiet: this one's line now, in its own request's log context
            self.logger.info(self.one, *args)
            self._arm()
            return
        self._pending.append(args)
        if len(self._pending) >= self.max_items:
            self._write()

    def flush(self) -> None:
        """Write what is pending now, and end the burst."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._write()

    def _arm(self) -> None:
        # In an empty context: the timer must not keep (nor log under) the request that armed it.
        self._timer = asyncio.get_running_loop().call_later(
            self.delay, self._tick, context=contextvars.Context()
        )

    def _tick(self) -> None:
        self._timer = None
        if self._pending:
            self._write()
            self._arm()  # still busy: the next ones wait for the next tick

    def _write(self) -> None:
        """The pending lines, outside any request's log context: a line naming many requests must not
        carry the ``generation_id`` (or trace) of whichever request happened to write it."""
        pending, self._pending = self._pending, []
        if pending:
            contextvars.Context().run(self._log, pending)  # a fresh one: never entered twice

    def _log(self, pending: list[tuple[Any, ...]]) -> None:
        if len(pending) == 1:
            self.logger.info(self.one, *pending[0])
        else:
            self.logger.info("%s%s", self.many, ", ".join(self.item % args for args in pending))
