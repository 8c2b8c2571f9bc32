"""The process supervisor of ``reelstream serve``, with tiny Python scripts as its children."""

import asyncio
import io
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from reelstream import supervisor
from reelstream.supervisor import ChildFailedToStart, ChildSpec


def child(name: str, script: str, *args: str) -> ChildSpec:
    return ChildSpec(name, [sys.executable, "-c", textwrap.dedent(script), *args])


#: Says hello on both pipes, then ready, then waits to be stopped.
GREETER = """
    import sys, time
    print("hello from", sys.argv[1], flush=True)
    print("a warning from", sys.argv[1], file=sys.stderr, flush=True)
    print("ready", flush=True)
    time.sleep(60)
"""


def gone(pid: int) -> bool:
    """True once ``pid`` has ended (a zombie nobody reaped counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state == "Z"


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def recorded(state_file: Path) -> dict[str, dict[str, Any]]:
    """The children as the supervisor's state file has them now (name → pid, argv, restarts)."""
    try:
        children: dict[str, dict[str, Any]] = json.loads(state_file.read_text())["children"]
    except (OSError, ValueError):
        return {}
    return children


async def run_until(
    specs: list[ChildSpec],
    then: Callable[[], Awaitable[None]],
    out: io.StringIO | None = None,
    *,
    state_file: Path | None = None,
    grace: float = supervisor.STOP_GRACE_SECONDS,
    backoff: float = supervisor.BACKOFF_SECONDS,
    ready_lines: dict[str, str] | None = None,
) -> io.StringIO:
    """Supervise ``specs``; once all are ready run ``then``, then stop. Returns what the children said."""
    out = out if out is not None else io.StringIO()
    stop = asyncio.Event()

    async def on_ready() -> None:
        async def later() -> None:
            try:
                await then()
            finally:
                stop.set()

        tasks.append(asyncio.create_task(later()))

    tasks: list[asyncio.Task[None]] = []
    await asyncio.wait_for(
        supervisor.supervise(
            specs,
            stop=stop,
            on_ready=on_ready,
            out=out,
            state_file=state_file,
            grace=grace,
            backoff=backoff,
            ready_lines=ready_lines,
        ),
        60,
    )
    for task in tasks:
        await task  # re-raise what the test body asserted
    return out


async def test_output_is_prefixed_per_child_and_on_ready_waits_for_every_child() -> None:
    seen_ready: list[str] = []

    async def then() -> None:
        seen_ready.append("called")

    specs = [child("gateway", GREETER, "gateway"), child("clips", GREETER, "clips")]
    ready_lines: dict[str, str] = {}
    out = await run_until(specs, then, ready_lines=ready_lines)
    lines = out.getvalue().splitlines()
    for name in ("gateway", "clips"):
        assert f"[{name}] hello from {name}" in lines
        assert f"[{name}] a warning from {name}" in lines  # stderr too
        assert f"[{name}] ready" in lines
    assert seen_ready == ["called"]
    assert ready_lines == {"gateway": "ready", "clips": "ready"}  # what serve reads metrics URLs from


async def test_a_child_runs_at_the_niceness_it_was_given_above_ours() -> None:
    """``serve`` runs the stages below the gateway's priority (REELSTREAM_STAGE_NICE)."""
    report = """
        import os, time
        print("niceness", os.nice(0), flush=True)
        print("ready", flush=True)
        time.sleep(60)
    """

    async def then() -> None:
        pass

    specs = [child("gateway", report), ChildSpec("intake", child("intake", report).argv, nice=7)]
    out = await run_until(specs, then)
    ours = os.nice(0)
    lines = out.getvalue().splitlines()
    assert f"[gateway] niceness {ours}" in lines
    assert f"[intake] niceness {min(ours + 7, 19)}" in lines


async def test_a_crashed_child_is_restarted_after_a_growing_backoff_and_its_crash_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """First run: ready, then exit 3. Second: ready, then it is SIGKILLed. Third: stays up."""
    script = """
        import os, sys, time
        runs = os.path.join(sys.argv[1], "runs")
        with open(runs, "a") as f:
            f.write("x")
        print("ready", flush=True)
        if os.path.getsize(runs) == 1:
            print("something went wrong", file=sys.stderr, flush=True)
            sys.exit(3)
        time.sleep(60)
    """
    state_file = tmp_path / "children.json"

    runs = tmp_path / "runs"
    out = io.StringIO()

    async def then() -> None:
        await until(lambda: runs.read_text() == "xx")  # restarted, and running
        pid = recorded(state_file)["flaky"]["pid"]
        assert recorded(state_file)["flaky"]["restarts"] == 1
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        await until(lambda: out.getvalue().count("[flaky] ready") == 3)
        assert time.monotonic() - killed >= 0.4  # the second crash in a row waits twice as long
        assert recorded(state_file)["flaky"]["restarts"] == 2

    caplog.set_level(logging.WARNING, logger="reelstream.supervisor")
    started = time.monotonic()
    await run_until(
        [child("flaky", script, str(tmp_path)), child("steady", GREETER, "steady")],
        then,
        out,
        backoff=0.2,
        state_file=state_file,
    )
    assert time.monotonic() - started >= 0.6
    crashes = [r.getMessage() for r in caplog.records if "restarting it" in r.getMessage()]
    assert len(crashes) == 2, crashes
    assert crashes[0].startswith("flaky exited with code 3 after")
    assert "restarting it in 0.2 s" in crashes[0]
    assert "[flaky] something went wrong" in crashes[0]  # its last lines
    assert crashes[1].startswith("flaky was killed by SIGKILL after")
    assert "restarting it in 0.4 s" in crashes[1]
    assert "something went wrong" not in crashes[1]  # the lines of that run only
    assert runs.read_text() == "xxx"
    assert out.getvalue().count("[steady] ready") == 1  # the others are left alone
    assert not state_file.exists()  # withdrawn when the supervisor stops


async def test_stop_terms_every_child_at_once_then_kills_the_group_of_a_straggler(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    polite = """
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *_: (print("bye", flush=True), sys.exit(0)))
        print("ready", flush=True)
        time.sleep(60)
    """
    stubborn = """
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print("helper", helper.pid, flush=True)
        print("ready", flush=True)
        time.sleep(60)
    """
    state_file = tmp_path / "children.json"
    pids: dict[str, int] = {}

    async def then() -> None:
        pids.update({name: int(entry["pid"]) for name, entry in recorded(state_file).items()})

    caplog.set_level(logging.WARNING, logger="reelstream.supervisor")
    stopping = time.monotonic()
    out = await run_until(
        [child("polite", polite), child("stubborn", stubborn)], then, grace=1.0, state_file=state_file
    )
    took = time.monotonic() - stopping
    helper = int(next(line for line in out.getvalue().splitlines() if "helper" in line).split()[-1])
    # Everything is gone when supervise returns: the caller stops the broker and Postgres only then.
    assert all(gone(pid) for pid in [*pids.values(), helper])
    assert "[polite] bye" in out.getvalue()  # it was asked, and answered at once
    assert took < 5
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("stubborn (pid") and "did not stop within 1 s; killing it" in m for m in messages)
    assert not any(m.startswith("polite") for m in messages)


async def test_a_child_that_cannot_start_stops_the_others_and_fails_plainly(tmp_path: Path) -> None:
    broken = """
        import sys
        print("error: 127.0.0.1:8080 is already in use", file=sys.stderr, flush=True)
        sys.exit(2)
    """
    state_file = tmp_path / "children.json"
    out = io.StringIO()
    with pytest.raises(ChildFailedToStart) as failed:
        await asyncio.wait_for(
            supervisor.supervise(
                [child("steady", GREETER, "steady"), child("gateway", broken)],
                stop=asyncio.Event(),
                out=out,
                state_file=state_file,
            ),
            30,
        )
    assert str(failed.value) == "gateway exited with code 2 before it was ready"
    assert failed.value.tail == ["error: 127.0.0.1:8080 is already in use"]
    assert "[gateway] error: 127.0.0.1:8080 is already in use" in out.getvalue()
    assert not state_file.exists()


async def test_a_missing_program_fails_plainly() -> None:
    with pytest.raises(ChildFailedToStart, match="could not be started"):
        await supervisor.supervise(
            [ChildSpec("ghost", ["/nonexistent/reelstream"])], stop=asyncio.Event(), out=io.StringIO()
        )


async def test_a_stop_before_anything_started_starts_nothing() -> None:
    stop = asyncio.Event()
    stop.set()
    out = io.StringIO()
    await supervisor.supervise([child("gateway", GREETER, "gateway")], stop=stop, out=out)
    assert out.getvalue() == ""


_SUPERVISOR_SCRIPT = """
import asyncio, sys
from pathlib import Path
from reelstream import supervisor

stubborn = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
    " print('ready', flush=True); time.sleep(60)"
)
specs = [supervisor.ChildSpec(f"c{n}", [sys.executable, "-c", stubborn]) for n in range(3)]

async def main():
    async def on_ready():
        print("all ready", flush=True)
    await supervisor.supervise(specs, stop=asyncio.Event(), on_ready=on_ready, state_file=Path(sys.argv[1]))

asyncio.run(main())
"""


async def test_no_child_outlives_a_killed_supervisor(tmp_path: Path) -> None:
    state_file = tmp_path / "children.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SUPERVISOR_SCRIPT, str(state_file), stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"all ready\n"
    pids = [int(entry["pid"]) for entry in recorded(state_file).values()]
    assert len(pids) == 3 and not any(gone(pid) for pid in pids)
    proc.kill()
    await proc.wait()
    killed = time.monotonic()
    await until(lambda: all(gone(pid) for pid in pids), within=5)  # they ignore SIGTERM: this is SIGKILL
    print(f"\nchildren of a SIGKILLed supervisor gone after {time.monotonic() - killed:.3f} s")


def test_end_leftovers_ends_what_a_killed_run_recorded_and_nothing_else(tmp_path: Path) -> None:
    def sleeper() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], process_group=0)

    leftover, stranger, live_supervisor = sleeper(), sleeper(), sleeper()
    dead_supervisor = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_supervisor.wait()
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    state_file = tmp_path / "children.json"

    def record(supervisor_pid: int) -> None:
        state_file.write_text(
            json.dumps(
                {
                    "supervisor": supervisor_pid,
                    "children": {
                        "clips": {"pid": leftover.pid, "argv": argv, "restarts": 0},
                        "intake": {"pid": stranger.pid, "argv": ["something", "else"], "restarts": 0},
                    },
                }
            )
        )

    try:
        record(live_supervisor.pid)  # its supervisor still runs: they are not leftovers
        assert supervisor.end_leftovers(state_file) == []
        assert leftover.poll() is None and state_file.exists()

        record(dead_supervisor.pid)
        assert supervisor.end_leftovers(state_file) == [leftover.pid]
        assert leftover.wait(5) == -signal.SIGKILL
        assert stranger.poll() is None  # its pid now runs another command: never signalled
        assert not state_file.exists()
        assert supervisor.end_leftovers(state_file) == []  # no file: nothing to do
    finally:
        for proc in (leftover, stranger, live_supervisor):
            proc.kill()
            proc.wait()
