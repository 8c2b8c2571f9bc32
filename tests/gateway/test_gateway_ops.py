"""Auth, rate limiting, health, metrics, OpenAPI, estimates and the web page."""

import re
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from gateway_harness import Gateway, GatewayFactory

from gateway import ws as gateway_ws
from reelstream.webhooks import sign
from schemas.api import Analysis, Estimate, GenerationRequest
from stages.analysis.offline import analyze_offline
from stages.planning.plan import plan_scenes

KEY = "test-key-1"

# -- API keys --------------------------------------------------------------------------------------------


async def test_api_keys_protect_the_api_but_not_health_or_webhooks(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(api_keys=f" {KEY} , other-key ")
    client = gw.client
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}, {"Authorization": KEY}):
        for method, path in (
            ("GET", "/api/v1/generations"),
            ("POST", "/api/v1/generations"),
            ("GET", "/api/v1/generations/gen_" + "0" * 32),
            ("POST", "/api/v1/estimates"),
            ("GET", "/api/v1/openapi.json"),
        ):
            resp = await client.request(method, path, headers=headers, json={"prompt": "x"})
            assert resp.status == 401, (headers, path)
            assert (await resp.json())["error"]["code"] == "unauthorized"
            assert resp.headers["WWW-Authenticate"] == "Bearer"

    ok = await client.get("/api/v1/generations", headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status == 200
    ok = await client.get("/api/v1/generations", headers={"X-API-Key": "other-key"})
    assert ok.status == 200
    created = await client.post("/api/v1/generations", json={"prompt": "x"}, headers={"X-API-Key": KEY})
    assert created.status == 202

    for path in ("/healthz", "/readyz", "/metrics", "/"):
        assert (await client.get(path)).status == 200, path
    # The webhook is authenticated by its signature, not by an API key.
    body = b'{"id": "p_none", "status": "succeeded"}'
    resp = await client.post(
        "/api/v1/webhooks/replicate", data=body, headers=sign(gw.secret, body, webhook_id="m1")
    )
    assert resp.status == 200


async def test_websocket_needs_a_key_too(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(api_keys=KEY)
    gid = await _create_with_key(gw)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await gw.client.ws_connect(f"/ws/generations/{gid}")
    assert refused.value.status == 401
    ws = await gw.client.ws_connect(f"/ws/generations/{gid}?api_key={KEY}")
    assert (await ws.receive_json())["type"] == "snapshot"
    await ws.close()
    ws = await gw.client.ws_connect(f"/ws/generations/{gid}", headers={"Authorization": f"Bearer {KEY}"})
    assert (await ws.receive_json())["type"] == "snapshot"
    await ws.close()


async def _create_with_key(gw: Gateway) -> str:
    resp = await gw.client.post("/api/v1/generations", json={"prompt": "keyed"}, headers={"X-API-Key": KEY})
    assert resp.status == 202
    generation_id: str = (await resp.json())["generation_id"]
    return generation_id


async def test_idempotency_keys_are_per_api_key(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(api_keys=f"{KEY},other-key")
    same = {"Idempotency-Key": "shared-name"}
    first = await gw.client.post(
        "/api/v1/generations", json={"prompt": "a"}, headers={**same, "X-API-Key": KEY}
    )
    second = await gw.client.post(
        "/api/v1/generations", json={"prompt": "b"}, headers={**same, "X-API-Key": "other-key"}
    )
    assert first.status == 202 and second.status == 202
    assert (await first.json())["generation_id"] != (await second.json())["generation_id"]


# -- rate limit -------------------------------------------------------------------------------------------


async def test_rate_limit_on_creating_generations(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(rate_limit_per_minute=2)
    for _ in range(2):
        assert (await gw.client.post("/api/v1/generations", json={"prompt": "x"})).status == 202
    resp = await gw.client.post("/api/v1/generations", json={"prompt": "x"})
    assert resp.status == 429
    assert (await resp.json())["error"]["code"] == "rate_limited"
    retry_after = int(resp.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    # Reading is not limited.
    assert (await gw.client.get("/api/v1/generations")).status == 200


async def test_rate_limit_is_per_api_key(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(rate_limit_per_minute=1, api_keys="k1,k2")
    assert (
        await gw.client.post("/api/v1/generations", json={"prompt": "x"}, headers={"X-API-Key": "k1"})
    ).status == 202
    assert (
        await gw.client.post("/api/v1/generations", json={"prompt": "x"}, headers={"X-API-Key": "k1"})
    ).status == 429
    assert (
        await gw.client.post("/api/v1/generations", json={"prompt": "x"}, headers={"X-API-Key": "k2"})
    ).status == 202
    # A request without a valid key is refused before it can use up anyone's budget.
    assert (await gw.client.post("/api/v1/generations", json={"prompt": "x"})).status == 401


# -- health and metrics -----------------------------------------------------------------------------------


async def test_health_and_readiness(gw: Gateway) -> None:
    resp = await gw.client.get("/healthz")
    assert resp.status == 200 and await resp.json() == {"status": "ok"}
    resp = await gw.client.get("/readyz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok", "checks": {"database": "ok", "kafka": "ok"}}


async def test_readiness_fails_without_a_broker(make_gateway: GatewayFactory, monkeypatch: Any) -> None:
    monkeypatch.setattr(gateway_ws, "HUB_READY_WAIT_SECONDS", 0.2)
    gw = await make_gateway(bootstrap="127.0.0.1:9")  # nothing listens on the discard port
    resp = await gw.client.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == "ok" and body["checks"]["kafka"] != "ok"
    assert body["error"]["code"] == "unavailable"
    assert (await gw.client.get("/healthz")).status == 200


async def test_metrics_count_requests_by_route_template(gw: Gateway) -> None:
    gid = await gw.create("Metrics")
    await gw.client.get(f"/api/v1/generations/{gid}")
    resp = await gw.client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    text = await resp.text()
    assert "reelstream_" in text
    assert 'route="/api/v1/generations/{generation_id}"' in text
    assert gid not in text
    names = set(re.findall(r"^# TYPE (\S+)", text, re.M))
    assert names and {n for n in names if not n.startswith("reelstream_")} == set()  # no python_, process_


# -- OpenAPI ----------------------------------------------------------------------------------------------


async def test_openapi_describes_every_route(gw: Gateway) -> None:
    resp = await gw.client.get("/api/v1/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"].startswith("3.1")
    app = gw.client.app
    assert isinstance(app, web.Application)
    registered: dict[str, set[str]] = {}
    for route in app.router.routes():
        resource = route.resource
        assert resource is not None
        if route.method != "HEAD":
            registered.setdefault(resource.canonical, set()).add(route.method.lower())
    for path, methods in registered.items():
        assert path in doc["paths"], path
        assert methods <= set(doc["paths"][path]), (path, methods)
    for path in (
        "/api/v1/generations",
        "/api/v1/generations/{generation_id}",
        "/api/v1/generations/{generation_id}/cancel",
        "/api/v1/generations/{generation_id}/video",
        "/api/v1/generations/{generation_id}/clips/{clip_id}/video",
        "/api/v1/estimates",
        "/api/v1/webhooks/replicate",
        "/ws/generations/{generation_id}",
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/v1/openapi.json",
        "/",
    ):
        assert path in doc["paths"], path
    schemas = doc["components"]["schemas"]
    for name in ("GenerationRequest", "Brand", "Options", "GenerationDetail", "Estimate", "ErrorBody"):
        assert name in schemas, name
    refs = re.findall(r'"\$ref":\s*"#/components/schemas/([^"]+)"', await resp.text())
    assert refs and all(ref in schemas for ref in refs)
    assert "$defs" not in await resp.text()


# -- estimates --------------------------------------------------------------------------------------------


async def test_estimate_for_the_local_renderer(gw: Gateway) -> None:
    resp = await gw.client.post("/api/v1/estimates", json={"prompt": "Lemonade", "duration_seconds": 15})
    assert resp.status == 200
    estimate = Estimate.model_validate(await resp.json())
    assert estimate.model == "local" and estimate.estimated_cost_usd == 0
    assert [s.kind for s in estimate.scenes] == ["intro", "development", "cta"]
    assert sum(s.duration_seconds for s in estimate.scenes) == 15
    assert estimate.estimated_compute_seconds == len(estimate.clips) * 1.0
    assert await gw.pool.fetchval("SELECT count(*) FROM generations WHERE prompt = 'Lemonade'") == 0


async def test_estimate_for_replicate_prices_every_clip(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(replicate_api_token="r8_test")
    resp = await gw.client.post(
        "/api/v1/estimates", json={"prompt": "x", "duration_seconds": 30, "options": {"include_cta": False}}
    )
    estimate = Estimate.model_validate(await resp.json())
    assert estimate.model == "wan-video/wan-2.2-t2v-fast"
    assert [s.kind for s in estimate.scenes] == ["intro", "development"]
    assert [s.duration_seconds for s in estimate.scenes] == [9, 21]
    assert len(estimate.clips) == 2 + 5  # 9 s → 2 clips of 4.5 s; 21 s → 5 clips of 4.2 s
    assert estimate.estimated_cost_usd == round(len(estimate.clips) * 30 * 0.001525, 4)  # H100 rate
    assert estimate.estimated_compute_seconds == pytest.approx(len(estimate.clips) * 30)


@pytest.mark.parametrize("duration", [5, 6, 7, 11, 15, 17, 23, 30, 59, 61, 90, 119, 120])
@pytest.mark.parametrize("include_cta", [True, False])
@pytest.mark.parametrize("clip_seconds", [5.0, 4.0, 2.5])
def test_estimate_plans_exactly_what_the_planner_plans(
    duration: int, include_cta: bool, clip_seconds: float
) -> None:
    """The gateway may not import stages, so it repeats the arithmetic; this keeps the copies equal."""
    from gateway.estimates import plan

    request = GenerationRequest(
        prompt="Sneakers", duration_seconds=duration, options={"include_cta": include_cta}
    )
    analysis: Analysis = analyze_offline(request)
    scenes, clips = plan_scenes(request, analysis, clip_seconds=clip_seconds)
    our_scenes, our_clips = plan(request, clip_seconds=clip_seconds)
    strip = {"description"}
    assert [s.model_dump(exclude=strip) for s in our_scenes] == [s.model_dump(exclude=strip) for s in scenes]
    assert [c.model_dump() for c in our_clips] == [
        c.model_dump(include={"clip_id", "scene_id", "index", "duration_seconds"}) for c in clips
    ]


# -- the page ---------------------------------------------------------------------------------------------


async def test_index_page(gw: Gateway) -> None:
    resp = await gw.client.get("/")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert "/static/app.js" in await resp.text()
    script = await (await gw.client.get("/static/app.js")).text()
    assert "/api/v1/generations" in script and "/ws/generations/" in script
