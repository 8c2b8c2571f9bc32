"""run_gateway: serves on a real port until stopped, and says goodbye to WebSockets (1001) on the way out."""

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from gateway_harness import RecordingProvider

from gateway.app import GatewayDeps, run_gateway
from reelstream import db, service
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


async def test_the_gateway_has_a_pool_of_its_own(
    gw_databases: Any, gw_producer: Producer, gw_bootstrap: str, tmp_path: Path
) -> None:
    """Every connection of the stages' pool busy (a burst of stage work): the API still answers."""
    url = await gw_databases.create()
    stages_pool = await db.create_pool(url, min_size=1, max_size=1)
    held = await stages_pool.acquire()
    settings = Settings(
        data_dir=tmp_path,
        api_keys=None,
        database_url=url,
        kafka_bootstrap=gw_bootstrap,
        http_port=free_port(),
        gateway_db_pool_max_size=2,
    )
    deps = service.Deps(settings, LocalStorage(tmp_path / "storage"), RecordingProvider())
    ready, stop = asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(
        service.run_gateway_task(settings, stages_pool, gw_producer, deps, ready, stop)
    )
    try:
        await asyncio.wait_for(ready.wait(), 30)
        base = f"http://127.0.0.1:{settings.http_port}"
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.post(f"{base}/api/v1/generations", json={"prompt": "Own pool"}) as resp:
                assert resp.status == 202
                gid = (await resp.json())["generation_id"]
            async with session.get(f"{base}/api/v1/generations") as resp:
                assert resp.status == 200
            async with session.post(f"{base}/api/v1/generations/{gid}/cancel") as resp:
                assert resp.status == 202
    finally:
        stop.set()
        await asyncio.wait_for(server, 15)
        await stages_pool.release(held)
        await stages_pool.close()
