"""run_gateway: serves on a real port until stopped, and says goodbye to WebSockets (1001) on the way out."""

import asyncio
from pathlib import Path

import aiohttp
import asyncpg

from gateway.app import GatewayDeps, run_gateway
from reelstream.embedded import free_port
from reelstream.kafka import Producer
from reelstream.settings import Settings
from reelstream.storage import LocalStorage


async def test_serves_until_stopped_and_closes_websockets_with_1001(
    gw_pool: asyncpg.Pool, gw_producer: Producer, gw_bootstrap: str, tmp_path: Path
) -> None:
    deps = GatewayDeps(
        settings=Settings(data_dir=tmp_path, api_keys=None),
        pool=gw_pool,
        producer=gw_producer,
        kafka_bootstrap=gw_bootstrap,
        storage=LocalStorage(tmp_path / "storage"),
        provider=None,
        webhook_secret="whsec_dGVzdC1zZWNyZXQtdGVzdC1zZWNyZXQ=",
    )
    port = free_port()
    ready, stop = asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(run_gateway(deps, host="127.0.0.1", port=port, ready=ready, stop=stop))
    await asyncio.wait_for(ready.wait(), 30)
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/healthz") as resp:
            assert resp.status == 200
        async with session.post(f"{base}/api/v1/generations", json={"prompt": "Served for real"}) as resp:
            assert resp.status == 202
            gid = (await resp.json())["generation_id"]
        # No provider configured: cancel still works, it only marks the clips.
        other = await (await session.post(f"{base}/api/v1/generations", json={"prompt": "x"})).json()
        async with session.post(f"{base}/api/v1/generations/{other['generation_id']}/cancel") as resp:
            assert resp.status == 202
        ws = await session.ws_connect(f"{base}/ws/generations/{gid}")
        assert (await ws.receive_json())["type"] == "snapshot"
        stop.set()
        msg = await asyncio.wait_for(ws.receive(), 15)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert msg.data == 1001
    await asyncio.wait_for(server, 15)
