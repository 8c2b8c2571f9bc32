"""A callback from the whole pipeline: an order with ``options.callback_url`` completes, and a receiver on a
local port gets one ``generation.completed``, verified with the secret ``reelstream callback-secret``
prints (the one generated into the data dir), carrying the finished detail."""

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from reelstream import embedded

from .conftest import Stack, running_stack, stack_settings

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
async def stack(
    kafka_bootstrap: str, new_database: Callable[[], Awaitable[str]], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    settings = stack_settings(
        tmp_path_factory.mktemp("callbacks"),
        kafka_bootstrap,
        await new_database(),
        storage_allow_private_urls=True,  # the receiver is on 127.0.0.1
        callback_poll_seconds=0.2,
    )
    async with running_stack(settings) as running:
        yield running


def _printed_secret(data_dir: Path) -> str:
    env = {**os.environ, "REELSTREAM_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)}
    env.pop("REELSTREAM_CALLBACK_SECRET", None)
    out = subprocess.run(
        [sys.executable, "-m", "reelstream.cli", "callback-secret"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip()


async def test_a_completed_generation_calls_back_once_signed(stack: Stack) -> None:
    received: list[tuple[dict[str, str], bytes]] = []
    arrived = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        received.append(({k.lower(): v for k, v in request.headers.items()}, await request.read()))
        arrived.set()
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = embedded.free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        body: dict[str, Any] = {
            "prompt": "Fresh lemonade on a sunny porch",
            "duration_seconds": 5,
            "options": {"callback_url": f"http://127.0.0.1:{port}/hook"},
        }
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{stack.url}/api/v1/generations", json=body) as resp:
                assert resp.status == 202, await resp.text()
                generation_id = (await resp.json())["generation_id"]
            async with asyncio.timeout(240):
                await arrived.wait()
            await asyncio.sleep(1.0)  # a few more sweep rounds: it is not sent again
            async with session.get(f"{stack.url}/api/v1/generations/{generation_id}") as resp:
                detail = await resp.json()
    finally:
        await runner.cleanup()

    assert len(received) == 1
    headers, raw = received[0]
    Webhook(await asyncio.to_thread(_printed_secret, stack.settings.data_dir)).verify(raw, headers)
    payload = json.loads(raw)
    assert payload["type"] == "generation.completed"
    sent = payload["generation"]
    assert sent["generation_id"] == generation_id and sent["status"] == "completed"
    assert sent["video"]["url"] == f"/api/v1/generations/{generation_id}/video"
    assert sent["cost"]["compute_seconds"] is not None
    [shown] = detail["callbacks"]
    assert shown["event"] == "generation.completed" and shown["attempts"] == 1 and shown["last_status"] == 200
    assert shown["delivered_at"] is not None
