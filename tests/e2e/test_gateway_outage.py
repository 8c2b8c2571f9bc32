"""Orders taken while Postgres is away are all finished once it is back: nothing stranded.

The whole embedded stack (every stage, the gateway, the local renderer) on real tansu and the real
Postgres, with the stack's database URL going through a :class:`TcpProxy`. The link is cut for ~20 s
(connections refused, as when the server is down); orders posted meanwhile are answered 202 and
readable from the gateway's memory; after the restore every one of them completes with a valid video.
"""

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
from tcp_proxy import TcpProxy

from schemas.api import DELIVERY_SIZES, TERMINAL

from .conftest import running_stack, stack_settings

pytestmark = pytest.mark.slow

OUTAGE_SECONDS = 20.0
ORDERS = (("16:9", 5), ("9:16", 6), ("1:1", 5))


def probe(path: Path) -> tuple[str, float, int, int]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert container.duration is not None
        return stream.codec_context.name, container.duration / 1_000_000, stream.width, stream.height


async def _wait_terminal(session: aiohttp.ClientSession, url: str, generation_id: str) -> dict[str, Any]:
    async with asyncio.timeout(240):
        while True:
            async with session.get(f"{url}/api/v1/generations/{generation_id}") as resp:
                if resp.status == 200:
                    detail: dict[str, Any] = await resp.json()
                    if detail["status"] in TERMINAL:
                        return detail
            await asyncio.sleep(0.5)


@pytest.mark.parametrize("mode", ["refuse", "blackhole"])
async def test_orders_taken_during_a_database_outage_all_complete(
    kafka_bootstrap: str, database_url: str, tmp_path: Path, mode: str
) -> None:
    proxy = await TcpProxy.for_url(database_url).start()
    settings = stack_settings(tmp_path / "stack", kafka_bootstrap, proxy.url(database_url))
    try:
        async with running_stack(settings) as stack, aiohttp.ClientSession() as session:
            await proxy.cut(mode)  # type: ignore[arg-type]
            cut_at = time.monotonic()
            posted: dict[str, tuple[str, int]] = {}
            answer_seconds: list[float] = []
            for i, (aspect, duration) in enumerate(ORDERS):
                await asyncio.sleep(max(0.0, cut_at + i * OUTAGE_SECONDS / 4 - time.monotonic()))
                body = {
                    "prompt": f"Order {i}: fresh lemonade on a sunny porch, ice clinking, smiles",
                    "duration_seconds": duration,
                    "aspect_ratio": aspect,
                }
                started = time.monotonic()
                async with session.post(f"{stack.url}/api/v1/generations", json=body) as resp:
                    assert resp.status == 202, await resp.text()
                    generation_id = (await resp.json())["generation_id"]
                answer_seconds.append(time.monotonic() - started)
                posted[generation_id] = (aspect, duration)
                async with session.get(f"{stack.url}/api/v1/generations/{generation_id}") as resp:
                    assert resp.status == 200, await resp.text()
                    assert (await resp.json())["status"] == "queued"
            async with session.get(f"{stack.url}/readyz") as resp:
                assert resp.status == 503
            await asyncio.sleep(max(0.0, cut_at + OUTAGE_SECONDS - time.monotonic()))
            await proxy.restore()
            restored_at = time.monotonic()
            outage = restored_at - cut_at

            details = await asyncio.gather(*(_wait_terminal(session, stack.url, g) for g in posted))
            finished = time.monotonic() - restored_at
            for detail in details:
                assert detail["status"] == "completed", detail
            for detail in details:
                generation_id = detail["generation_id"]
                aspect, duration = posted[generation_id]
                out = tmp_path / f"{generation_id}.mp4"
                async with session.get(f"{stack.url}{detail['video']['url']}") as resp:
                    assert resp.status == 200 and resp.content_type == "video/mp4"
                    out.write_bytes(await resp.read())
                codec, seconds, width, height = probe(out)
                assert codec == "h264"
                assert seconds == pytest.approx(duration, abs=0.1)
                assert (width, height) == DELIVERY_SIZES[(aspect, "720p")]
            async with session.get(f"{stack.url}/readyz") as resp:
                assert resp.status == 200
            print(
                f"\ndatabase cut ({mode}) {outage:.1f}s: {len(posted)} orders posted during the outage "
                f"(202 in {max(answer_seconds):.2f}s at most), {len(details)} completed with a valid "
                f"video {finished:.1f}s after the restore"
            )
    finally:
        await proxy.restore()
        await proxy.stop()
