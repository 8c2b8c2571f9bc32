"""Run a set of child processes as one service: how ``reelstream serve`` runs the gateway and each stage.

One process per stage and one for the gateway, the shape docker-compose runs, so the gateway never
shares a core with the stages' work. :func:`supervise` is the whole life of such a set, read top to
bottom:

1. start every child (:func:`_spawn`): its own process group, so a Ctrl-C in the terminal reaches only
   the supervisor, which stops the children before ``serve`` stops the broker and Postgres they use
   (signalled together, they would fail their last writes); and a parent-death signal
   (``PR_SET_PDEATHSIG``, as :mod:`reelstream.embedded` arms for the broker and Postgres), so no child
   outlives a supervisor that is SIGKILLed or crashes. That signal is SIGKILL, not SIGTERM: a restart
   right after must find the gateway's port free, and work a child had in flight is uncommitted, so the
   next run takes it up again;
2. copy each child's stdout and stderr, line by line as they come, to our stderr behind a ``[name]``
   prefix (:func:`_pump`). A child is *ready* once it prints a line starting with ``ready``;
3. once every child was ready, call ``on_ready`` (``serve`` prints its own ``ready`` line there);
4. restart a child that exits while we are not stopping, after a backoff that grows while it keeps
   crashing, and log why it ended with its last lines (:func:`_keep_running`). A child whose very first
   run ends before it was ready cannot start at all (a taken port, a bad setting): that is
   :class:`ChildFailedToStart`, and ``serve`` exits with a plain message instead of retrying forever;
5. when ``stop`` is set, SIGTERM every child at once and SIGKILL the process group of any still running
   after ``grace`` seconds (:func:`_stop_all`). They stop side by side: each needs a few seconds to
   finish what it holds, and ``serve`` has 10 s in all, the embedded services included.

The pids are kept in a state file (``run/children.json``) for tools and tests, and so that the next start
can end children a killed run left behind where there is no parent-death signal (:func:`end_leftovers`).
POSIX only (process groups, signals).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from reelstream import embedded

__all__ = ["ChildFailedToStart", "ChildSpec", "end_leftovers", "supervise"]

log = logging.getLogger(__name__)

#: Seconds a child has between SIGTERM and SIGKILL. A stage gives in-flight events 4 s, the gateway
#: drains for up to 5 s; with the embedded Postgres' 3 s at most after that, ``serve`` stays within 10 s.
STOP_GRACE_SECONDS = 6.0
#: First restart delay; it doubles with every crash in a row, up to :data:`MAX_BACKOFF_SECONDS`.
BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 10.0
#: A child that ran at least this long before it ended is restarted after the first delay again.
STABLE_SECONDS = 30.0
#: While the children start, name every this many seconds those that are not ready yet.
READY_NAG_SECONDS = 30.0
#: Lines of a child's output kept to explain its crash.
TAIL_LINES = 20
#: Longest line read from a child at once; a longer one is reported as cut rather than read whole.
_LINE_LIMIT = 1024 * 1024
#: How long the rest of an ended child's output may take to arrive (a grandchild may hold its pipes).
_DRAIN_SECONDS = 1.0


@dataclass(frozen=True)
class ChildSpec:
    """One child: its name (the log prefix), its command line, and its whole environment (None: ours)."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    #: Added to the child's scheduling niceness: background work yields the CPU to the gateway.
    nice: int = 0


class ChildFailedToStart(Exception):
    """A child ended before it was ever ready: it cannot start at all, and retrying would not help."""

    def __init__(self, name: str, how: str, tail: Sequence[str] = ()) -> None:
        super().__init__(f"{name} {how} before it was ready")
        self.name = name
        self.tail = list(tail)


@dataclass(eq=False)
class _Child:
    spec: ChildSpec
    proc: asyncio.subprocess.Process | None = None
    pumps: list[asyncio.Task[None]] = field(default_factory=list)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    #: Set by the first ``ready`` line the child ever printed; a restarted child does not clear it.
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    #: That line (a stage names its metrics URL in it).
    ready_line: str = ""
    started: float = 0.0
    restarts: int = 0
    crashes_in_a_row: int = 0


@dataclass(eq=False)
class _Run:
    """What the steps of one :func:`supervise` call share."""

    children: list[_Child]
    stop: asyncio.Event
    sink: TextIO
    state_file: Path | None
    backoff: float


async def supervise(
    specs: Sequence[ChildSpec],
    *,
    stop: asyncio.Event,
    on_ready: Callable[[], Awaitable[None]] | None = None,
    state_file: Path | None = None,
    grace: float = STOP_GRACE_SECONDS,
    backoff: float = BACKOFF_SECONDS,
    out: TextIO | None = None,
    ready_lines: dict[str, str] | None = None,
) -> None:
    """Run the children until ``stop`` is set, then stop them all; returns once none is left.

    Raises :class:`ChildFailedToStart` (after stopping the others) when a child cannot start at all.
    ``out`` receives the children's prefixed output (default: our stderr). ``ready_lines``, if given,
    holds each child's ``ready`` line by name by the time ``on_ready`` is called.
    """
    sink = out if out is not None else sys.stderr
    run = _Run([_Child(spec) for spec in specs], stop, sink, state_file, backoff)
    watchers: list[asyncio.Task[None]] = []
    try:
        if stop.is_set():
            return
        for child in run.children:
            await _spawn(child, run.sink)
        await _record(run)
        watchers = [asyncio.create_task(_keep_running(child, run)) for child in run.children]
        everyone_ready = asyncio.create_task(_all_ready(run.children))
        try:
            await _first_of(everyone_ready, stop, watchers)
        finally:
            everyone_ready.cancel()
        if ready_lines is not None:
            ready_lines.update({child.spec.name: child.ready_line for child in run.children})
        if not stop.is_set() and on_ready is not None:
            await on_ready()
        await _first_of(None, stop, watchers)
    finally:
        await _stop_all(run.children, watchers, grace)
        if state_file is not None:
            await asyncio.to_thread(state_file.unlink, missing_ok=True)


async def _all_ready(children: Sequence[_Child]) -> None:
    """Until every child was ready; names those it still waits for every ``READY_NAG_SECONDS``."""
    waits = {asyncio.create_task(child.ready.wait()): child for child in children}
    try:
        pending = set(waits)
        while pending:
            _, pending = await asyncio.wait(pending, timeout=READY_NAG_SECONDS)
            if pending:
                names = ", ".join(waits[task].spec.name for task in pending)
                log.warning("still waiting for %s to be ready", names)
    finally:
        for task in waits:
            task.cancel()


async def _first_of(
    awaited: asyncio.Task[None] | None, stop: asyncio.Event, watchers: Sequence[asyncio.Task[None]]
) -> None:
    """Wait for ``awaited``, ``stop`` or a watcher's end, whichever comes first; raise a watcher's error."""
    stopped = asyncio.create_task(stop.wait())
    try:
        waiting = [stopped, *watchers] + ([awaited] if awaited is not None else [])
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    for watcher in watchers:
        if watcher.done() and not watcher.cancelled() and (error := watcher.exception()) is not None:
            raise error


async def _spawn(child: _Child, sink: TextIO) -> None:
    """Start ``child`` (see the module docstring for why its own group and a parent-death SIGKILL)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *child.spec.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(child.spec.env) if child.spec.env is not None else None,
            process_group=0,
            preexec_fn=_preexec(child.spec.nice),
            limit=_LINE_LIMIT,
        )
    except OSError as exc:  # no such program, not executable, out of processes
        raise ChildFailedToStart(child.spec.name, f"could not be started ({exc})") from None
    assert proc.stdout is not None and proc.stderr is not None
    child.proc = proc
    child.started = time.monotonic()
    child.tail.clear()  # a crash is explained by its own run's lines
    child.pumps = [
        asyncio.create_task(_pump(child, proc.stdout, sink, watch_ready=True)),
        asyncio.create_task(_pump(child, proc.stderr, sink, watch_ready=False)),
    ]


def _preexec(nice: int) -> Callable[[], None] | None:
    """What the child runs before its program: the parent-death signal, and its niceness (inherited by
    every thread and FFmpeg it starts)."""
    death = embedded.death_signal_preexec(signal.SIGKILL)
    if not nice:
        return death

    def preexec() -> None:
        if death is not None:
            death()
        os.nice(nice)

    return preexec


async def _pump(child: _Child, stream: asyncio.StreamReader, sink: TextIO, *, watch_ready: bool) -> None:
    """Copy one of the child's pipes to ``sink``, prefixed, until it closes; note its ``ready`` line.

    Reading as lines arrive keeps the child from ever blocking on a full pipe, and keeps the loop free.
    """
    prefix = f"[{child.spec.name}] "
    while True:
        try:
            raw = await stream.readline()
        except ValueError:  # longer than _LINE_LIMIT: asyncio dropped it
            raw = b"(an over-long line was cut)\n"
        if not raw:
            return
        line = raw.decode(errors="replace").rstrip("\r\n")
        child.tail.append(line)
        with contextlib.suppress(OSError, ValueError):  # our stderr is gone: keep draining the child
            sink.write(_tagged(child.spec.name, line) if line.startswith(_JSON_LINE) else prefix + line)
            sink.write("\n")
            sink.flush()
        if watch_ready and line.startswith("ready"):
            if not child.ready.is_set():
                child.ready_line = line
            child.ready.set()


#: How a line of ``REELSTREAM_LOG_FORMAT=json`` starts (reelstream/logs.py puts ``time`` first).
_JSON_LINE = '{"time": '


def _tagged(name: str, line: str) -> str:
    """A child's JSON log line with ``"process": name`` added, still one JSON object (not a prefix)."""
    return '{"process": ' + json.dumps(name) + ", " + line[1:]


async def _keep_running(child: _Child, run: _Run) -> None:
    """Wait for the child to end; unless we are stopping, explain why and start it again after a backoff."""
    while True:
        assert child.proc is not None
        code = await child.proc.wait()
        await _drain(child)
        if run.stop.is_set():
            return
        how = _describe(code)
        if not child.ready.is_set():
            raise ChildFailedToStart(child.spec.name, how, child.tail)
        # Its own children (a clip render) may still run and would race the restarted child for their
        # output files: end its group. Its pid is not reused while the group has members.
        embedded.kill_group(child.proc.pid)
        lived = time.monotonic() - child.started
        if lived >= STABLE_SECONDS:
            child.crashes_in_a_row = 0
        delay = min(run.backoff * 2**child.crashes_in_a_row, MAX_BACKOFF_SECONDS)
        child.crashes_in_a_row += 1
        log.warning(
            "%s %s after %.1f s; restarting it in %.1f s. Its last lines:\n%s",
            child.spec.name,
            how,
            lived,
            delay,
            "\n".join(f"  [{child.spec.name}] {line}" for line in child.tail) or "  (none)",
        )
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.stop.wait(), delay)
                return
            try:
                await _spawn(child, run.sink)
                break
            except ChildFailedToStart as exc:
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
                log.warning("%s; trying again in %.1f s", exc, delay)
        child.restarts += 1
        await _record(run)


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


async def _drain(child: _Child) -> None:
    """Let the pumps copy what the ended child still wrote; give up on pipes a grandchild keeps open."""
    if child.pumps:
        _, late = await asyncio.wait(child.pumps, timeout=_DRAIN_SECONDS)
        for task in late:
            task.cancel()
        await asyncio.gather(*child.pumps, return_exceptions=True)


async def _stop_all(children: Sequence[_Child], watchers: Sequence[asyncio.Task[None]], grace: float) -> None:
    """SIGTERM every running child at once, SIGKILL the group of any left after ``grace`` s; reap all.

    The watchers go first, so nothing is restarted while we stop.
    """
    for watcher in watchers:
        watcher.cancel()
    await asyncio.gather(*watchers, return_exceptions=True)
    running = [c for c in children if c.proc is not None and c.proc.returncode is None]
    for child in running:
        assert child.proc is not None
        with contextlib.suppress(ProcessLookupError):
            child.proc.send_signal(signal.SIGTERM)
    waits = {child: asyncio.create_task(child.proc.wait()) for child in running if child.proc is not None}
    if waits:
        await asyncio.wait(waits.values(), timeout=grace)
    for child, waited in waits.items():
        if not waited.done() and child.proc is not None:
            log.warning(
                "%s (pid %d) did not stop within %.0f s; killing it", child.spec.name, child.proc.pid, grace
            )
            embedded.kill_group(child.proc.pid)
    await asyncio.gather(*waits.values())
    await asyncio.gather(*(_drain(child) for child in children))


async def _record(run: _Run) -> None:
    """Write who runs now to the state file (atomically: readers never see half a file)."""
    if run.state_file is None:
        return
    state = {
        "supervisor": os.getpid(),
        "children": {
            child.spec.name: {
                "pid": child.proc.pid,
                "argv": list(child.spec.argv),
                "restarts": child.restarts,
            }
            for child in run.children
            if child.proc is not None
        },
    }
    await asyncio.to_thread(_write_json, run.state_file, state)


def _write_json(path: Path, payload: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)


def end_leftovers(state_file: Path, *, within: float = 5.0) -> list[int]:
    """End the children a killed run recorded in ``state_file`` that still run; returns their pids.

    On Linux the parent-death signal has already ended them, or is about to (this then waits for them
    to be gone, so their ports are free); elsewhere this is what ends them. A child is only signalled
    when its recorded supervisor is gone and its command line is still the recorded one, so a running
    supervisor's children and a reused pid are never touched.
    """
    try:
        state = json.loads(state_file.read_text())
        supervisor = int(state["supervisor"])
        recorded = {int(entry["pid"]): " ".join(entry["argv"]) for entry in state["children"].values()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
    if supervisor != os.getpid() and embedded.alive(supervisor):
        return []
    leftovers = [
        pid for pid, command in recorded.items() if embedded.alive(pid) and embedded.cmdline(pid) == command
    ]
    for pid in leftovers:
        log.warning("ending pid %d, left running by a killed `reelstream serve`", pid)
        embedded.kill_group(pid)
    deadline = time.monotonic() + within
    while any(embedded.alive(pid) for pid in leftovers) and time.monotonic() < deadline:
        time.sleep(0.02)
    state_file.unlink(missing_ok=True)
    return leftovers
