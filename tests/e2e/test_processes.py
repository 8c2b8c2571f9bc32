"""The commands as a user runs them: `reelstream demo`, and every stage and the gateway as its own process."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest

from reelstream.embedded import free_port
from schemas.api import DELIVERY_SIZES

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent / "reelstream"
ROOT = Path(__file__).resolve().parents[2]
STAGES = ("intake", "analysis", "planning", "prompting", "clips", "completion")


def probe(path: Path) -> tuple[str, float, int, int]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert container.duration is not None
        return stream.codec_context.name, container.duration / 1_000_000, stream.width, stream.height


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELSTREAM_")}
    env.update(extra)
    return env


async def test_demo_makes_a_video_and_exits_zero(tmp_path: Path) -> None:
    out = tmp_path / "demo.mp4"
    env = clean_env(REELSTREAM_DATA_DIR=str(tmp_path / "data"), REELSTREAM_HTTP_PORT=str(free_port()))
    proc = await asyncio.create_subprocess_exec(
        str(BIN),
        "demo",
        "--out",
        str(out),
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode == 0, stderr.decode()[-3000:]
    assert f"final video: {out}" in stdout.decode()
    codec, seconds, width, height = probe(out)
    assert codec == "h264"
    assert seconds == pytest.approx(10, abs=0.1)
    assert (width, height) == DELIVERY_SIZES[("16:9", "720p")]
    # Everything it started is gone: no stack file, nothing listening on its broker.
    assert not (tmp_path / "data" / "stack.json").exists()


async def test_each_stage_and_the_gateway_as_separate_processes(
    kafka_bootstrap: str, new_database: Callable[[], Awaitable[str]], tmp_path: Path
) -> None:
    database_url = await new_database()
    port = free_port()
    env = clean_env(
        REELSTREAM_KAFKA_BOOTSTRAP=kafka_bootstrap,
        REELSTREAM_DATABASE_URL=database_url,
        REELSTREAM_DATA_DIR=str(tmp_path),
        REELSTREAM_HTTP_PORT=str(port),
        REELSTREAM_KAFKA_SESSION_TIMEOUT_MS="2000",
        REELSTREAM_KAFKA_HEARTBEAT_INTERVAL_MS="500",
    )
    commands = [["gateway"]] + [["stage", n] for n in STAGES]
    procs = [
        await asyncio.create_subprocess_exec(
            str(BIN),
            *cmd,
            env=env,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for cmd in commands
    ]
    try:
        for proc, cmd in zip(procs, commands, strict=True):
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 90)
            assert b"ready" in line, f"{cmd}: {line!r}"
        api = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            body = {
                "prompt": "Neon city skyline at night, fast cuts, electric mood",
                "duration_seconds": 6,
                "aspect_ratio": "9:16",
            }
            async with session.post(f"{api}/api/v1/generations", json=body) as resp:
                assert resp.status == 202
                generation_id = (await resp.json())["generation_id"]
            detail: dict[str, object] = {}
            for _ in range(240):
                async with session.get(f"{api}/api/v1/generations/{generation_id}") as resp:
                    detail = await resp.json()
                if detail["status"] in ("completed", "failed", "canceled"):
                    break
                await asyncio.sleep(0.5)
            assert detail["status"] == "completed", detail
            out = tmp_path / "out.mp4"
            async with session.get(f"{api}/api/v1/generations/{generation_id}/video") as resp:
                assert resp.status == 200
                out.write_bytes(await resp.read())
        codec, seconds, width, height = probe(out)
        assert (codec, width, height) == ("h264", 720, 1280)  # 9:16 at the default 720p
        assert seconds == pytest.approx(6, abs=0.1)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
        codes = [await asyncio.wait_for(proc.wait(), 30) for proc in procs]
    assert codes == [0] * len(procs), f"unclean exits: {codes}"


def test_help_lists_the_contract_commands() -> None:
    result = subprocess.run([str(BIN), "--help"], capture_output=True, text=True, env=clean_env(), check=True)
    for command in (
        "serve",
        "demo",
        "generate",
        "list",
        "show",
        "cancel",
        "estimate",
        "stage",
        "gateway",
        "replay",
        "migrate",
    ):
        assert command in result.stdout, f"{command} missing from --help"


async def test_serve_starts_prints_ready_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    import signal
    import socket

    port = free_port()
    env = clean_env(REELSTREAM_DATA_DIR=str(tmp_path), REELSTREAM_HTTP_PORT=str(port))
    proc = await asyncio.create_subprocess_exec(
        str(BIN),
        "serve",
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    while not any("ready" in line for line in lines):
        line = (await asyncio.wait_for(proc.stdout.readline(), 90)).decode()
        assert line, f"serve exited early: {lines}"
        lines.append(line)
    assert any("kafka bootstrap" in line for line in lines[:-1]), "bootstrap address must come before ready"
    stack = json.loads((tmp_path / "stack.json").read_text())
    assert set(stack) == {"kafka_bootstrap", "database_url", "gateway_url", "metrics"}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{stack['gateway_url']}/readyz") as resp:
            assert resp.status == 200
        # One process each, each with its own /metrics.
        assert set(stack["metrics"]) == {"gateway", *STAGES}
        for url in stack["metrics"].values():
            async with session.get(url) as resp:
                assert resp.status == 200
                assert "reelstream_" in await resp.text()
    children = json.loads((tmp_path / "run" / "children.json").read_text())["children"]
    assert set(children) == {"gateway", *STAGES}
    # The stages run below the gateway's priority (REELSTREAM_STAGE_NICE, 10 by default).
    niceness = {name: os.getpriority(os.PRIO_PROCESS, child["pid"]) for name, child in children.items()}
    assert {niceness[name] - niceness["gateway"] for name in STAGES} == {min(10, 19 - niceness["gateway"])}

    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 60) == 0
    assert not (tmp_path / "stack.json").exists()
    host, broker_port = stack["kafka_bootstrap"].rsplit(":", 1)
    for target in ((host, int(broker_port)), ("127.0.0.1", port)):
        with socket.socket() as sock:
            assert sock.connect_ex(target) != 0, f"{target} still listening after serve stopped"
    postgres_pids = subprocess.run(
        ["pgrep", "-f", str(tmp_path)], capture_output=True, text=True
    ).stdout.split()
    assert postgres_pids == [], "an embedded process outlived serve"
    assert [name for name, child in children.items() if _alive(child["pid"])] == []
    assert not (tmp_path / "run" / "children.json").exists()


def test_serve_on_a_taken_port_says_so_without_a_traceback(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = clean_env(REELSTREAM_DATA_DIR=str(tmp_path), REELSTREAM_HTTP_PORT=str(port))
        result = subprocess.run([str(BIN), "serve"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert "already in use" in result.stderr and "REELSTREAM_HTTP_PORT" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "stack.json").exists()


_PORT_TAKEN_LATE = """
import socket, sys
from reelstream import cli

taken = socket.socket()
taken.bind(("127.0.0.1", int(sys.argv[1])))
taken.listen()
cli._port_free = lambda host, port: True  # taken after serve looked: only its gateway process finds out
sys.argv = ["reelstream", "serve"]
cli.main()
"""


def test_serve_exits_plainly_when_one_of_its_processes_cannot_start(tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(REELSTREAM_DATA_DIR=str(tmp_path), REELSTREAM_HTTP_PORT=str(port))
    result = subprocess.run(
        [sys.executable, "-c", _PORT_TAKEN_LATE, str(port)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "error: gateway exited with code 2 before it was ready" in result.stderr
    said = [line for line in result.stderr.splitlines() if line.startswith("[gateway]")]
    assert any(f"127.0.0.1:{port} is already in use" in line for line in said), said
    assert "Traceback" not in result.stderr + result.stdout
    assert "ready" not in result.stdout
    assert not (tmp_path / "stack.json").exists()
    assert _processes_mentioning(tmp_path) == []  # the stages, broker and Postgres were stopped


# --------------------------------------------------------------------------------------------------
# Stopping and restarting `reelstream serve` with work in flight

#: A generation long enough (13 clips) to keep renders in flight whenever the signal comes.
LONG_GENERATION = {"prompt": "A slow drift over misty mountains at dawn", "duration_seconds": 60}


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs; an unreaped zombie (PID 1 here may reap nothing) does not."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def _children_of(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (embedded services, FFmpeg renders), found through /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return {child for child in found if _alive(child)}


def _embedded_pids(data_dir: Path) -> dict[str, int]:
    """The broker and postmaster as the data dir records them (what the next start would look at)."""
    return {
        "kafka": int((data_dir / "run" / "kafka.pid").read_text().split()[0]),
        "postgres": int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0]),
    }


def _supervised_pids(data_dir: Path) -> dict[str, int]:
    """The gateway and stage processes of a running serve, as its supervisor records them."""
    children = json.loads((data_dir / "run" / "children.json").read_text())["children"]
    return {name: int(child["pid"]) for name, child in children.items()}


def _processes_mentioning(path: Path) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _alive(int(entry.name)):
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(path) in command:
                found.append(command[:200])
    return found


def _time_wait_on(port: int) -> int:
    """Connections in TIME_WAIT (state 06) on local ``port``: what kept a restart off it before."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for line in lines if line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "06")


async def _start_serve(env: dict[str, str], log: Path) -> tuple[asyncio.subprocess.Process, float]:
    """``reelstream serve`` up to its ``ready`` line; returns the process and the seconds it took."""
    started = time.monotonic()
    with open(log, "ab") as stderr:
        proc = await asyncio.create_subprocess_exec(
            str(BIN),
            "serve",
            env=env,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,  # its own process group, as the foreground job of a terminal
        )
    assert proc.stdout is not None
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        if not line:
            code = await proc.wait()
            tail = (await asyncio.to_thread(log.read_text))[-3000:]
            raise AssertionError(f"serve exited with {code} before ready:\n{tail}")
        if "ready" in line:
            return proc, time.monotonic() - started


async def _generation_in_flight(session: aiohttp.ClientSession, api: str) -> str:
    """Submit :data:`LONG_GENERATION` and return its id once its clips are being rendered."""
    async with session.post(f"{api}/api/v1/generations", json=LONG_GENERATION) as resp:
        assert resp.status == 202
        generation_id: str = (await resp.json())["generation_id"]
    detail: dict[str, Any] = {}
    for _ in range(300):
        async with session.get(f"{api}/api/v1/generations/{generation_id}") as resp:
            detail = await resp.json()
        if detail["status"] == "generating":
            return generation_id
        await asyncio.sleep(0.1)
    raise AssertionError(f"no clips in flight: {detail}")


async def _status(api: str, generation_id: str) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{api}/api/v1/generations/{generation_id}") as resp,
    ):
        assert resp.status == 200, await resp.text()
        status: str = (await resp.json())["status"]
        return status


async def _stop(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), 30)


def _interrupt(proc: asyncio.subprocess.Process, how: str) -> None:
    """SIGTERM to serve alone, or Ctrl-C: SIGINT to its whole process group, as a terminal sends it."""
    if how == "Ctrl-C":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
async def test_serve_stops_within_10_s_with_work_in_flight_and_restarts_at_once(
    how: str, tmp_path: Path
) -> None:
    data_dir, log, port = tmp_path / "data", tmp_path / "serve.log", free_port()
    env = clean_env(REELSTREAM_DATA_DIR=str(data_dir), REELSTREAM_HTTP_PORT=str(port))
    api = f"http://127.0.0.1:{port}"
    proc, _ = await _start_serve(env, log)
    try:
        # The session stays open across the signal: the server closes its keep-alive connection, which
        # then sits in TIME_WAIT on the server's port, as after any busy run.
        async with aiohttp.ClientSession() as session:
            generation_id = await _generation_in_flight(session, api)
            children = _children_of(proc.pid)
            assert set(_embedded_pids(data_dir).values()) <= children
            assert set(_supervised_pids(data_dir).values()) <= children  # gateway and stages
            started = time.monotonic()
            _interrupt(proc, how)
            code = await asyncio.wait_for(proc.wait(), 30)
            exit_seconds = time.monotonic() - started
        assert code == 0, (await asyncio.to_thread(log.read_text))[-3000:]
        assert exit_seconds < 10, f"serve took {exit_seconds:.1f} s to stop"
        assert [pid for pid in children if _alive(pid)] == [], "a child outlived serve"
        assert _processes_mentioning(data_dir) == []
        time_wait = _time_wait_on(port)

        again, ready_seconds = await _start_serve(env, log)
        try:
            # Still there, and not failed or canceled by the shutdown: it resumes from Postgres.
            assert await _status(api, generation_id) not in ("failed", "canceled")
        finally:
            assert await _stop(again) == 0
    finally:
        await _stop(proc)
    print(
        f"\n{how} with {len(children)} child processes and a generation in flight: exit 0 after"
        f" {exit_seconds:.2f} s; restart on the same port ({time_wait} connections in TIME_WAIT there)"
        f" ready after {ready_seconds:.2f} s"
    )


async def test_after_a_sigkill_of_serve_nothing_embedded_stays_and_a_restart_works_at_once(
    tmp_path: Path,
) -> None:
    data_dir, log, port = tmp_path / "data", tmp_path / "serve.log", free_port()
    env = clean_env(REELSTREAM_DATA_DIR=str(data_dir), REELSTREAM_HTTP_PORT=str(port))
    api = f"http://127.0.0.1:{port}"
    proc, _ = await _start_serve(env, log)
    try:
        async with aiohttp.ClientSession() as session:
            generation_id = await _generation_in_flight(session, api)
        embedded = _embedded_pids(data_dir)
        supervised = _supervised_pids(data_dir)
        proc.kill()
        await proc.wait()
    finally:
        await _stop(proc)
    killed = time.monotonic()

    async def watch_leftovers() -> dict[str, float]:
        gone: dict[str, float] = {}
        while len(gone) < len(embedded):
            for name, pid in embedded.items():
                if name not in gone and not _alive(pid):
                    gone[name] = time.monotonic() - killed
            await asyncio.sleep(0.01)
        return gone

    watcher = asyncio.create_task(watch_leftovers())
    again, ready_seconds = await _start_serve(env, log)  # at once: the leftovers may still be stopping
    try:
        gone = await asyncio.wait_for(watcher, 1)
        # The gateway and stages of the killed run went with it (parent-death signal): only the new ones run.
        assert [name for name, pid in supervised.items() if _alive(pid)] == []
        assert set(_supervised_pids(data_dir).values()) <= _children_of(again.pid)
        assert await _status(api, generation_id) not in ("failed", "canceled")
    finally:
        watcher.cancel()
        assert await _stop(again) == 0
    # A render of the killed run may still be finishing its clip: FFmpeg is no embedded service.
    assert [command for command in _processes_mentioning(data_dir) if "ffmpeg" not in command] == []
    print(
        f"\nSIGKILL of serve: broker gone after {gone['kafka']:.2f} s,"
        f" Postgres after {gone['postgres']:.2f} s; the immediate restart on the same port"
        f" ready after {ready_seconds:.2f} s"
    )


def test_the_port_check_lets_time_wait_through_but_not_a_listener() -> None:
    from reelstream.cli import _port_free

    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        assert not _port_free("127.0.0.1", port)
        accepted.close()  # the server side closes first: its end goes to TIME_WAIT
        client.close()
    deadline = time.monotonic() + 5
    while _time_wait_on(port) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _time_wait_on(port) > 0
    assert _port_free("127.0.0.1", port)
