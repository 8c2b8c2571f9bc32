"""The commands as a user runs them: `reelstream demo`, and every stage and the gateway as its own process."""

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import av
import pytest

from reelstream.embedded import free_port
from schemas.api import DIMENSIONS

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent / "reelstream"
ROOT = Path(__file__).resolve().parents[2]


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
    assert (width, height) == DIMENSIONS["16:9"]
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
    commands = [["gateway"]] + [
        ["stage", n] for n in ("intake", "analysis", "planning", "prompting", "clips", "completion")
    ]
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
        assert (codec, width, height) == ("h264", 480, 832)
        assert seconds == pytest.approx(6, abs=0.1)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
        codes = [await asyncio.wait_for(proc.wait(), 30) for proc in procs]
    assert codes == [0] * len(procs), f"unclean exits: {codes}"


def test_help_lists_the_contract_commands() -> None:
    result = subprocess.run([str(BIN), "--help"], capture_output=True, text=True, env=clean_env(), check=True)
    for command in ("serve", "demo", "generate", "stage", "gateway", "replay", "migrate"):
        assert command in result.stdout, f"{command} missing from --help"


async def test_serve_starts_prints_ready_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    import json
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
    assert set(stack) == {"kafka_bootstrap", "database_url", "gateway_url"}
    async with aiohttp.ClientSession() as session, session.get(f"{stack['gateway_url']}/readyz") as resp:
        assert resp.status == 200

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
