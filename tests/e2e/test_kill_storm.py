"""The kill storm: orders in flight survive SIGKILLs of stage processes and of the whole embedded stack.

Real processes throughout: ``reelstream serve`` (embedded tansu with memory storage, so a restart loses
every message and offset; embedded Postgres, which keeps the orders; the gateway and each stage as its
own process, which serve's supervisor restarts when it dies), extra ``reelstream stage NAME``
processes that join the stages' consumer groups beside it, and a Replicate-compatible server in this
process that counts every prediction it is asked to make. What a customer checks afterwards: every
order completed with a valid video, and every clip was paid for once.
"""

import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
from fake_replicate import WAN_22_T2V_FAST, FakeReplicate

from reelstream.embedded import free_port
from reelstream.providers import parse_marker

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent / "reelstream"
ROOT = Path(__file__).resolve().parents[2]
STAGES = ("intake", "analysis", "planning", "prompting", "clips", "completion")
JOBS = 30


class Proc:
    """A ``reelstream`` command as a child process; ``start`` returns once it printed ``ready``."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.args = args
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 90) -> "Proc":
        self.proc = await asyncio.create_subprocess_exec(
            str(BIN),
            *self.args,
            env=self.env,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        ready = asyncio.Event()
        self._reader = asyncio.create_task(self._read(ready))
        await asyncio.wait(
            [asyncio.create_task(ready.wait()), self._reader], timeout=timeout, return_when="FIRST_COMPLETED"
        )
        assert ready.is_set(), f"{self.args} did not get ready: {self.lines[-5:]}"
        return self

    async def _read(self, ready: asyncio.Event) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(line.decode(errors="replace").rstrip())
            if "ready" in self.lines[-1]:
                ready.set()

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    async def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        return self.proc.returncode


@pytest.fixture
async def replicate() -> AsyncIterator[FakeReplicate]:
    # Predictions take ~1.5 s, so kills land while clips are rendering, downloading and assembling.
    server = await FakeReplicate(render_delay=1.5, max_render_seconds=1.0).start()
    try:
        yield server
    finally:
        await server.stop()


def environment(data_dir: Path, port: int, replicate: FakeReplicate) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELSTREAM_")}
    env.update(
        REELSTREAM_DATA_DIR=str(data_dir),
        REELSTREAM_HTTP_PORT=str(port),
        REELSTREAM_REPLICATE_API_TOKEN=replicate.token,
        REELSTREAM_REPLICATE_BASE_URL=replicate.base_url,
        REELSTREAM_REPLICATE_MODEL=WAN_22_T2V_FAST,
        REELSTREAM_REPLICATE_WEBHOOK_SECRET=replicate.secret,
        REELSTREAM_REPLICATE_TIMEOUT_SECONDS="2",
        REELSTREAM_STORAGE_ALLOW_PRIVATE_URLS="true",  # the fake's outputs are on 127.0.0.1
        REELSTREAM_PREDICTION_POLL_SECONDS="2",
        REELSTREAM_RECONCILE_SECONDS="3",
        REELSTREAM_RATE_LIMIT_PER_MINUTE="10000",
        REELSTREAM_KAFKA_SESSION_TIMEOUT_MS="2000",
        REELSTREAM_KAFKA_HEARTBEAT_INTERVAL_MS="500",
        REELSTREAM_LOG_LEVEL="WARNING",
    )
    return env


async def submit_all(api: str) -> list[str]:
    ids = []
    async with aiohttp.ClientSession() as session:
        for n in range(JOBS):
            body = {
                "prompt": f"Order {n}: a lighthouse keeper's morning, warm light, calm sea",
                "duration_seconds": 5 if n % 2 else 10,
                "aspect_ratio": "16:9",
                # The storm is about durability: 480p keeps each order's encoding work what it was
                # before the 720p default (the finished-ad tests cover every delivery size).
                "options": {"resolution": "480p"},
            }
            async with session.post(f"{api}/api/v1/generations", json=body) as resp:
                assert resp.status == 202, await resp.text()
                ids.append((await resp.json())["generation_id"])
    return ids


async def details(api: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        out = {}
        for generation_id in ids:
            async with session.get(f"{api}/api/v1/generations/{generation_id}") as resp:
                assert resp.status == 200, await resp.text()
                out[generation_id] = await resp.json()
        return out


def supervised(data_dir: Path) -> dict[str, dict[str, Any]]:
    """serve's own gateway and stage processes as its supervisor records them: name → pid, restarts."""
    state = json.loads((data_dir / "run" / "children.json").read_text())
    children: dict[str, dict[str, Any]] = state["children"]
    return children


async def kill_supervised(data_dir: Path, name: str, api: str) -> None:
    """SIGKILL serve's own process ``name`` and wait until its supervisor has started it again."""
    before = supervised(data_dir)[name]
    os.kill(before["pid"], signal.SIGKILL)
    async with asyncio.timeout(30):
        while True:
            now = supervised(data_dir)[name]
            if now["pid"] != before["pid"]:
                break
            await asyncio.sleep(0.05)
        assert now["restarts"] == before["restarts"] + 1
        if name == "gateway":  # the orders are read through it: wait until it answers again
            async with aiohttp.ClientSession() as session:
                while True:
                    try:
                        async with session.get(f"{api}/readyz") as resp:
                            if resp.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.1)


async def test_kill_storm_every_order_completes_and_every_clip_is_paid_once(
    tmp_path: Path, replicate: FakeReplicate
) -> None:
    started = time.monotonic()
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    data_dir = tmp_path / "data"
    env = environment(data_dir, port, replicate)
    serve = await Proc("serve", env=env).start()
    extras: dict[str, Proc] = {}
    stage_kills: Counter[str] = Counter()
    own_kills: Counter[str] = Counter()
    serve_kills = 0
    try:
        ids = await submit_all(api)
        # Stage processes beside serve's own: each joins its stage's group, takes partitions, is killed.
        # The second round hits serve's own process of each stage instead, which its supervisor restarts;
        # then serve's gateway, while orders are in flight.
        for name in STAGES:
            extras[name] = await Proc("stage", name, env=env).start()
        for n in range(12):
            name = STAGES[n % len(STAGES)]
            if n >= len(STAGES):
                await kill_supervised(data_dir, name, api)
                own_kills[name] += 1
            else:
                await extras[name].kill()
                stage_kills[name] += 1
                extras[name] = await Proc("stage", name, env=env).start()
            await asyncio.sleep(0.3)
        await kill_supervised(data_dir, "gateway", api)
        own_kills["gateway"] += 1
        restarts = {name: child["restarts"] for name, child in supervised(data_dir).items()}
        assert restarts == {name: own_kills[name] for name in restarts}, restarts
        # The whole embedded stack, twice: the broker's topics and offsets are gone after each.
        for pause in (1.0, 2.5):
            for proc in extras.values():
                await proc.kill()
            extras.clear()
            await serve.kill()
            serve_kills += 1
            serve = await Proc("serve", env=env).start()
            await asyncio.sleep(pause)

        async with asyncio.timeout(240):
            while True:
                found = await details(api, ids)
                if all(d["status"] in ("completed", "failed", "canceled") for d in found.values()):
                    break
                await asyncio.sleep(1.0)
    finally:
        for proc in extras.values():
            await proc.kill()
        exit_code = await serve.stop()

    elapsed = time.monotonic() - started
    statuses = Counter(d["status"] for d in found.values())
    planned = sum(len(d["clips"]) for d in found.values())
    markers = Counter(
        parse_marker(p["webhook"].rsplit("marker=", 1)[1]) for p in replicate.predictions.values()
    )
    failed_predictions = sum(p["status"] in ("failed", "aborted") for p in replicate.predictions.values())
    downloads = sum(replicate.file_gets.values())
    own_stage_kills = sum(own_kills[name] for name in STAGES)
    print(
        f"\nkill storm: {JOBS} orders, {sum(stage_kills.values()) + own_stage_kills} stage SIGKILLs"
        f" ({sum(stage_kills.values())} of extra processes, {own_stage_kills} of serve's own) and"
        f" {own_kills['gateway']} of serve's gateway; serve's supervisor restarted its processes"
        f" {sum(restarts.values())} times; {serve_kills} serve SIGKILLs; {dict(statuses)} in {elapsed:.0f}s;"
        f" predictions created {len(replicate.predictions)} for {planned} clips planned"
        f" (+{failed_predictions} failed); duplicate submissions"
        f" {sum(n - 1 for n in markers.values())}; output downloads {downloads}"
    )
    assert statuses == {"completed": JOBS}, {g: d["error"] for g, d in found.items() if d["error"]}
    assert len(replicate.predictions) == planned + failed_predictions
    assert all(n == 1 for n in markers.values()), "a clip attempt was paid twice"
    if not failed_predictions:  # nothing really failed, so nothing was made again
        assert all(c["attempts"] == 1 for d in found.values() for c in d["clips"])
    assert exit_code == 0

    storage = tmp_path / "data" / "storage" / "generations"
    for generation_id, detail in found.items():
        clip_files = sorted(p.name for p in (storage / generation_id / "clips").iterdir())
        assert clip_files == sorted(f"{c['clip_id']}.mp4" for c in detail["clips"])
        with av.open(str(storage / generation_id / "final.mp4")) as container:
            assert container.streams.video[0].codec_context.name == "h264"
            assert container.duration is not None
            assert abs(container.duration / 1_000_000 - detail["duration_seconds"]) < 0.1
