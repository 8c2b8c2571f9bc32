"""Keys own their generations; the rate limit is one budget per key across gateways (Redis); budgets."""

import hashlib
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis
from gateway_harness import Gateway, GatewayFactory, Tap

from reelstream import embedded, storage
from reelstream.events import make_event, now
from reelstream.runtime import Context
from schemas import topics
from schemas.api import GenerationRequest
from schemas.events import GenerationRequested
from stages.intake import stage as intake

A = {"Authorization": "Bearer key-a"}
B = {"X-API-Key": "key-b"}


async def _complete_with_media(gw: Gateway, gid: str) -> None:
    """Make ``gid`` look finished: final video, thumbnail and one stored clip, as completion leaves them."""
    await gw.pool.execute(
        "UPDATE generations SET status = 'completed',"
        ' video = \'{"url": "x", "duration_seconds": 5, "width": 832, "height": 480}\' WHERE id = $1',
        gid,
    )
    await gw.pool.execute(
        "INSERT INTO clips (generation_id, clip_id, scene_id, idx, status, duration_seconds, storage_key)"
        " VALUES ($1, 'clip_01', 'scene_1', 0, 'succeeded', 5, $2)",
        gid,
        storage.clip_key(gid, "clip_01"),
    )
    for key in (storage.final_key(gid), storage.thumbnail_key(gid), storage.clip_key(gid, "clip_01")):
        path = gw.storage.local_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"media")


async def test_another_key_gets_404_on_every_route_and_the_websocket(
    make_gateway: GatewayFactory, tap: Any
) -> None:
    gw = await make_gateway(api_keys="key-a,key-b", rate_limit_per_minute=1000)
    requested: Tap = await tap(topics.GENERATION_REQUESTED)
    resp = await gw.client.post("/api/v1/generations", json={"prompt": "Sorbet by A"}, headers=A)
    assert resp.status == 202
    gid = (await resp.json())["generation_id"]
    mine = await gw.client.post("/api/v1/generations", json={"prompt": "Sorbet by B"}, headers=B)
    theirs = (await mine.json())["generation_id"]

    # The row and the event carry the key's fingerprint, never the key.
    fingerprint = hashlib.sha256(b"key-a").hexdigest()
    assert await gw.pool.fetchval("SELECT owner FROM generations WHERE id = $1", gid) == fingerprint
    record = await requested.wait_for(lambda r: r.event.subject == gid)
    event = GenerationRequested.model_validate(record.event.data)
    assert event.owner == fingerprint and "key-a" not in record.event.model_dump_json()

    await _complete_with_media(gw, gid)
    routes = [
        f"/api/v1/generations/{gid}",
        f"/api/v1/generations/{gid}/video",
        f"/api/v1/generations/{gid}/thumbnail",
        f"/api/v1/generations/{gid}/clips/clip_01/video",
    ]
    for path in routes:
        assert (await gw.client.get(path, headers=A)).status == 200, path
        other = await gw.client.get(path, headers=B)
        assert other.status == 404, path
        assert (await other.json())["error"]["code"] == "not_found"
    canceled = await gw.client.post(f"/api/v1/generations/{theirs}/cancel", headers=A)
    assert canceled.status == 404
    assert (await (await gw.client.get(f"/api/v1/generations/{theirs}", headers=B)).json())[
        "status"
    ] == "queued"

    listed_a = await (await gw.client.get("/api/v1/generations", headers=A)).json()
    listed_b = await (await gw.client.get("/api/v1/generations?limit=100", headers=B)).json()
    assert [i["generation_id"] for i in listed_a["items"]] == [gid]
    assert gid not in [i["generation_id"] for i in listed_b["items"]] and theirs in str(listed_b)

    ws = await gw.client.ws_connect(f"/ws/generations/{gid}?api_key=key-b")
    await ws.receive()
    assert ws.close_code == 4404
    ws = await gw.client.ws_connect(f"/ws/generations/{gid}?api_key=key-a")
    assert (await ws.receive_json())["type"] == "snapshot"
    await ws.close()


async def test_without_keys_everything_is_visible(make_gateway: GatewayFactory) -> None:
    keyed = await make_gateway(api_keys="key-a", rate_limit_per_minute=1000)
    gid = await keyed.client.post("/api/v1/generations", json={"prompt": "Sorbet"}, headers=A)
    gid = (await gid.json())["generation_id"]
    open_gw = await make_gateway(rate_limit_per_minute=1000)
    assert (await open_gw.client.get(f"/api/v1/generations/{gid}")).status == 200
    assert (await open_gw.client.post(f"/api/v1/generations/{gid}/cancel")).status == 202


# -- rate limits ------------------------------------------------------------------------------------------


async def _post(gw: Gateway, headers: dict[str, str]) -> int:
    resp = await gw.client.post("/api/v1/generations", json={"prompt": "Sorbet"}, headers=headers)
    return resp.status


async def test_two_gateways_share_one_budget_per_key_in_redis(
    make_gateway: GatewayFactory, redis_url: str
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.flushdb()
        one = await make_gateway(api_keys="key-a,key-b", rate_limit_per_minute=3, redis=client)
        two = await make_gateway(api_keys="key-a,key-b", rate_limit_per_minute=3, redis=client)
        assert [await _post(one, A), await _post(two, A), await _post(one, A)] == [202, 202, 202]
        fourth = await two.client.post("/api/v1/generations", json={"prompt": "Sorbet"}, headers=A)
        assert fourth.status == 429
        assert (await fourth.json())["error"]["code"] == "rate_limited"
        assert 1 <= int(fourth.headers["Retry-After"]) <= 60
        assert await _post(one, B) == 202  # another key has a budget of its own
        keys = [k.decode() for k in await client.keys("reelstream:ratelimit:*")]
        assert len(keys) == 2 and not any("key-a" in k for k in keys)  # hashed, never the key
    finally:
        await client.aclose()


async def test_redis_down_falls_back_to_the_process_window(make_gateway: GatewayFactory) -> None:
    dead = aioredis.Redis.from_url(f"redis://127.0.0.1:{embedded.free_port()}/0", socket_connect_timeout=1)
    gw = await make_gateway(api_keys="key-a", rate_limit_per_minute=2, redis=dead)
    assert [await _post(gw, A), await _post(gw, A), await _post(gw, A)] == [202, 202, 429]
    await dead.aclose()


# -- budgets and cost -------------------------------------------------------------------------------------


async def test_an_order_above_its_budget_is_refused_with_the_estimate(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(replicate_api_token="r8_test", rate_limit_per_minute=1000)
    before = await gw.pool.fetchval("SELECT count(*) FROM generations")
    body = {"prompt": "Sorbet", "duration_seconds": 30, "options": {"max_cost_usd": 0.05}}
    quote = await (await gw.client.post("/api/v1/estimates", json=body)).json()
    resp = await gw.client.post("/api/v1/generations", json=body)
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert error["code"] == "budget_exceeded"
    assert [d["field"] for d in error["details"]] == ["options.max_cost_usd"]
    assert f"{quote['estimated_cost_usd']:.4f}" in error["message"]
    assert await gw.pool.fetchval("SELECT count(*) FROM generations") == before

    body["options"]["max_cost_usd"] = quote["estimated_cost_usd"]  # exactly the estimate: accepted
    resp = await gw.client.post("/api/v1/generations", json=body)
    assert resp.status == 202
    detail = await (await gw.client.get(f"/api/v1/generations/{(await resp.json())['generation_id']}")).json()
    assert detail["cost"] == {
        "estimated_usd": quote["estimated_cost_usd"],
        "actual_usd": None,
        "compute_seconds": None,
    }


async def test_prices_are_settings(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(
        replicate_api_token="r8_test",
        model_prices={"wan-video/wan-2.2-t2v-fast": 0.01},
        rate_limit_per_minute=9,
    )
    quote = await (
        await gw.client.post("/api/v1/estimates", json={"prompt": "x", "duration_seconds": 5})
    ).json()
    assert quote["estimated_cost_usd"] == pytest.approx(quote["estimated_compute_seconds"] * 0.01)


async def test_actual_cost_comes_from_predict_time_once_ended(gw: Gateway) -> None:
    gid = await gw.create()
    await gw.pool.execute(
        "INSERT INTO clips (generation_id, clip_id, scene_id, idx, status, duration_seconds, predict_time)"
        " VALUES ($1, 'clip_01', 'scene_1', 0, 'succeeded', 5, 12.5), ($1, 'clip_02', 'scene_1', 1,"
        " 'succeeded', 5, 7.5)",
        gid,
    )
    running = await (await gw.client.get(f"/api/v1/generations/{gid}")).json()
    assert running["cost"]["compute_seconds"] is None  # not known until the generation has ended
    await gw.pool.execute("UPDATE generations SET status = 'canceled' WHERE id = $1", gid)
    ended = await (await gw.client.get(f"/api/v1/generations/{gid}")).json()
    assert ended["cost"]["compute_seconds"] == 20.0
    assert ended["cost"]["actual_usd"] == 0.0  # the local renderer is free


async def test_an_order_queued_while_postgres_was_away_keeps_its_owner(
    make_gateway: GatewayFactory, gw_producer: Any
) -> None:
    """Intake writes the row of an order the gateway could only publish: the owner travels in the event."""
    gw = await make_gateway(api_keys="key-a,key-b", rate_limit_per_minute=1000)
    gid = "gen_" + uuid.uuid4().hex
    data = GenerationRequested(
        generation_id=gid,
        request=GenerationRequest(prompt="Sorbet"),
        requested_at=now(),
        owner=hashlib.sha256(b"key-a").hexdigest(),
    )
    event = make_event(topics.GENERATION_REQUESTED, data, source="/reelstream/gateway", subject=gid)
    async with gw.pool.acquire() as conn, conn.transaction():
        ctx = Context(stage="intake", event=event, data=data, pool=gw.pool, deps=None, producer=gw_producer)
        ctx._conn = conn
        await intake.handle(ctx)
    assert (await gw.client.get(f"/api/v1/generations/{gid}", headers=A)).status == 200
    assert (await gw.client.get(f"/api/v1/generations/{gid}", headers=B)).status == 404
