"""The API from the shell: the real ``reelstream`` console script against a live stack with API keys."""

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import av
import pytest
import pytest_asyncio
from tcp_proxy import TcpProxy

from reelstream.embedded import free_port

from .conftest import Stack, running_stack, stack_settings

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent / "reelstream"
KEY = f"cli-key-{uuid.uuid4().hex}"
BRAND = {
    "name": "Tidewater",
    "colors": ["#004E64", "#F7B801"],
    "fonts": ["Inter"],
    "tone": "calm",
    "guidelines": {"dont": ["cheap"], "required_disclaimer": "Tides vary."},
}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def keyed_stack(
    kafka_bootstrap: str, new_database: Callable[[], Awaitable[str]], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    settings = stack_settings(
        tmp_path_factory.mktemp("cli-stack"), kafka_bootstrap, await new_database(), api_keys=KEY
    )
    async with running_stack(settings) as running:
        yield running


def env(tmp_path: Path, key: str | None = KEY) -> dict[str, str]:
    """The user's environment: no stack settings, no stack.json nearby, the key if given."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REELSTREAM_")}
    clean["REELSTREAM_DATA_DIR"] = str(tmp_path / "no-stack-here")
    if key is not None:
        clean["REELSTREAM_API_KEY"] = key
    return clean


async def run(*args: str, environ: dict[str, str], timeout: float = 240) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(BIN),
        *args,
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    assert "Traceback" not in stderr.decode(), stderr.decode()
    return proc.returncode, stdout.decode(), stderr.decode()


def probe_seconds(path: Path) -> float:
    with av.open(str(path)) as container:
        assert container.duration is not None and container.streams.video
        return container.duration / 1_000_000


async def test_each_command_and_its_errors(keyed_stack: Stack, tmp_path: Path) -> None:
    api = keyed_stack.url
    environ = env(tmp_path)
    brand = tmp_path / "brand.json"
    brand.write_text(json.dumps(BRAND))

    code, out, _ = await run(
        "estimate",
        "Kayaks at dawn",
        "--duration",
        "5",
        "--brand",
        str(brand),
        "--api",
        api,
        "--json",
        environ=environ,
    )
    assert code == 0
    planned = json.loads(out)
    assert planned["duration_seconds"] == 5 and planned["clips"]
    code, out, _ = await run("estimate", "Kayaks at dawn", "--duration", "5", "--api", api, environ=environ)
    assert code == 0 and f"{len(planned['clips'])} clip(s)" in out

    video = tmp_path / "kayaks.mp4"
    code, out, err = await run(
        "generate",
        "Kayaks at dawn on a glassy bay, for a paddle-sports shop",
        "--duration",
        "5",
        "--aspect-ratio",
        "1:1",
        "--brand",
        str(brand),
        "--api",
        api,
        "--out",
        str(video),
        "--json",
        environ=environ,
    )
    assert code == 0, err
    detail = json.loads(out)
    assert detail["status"] == "completed" and detail["brand"]["name"] == "Tidewater"
    assert detail["brand"]["guidelines"]["required_disclaimer"] == "Tides vary."
    assert probe_seconds(video) == pytest.approx(5, abs=0.1)
    done = detail["generation_id"]

    # A second one, canceled while `generate` follows it: generate exits 1 and says so.
    follower = await asyncio.create_subprocess_exec(
        str(BIN),
        "generate",
        "A long drive through the desert",
        "--duration",
        "60",
        "--api",
        api,
        "--out",
        str(tmp_path / "never.mp4"),
        "--json",
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert follower.stderr is not None
    first = (await asyncio.wait_for(follower.stderr.readline(), 60)).decode()
    running = first.split()[1]
    assert running.startswith("gen_"), first
    code, out, err = await run("cancel", running, "--api", api, environ=environ)
    assert code == 0 and f"{running} canceled" in out, err
    stdout, stderr = await asyncio.wait_for(follower.communicate(), 60)
    assert follower.returncode == 1, stderr.decode()
    assert "canceled" in stderr.decode() and json.loads(stdout)["status"] == "canceled"
    assert not (tmp_path / "never.mp4").exists()

    code, _, err = await run("cancel", done, "--api", api, environ=environ)
    assert code == 1 and "already ended" in err

    code, out, _ = await run("show", done, "--api", api, environ=environ)
    assert (
        code == 0 and "completed" in out and "Tidewater" in out and f"/api/v1/generations/{done}/video" in out
    )
    code, out, _ = await run("show", running, "--api", api, "--json", environ=environ)
    assert code == 0 and json.loads(out)["status"] == "canceled"

    # The stack shares its broker with other tests and may hold orders that are not ours: compare the
    # pages with each other rather than count.
    code, out, _ = await run("list", "--api", api, "--json", environ=environ)
    listed = [i["generation_id"] for i in json.loads(out)["items"]]
    assert code == 0 and listed.index(running) < listed.index(done)  # newest first
    code, out, _ = await run("list", "--status", "completed", "--api", api, environ=environ)
    assert code == 0 and done in out and running not in out
    assert out.splitlines()[0].split("\t")[:2] == ["generation", "status"]  # a pipe gets tab-separated lines
    code, out, _ = await run("list", "--limit", "1", "--api", api, environ=environ)
    assert code == 0 and listed[0] in out and listed[1] not in out
    more = out.strip().splitlines()[-1]
    assert more.startswith("more: reelstream list --cursor ")
    code, out, _ = await run(
        "list", "--limit", "1", "--cursor", more.split()[-1], "--api", api, environ=environ
    )
    assert code == 0 and listed[1] in out and listed[0] not in out

    # The error exits: wrong key, unknown id, unreachable server, bad brand file, bad input.
    code, _, err = await run("list", "--api", api, environ=env(tmp_path, key="not-the-key"))
    assert code == 4 and "API key was refused" in err
    code, _, err = await run("show", f"gen_{'0' * 32}", "--api", api, environ=environ)
    assert code == 5 and "not_found" in err
    code, _, err = await run("list", "--api", f"http://127.0.0.1:{free_port()}", environ=environ)
    assert code == 3 and "cannot reach the server" in err
    brand.write_text(json.dumps({**BRAND, "colors": ["#004E64", "teal"]}))
    code, _, err = await run("generate", "x", "--brand", str(brand), "--api", api, environ=environ)
    assert code == 2 and "colors.1" in err
    code, _, err = await run("estimate", "x", "--duration", "500", "--api", api, environ=environ)
    assert code == 1 and "duration_seconds" in err


async def test_generate_reconnects_when_the_connection_drops(keyed_stack: Stack, tmp_path: Path) -> None:
    proxy = await TcpProxy.for_url(keyed_stack.url).start()
    try:
        video = tmp_path / "reconnected.mp4"
        proc = await asyncio.create_subprocess_exec(
            str(BIN),
            "generate",
            "Lanterns rising over a river festival",
            "--duration",
            "10",
            "--api",
            f"http://127.0.0.1:{proxy.port}",
            "--out",
            str(video),
            env=env(tmp_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stderr is not None
        await asyncio.wait_for(proc.stderr.readline(), 60)  # "generation gen_... queued"
        await asyncio.sleep(0.3)  # the WebSocket is open
        await proxy.cut()  # the socket drops, and for a while nothing answers at all
        await asyncio.sleep(2)
        await proxy.restore()
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 240)
        assert proc.returncode == 0, stderr.decode()
        assert "reconnecting" in stderr.decode()
        assert stdout.decode().strip() == str(video.resolve())
        assert probe_seconds(video) == pytest.approx(10, abs=0.1)
    finally:
        await proxy.stop()
