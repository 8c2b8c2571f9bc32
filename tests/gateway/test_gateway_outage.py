"""The gateway while Postgres is unreachable: fast 503s, orders still taken, reads from memory.

Real tansu, real Postgres, the real gateway with its own pool (``gateway.database.open_pool``), whose
link to Postgres goes through a :class:`TcpProxy` the tests cut and restore. The shared server itself
is never touched.
"""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import pytest
import pytest_asyncio
from gateway_harness import Gateway, GatewayFactory, Tap, publish
from tcp_proxy import TcpProxy

from gateway import database
from gateway.memory import RecentGenerations
from reelstream import db
from reelstream.events import now
from reelstream.settings import Settings
from reelstream.webhooks import sign
from schemas import topics
from schemas.api import GenerationDetail, GenerationRequest, Progress
from schemas.events import GenerationRequested, GenerationStatusChanged

WEBHOOK = b'{"id": "p_outage", "status": "succeeded", "output": "https://example.invalid/o.mp4"}'
BODY = {"prompt": "Lemonade on a hot day", "duration_seconds": 10, "aspect_ratio": "9:16"}
#: "Within a few seconds": the acquire timeout (1 s here) or the statement timeout (2 s), plus slack.
QUICK = 4.0


@dataclass
class Outage:
    gw: Gateway
    proxy: TcpProxy
    direct: asyncpg.Pool  # around the proxy, for the test's own reads and writes


@pytest_asyncio.fixture(loop_scope="session")
async def outage(gw_databases: Any, make_gateway: GatewayFactory) -> AsyncIterator[Outage]:
    url = await gw_databases.create()
    proxy = await TcpProxy.for_url(url).start()
    knobs: dict[str, Any] = {
        "database_url": proxy.url(url),
        "gateway_db_pool_max_size": 4,
        "gateway_db_acquire_timeout_seconds": 1.0,
        "gateway_db_statement_timeout_seconds": 2.0,
        "gateway_retry_after_seconds": 7,
    }
    pool = await database.open_pool(Settings(**knobs))
    direct = await db.create_pool(url, max_size=3)
    gw = await make_gateway(pool=pool, rate_limit_per_minute=100_000, **knobs)
    try:
        yield Outage(gw, proxy, direct)
    finally:
        await gw.client.close()
        await proxy.restore()
        await pool.close()
        await direct.close()
        await proxy.stop()


async def _timed(call: Any) -> tuple[aiohttp.ClientResponse, float]:
    started = time.monotonic()
    resp = await call
    await resp.read()
    return resp, time.monotonic() - started


async def _assert_unavailable(resp: aiohttp.ClientResponse, seconds: float, what: str) -> None:
    assert resp.status == 503, (what, resp.status, await resp.text())
    assert resp.headers["Retry-After"] == "7", what
    body = await resp.json()
    assert body["error"]["code"] == "unavailable", what
    assert isinstance(body["error"]["message"], str), what
    assert seconds < QUICK, f"{what} took {seconds:.1f}s"


async def _ready(gw: Gateway) -> int:
    await asyncio.sleep(1.1)  # past the readiness cache
    resp = await gw.client.get("/readyz")
    return resp.status


@pytest.mark.parametrize("mode", ["refuse", "blackhole"])
async def test_everything_answers_quickly_while_the_database_is_cut(
    outage: Outage, tap: Any, mode: str
) -> None:
    gw, proxy = outage.gw, outage.proxy
    requested: Tap = await tap(topics.GENERATION_REQUESTED)
    before = await gw.create("Created before the outage")
    assert (await gw.client.get(f"/api/v1/generations/{before}")).status == 200
    assert await _ready(gw) == 200

    await proxy.cut(mode)  # type: ignore[arg-type]
    figures: dict[str, float] = {}

    # Orders keep coming in: 202, the request on its topic, readable back from memory.
    resp, figures["post"] = await _timed(gw.client.post("/api/v1/generations", json=BODY))
    assert resp.status == 202, await resp.text()
    created = await resp.json()
    gid = created["generation_id"]
    assert created["status"] == "queued" and resp.headers["Location"] == f"/api/v1/generations/{gid}"
    assert figures["post"] < QUICK
    record = await requested.wait_for(lambda r: r.event.subject == gid)
    event = GenerationRequested.model_validate(record.event.data)
    assert event.request.prompt == BODY["prompt"]
    assert event.requested_at == datetime.fromisoformat(created["created_at"])

    resp, figures["get remembered"] = await _timed(gw.client.get(f"/api/v1/generations/{gid}"))
    assert resp.status == 200, await resp.text()
    detail = GenerationDetail.model_validate(await resp.json())
    assert (detail.status, detail.prompt, detail.duration_seconds, detail.aspect_ratio) == (
        "queued",
        BODY["prompt"],
        10,
        "9:16",
    )
    assert detail.progress.stage == "queued" and detail.analysis is None and detail.video is None
    assert detail.created_at == event.requested_at
    assert figures["get remembered"] < QUICK

    # With an Idempotency-Key the key cannot be checked: 503, retry later.
    resp, seconds = await _timed(
        gw.client.post("/api/v1/generations", json=BODY, headers={"Idempotency-Key": uuid.uuid4().hex})
    )
    await _assert_unavailable(resp, seconds, "idempotent create")

    never_seen = "gen_" + uuid.uuid4().hex
    for what, call in {
        "get never seen": gw.client.get(f"/api/v1/generations/{never_seen}"),
        "list": gw.client.get("/api/v1/generations"),
        "cancel": gw.client.post(f"/api/v1/generations/{before}/cancel"),
        "cancel remembered": gw.client.post(f"/api/v1/generations/{gid}/cancel"),
        "video": gw.client.get(f"/api/v1/generations/{before}/video"),
        "webhook": gw.client.post(  # the provider retries it later
            "/api/v1/webhooks/replicate", data=WEBHOOK, headers=sign(gw.secret, WEBHOOK, webhook_id="msg_1")
        ),
    }.items():
        resp, figures[what] = await _timed(call)
        await _assert_unavailable(resp, figures[what], what)
    started = time.monotonic()
    assert await _ready(gw) == 503
    figures["readyz"] = time.monotonic() - started - 1.1
    print(f"\n{mode}: seconds per answer while cut: " + ", ".join(f"{k} {v:.2f}" for k, v in figures.items()))

    await proxy.restore()
    # Back: everything from Postgres again. The order taken meanwhile has no row until intake writes it
    # (no stages here): still readable from memory, and cancel says "retry", never 404.
    resp = await gw.client.get(f"/api/v1/generations/{gid}")
    assert resp.status == 200 and (await resp.json())["status"] == "queued"
    resp = await gw.client.post(f"/api/v1/generations/{gid}/cancel")
    assert resp.status == 503 and resp.headers["Retry-After"] == "7"
    await _insert_like_intake(outage.direct, event)
    resp = await gw.client.get(f"/api/v1/generations/{gid}")
    assert resp.status == 200
    assert datetime.fromisoformat((await resp.json())["created_at"]) == event.requested_at
    assert (await gw.client.get("/api/v1/generations")).status == 200
    assert (await gw.client.get(f"/api/v1/generations/{before}")).status == 200
    assert (await gw.client.post(f"/api/v1/generations/{gid}/cancel")).status == 202
    resp = await gw.client.post(
        "/api/v1/generations", json=BODY, headers={"Idempotency-Key": uuid.uuid4().hex}
    )
    assert resp.status == 202
    assert await _ready(gw) == 200


async def _insert_like_intake(pool: asyncpg.Pool, event: GenerationRequested) -> None:
    """What intake does with the request once Postgres is back (stages/intake/stage.py)."""
    req = event.request
    await pool.execute(
        "INSERT INTO generations (id, prompt, duration_seconds, aspect_ratio, brand, options, created_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
        event.generation_id,
        req.prompt,
        req.duration_seconds,
        req.aspect_ratio,
        req.brand.model_dump(mode="json") if req.brand else None,
        req.options.model_dump(mode="json"),
        event.requested_at,
    )


async def test_a_starved_pool_answers_503_after_the_acquire_timeout(outage: Outage) -> None:
    """Every connection held (a burst): the next request waits its acquire timeout, then 503."""
    gw = outage.gw
    held = [await gw.pool.acquire() for _ in range(4)]
    try:
        resp, seconds = await _timed(gw.client.get("/api/v1/generations"))
        await _assert_unavailable(resp, seconds, "list on a starved pool")
        assert seconds >= 0.9
    finally:
        for conn in held:
            await gw.pool.release(conn)
    assert (await gw.client.get("/api/v1/generations")).status == 200


async def test_a_statement_timeout_is_503(outage: Outage) -> None:
    """A row locked elsewhere: the read waits its statement timeout, then 503 (not a 500, not 60 s)."""
    gw = outage.gw
    gid = await gw.create("Locked row")
    async with outage.direct.acquire() as conn, conn.transaction():
        await conn.execute("SELECT 1 FROM generations WHERE id = $1 FOR UPDATE", gid)
        resp, seconds = await _timed(gw.client.post(f"/api/v1/generations/{gid}/cancel"))
        await _assert_unavailable(resp, seconds, "cancel of a locked row")
    assert (await gw.client.post(f"/api/v1/generations/{gid}/cancel")).status == 202


async def test_a_generation_seen_on_the_topics_is_answered_from_memory(
    outage: Outage, gw_producer: Any
) -> None:
    """Accepted by another gateway instance: this one saw its request and status on the topics."""
    gw, proxy = outage.gw, outage.proxy
    gid = "gen_" + uuid.uuid4().hex
    request = GenerationRequest.model_validate(BODY)
    requested_at = now()
    await publish(
        gw_producer,
        topics.GENERATION_REQUESTED,
        GenerationRequested(generation_id=gid, request=request, requested_at=requested_at),
        gid,
    )
    status_only = "gen_" + uuid.uuid4().hex
    for subject in (gid, status_only):
        for state, percent in (("planning", 10), ("analyzing", 5)):  # out of order: never backward
            await publish(
                gw_producer,
                topics.GENERATION_STATUS,
                GenerationStatusChanged(
                    generation_id=subject,
                    status=state,
                    progress=Progress(stage=state, percent=percent),
                    at=datetime.now(UTC),
                ),
                subject,
            )
    await proxy.cut()
    deadline = time.monotonic() + 10
    while True:
        resp = await gw.client.get(f"/api/v1/generations/{gid}")
        if resp.status == 200 and (await resp.json())["status"] == "planning":
            break
        assert time.monotonic() < deadline, await resp.text()
        await asyncio.sleep(0.1)
    detail = GenerationDetail.model_validate(await resp.json())
    assert detail.progress.percent == 10 and detail.created_at == requested_at
    # A status alone is not a detail (no prompt, no sizes): answered like an id never seen.
    resp = await gw.client.get(f"/api/v1/generations/{status_only}")
    assert resp.status == 503 and resp.headers["Retry-After"] == "7"

    # A WebSocket opened meanwhile gets its snapshot from memory too; an unknown one is told to retry.
    async with gw.client.ws_connect(f"/ws/generations/{gid}") as ws:
        first = await ws.receive_json(timeout=5)
        assert first["type"] == "snapshot" and first["generation"]["status"] == "planning"
    async with gw.client.ws_connect(f"/ws/generations/{status_only}") as ws:
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1013
    await proxy.restore()


async def test_memory_with_api_keys_only_answers_the_key_that_created_it(
    make_gateway: GatewayFactory, gw_databases: Any
) -> None:
    url = await gw_databases.create()
    proxy = await TcpProxy.for_url(url).start()
    knobs: dict[str, Any] = {"database_url": proxy.url(url), "gateway_db_acquire_timeout_seconds": 1.0}
    pool = await database.open_pool(Settings(**knobs))
    try:
        gw = await make_gateway(pool=pool, api_keys="alpha,beta", **knobs)
        await proxy.cut()
        resp = await gw.client.post("/api/v1/generations", json=BODY, headers={"X-API-Key": "alpha"})
        assert resp.status == 202
        gid = (await resp.json())["generation_id"]
        mine = await gw.client.get(f"/api/v1/generations/{gid}", headers={"X-API-Key": "alpha"})
        assert mine.status == 200
        theirs = await gw.client.get(f"/api/v1/generations/{gid}", headers={"X-API-Key": "beta"})
        assert theirs.status == 503
    finally:
        await proxy.restore()
        await pool.close()
        await proxy.stop()


def test_memory_is_bounded_and_least_recently_used() -> None:
    recent = RecentGenerations(capacity=3)
    request = GenerationRequest.model_validate(BODY)
    ids = [f"gen_{i:032x}" for i in range(5)]
    for gid in ids[:3]:
        recent.accepted(gid, request, now(), None)
    assert recent.detail(ids[0], caller=None, keys_required=False) is not None  # now the most recent
    recent.accepted(ids[3], request, now(), None)
    recent.accepted(ids[4], request, now(), None)
    assert len(recent) == 3
    kept = [gid for gid in ids if recent.detail(gid, caller=None, keys_required=False) is not None]
    assert kept == [ids[0], ids[3], ids[4]]
    assert RecentGenerations(capacity=0).detail(ids[0], caller=None, keys_required=False) is None
