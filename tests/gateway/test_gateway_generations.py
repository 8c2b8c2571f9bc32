"""POST/GET /api/v1/generations: the 202, the event, validation, idempotency, pagination, detail."""

import asyncio
import json
import re
from datetime import datetime
from typing import Any

import asyncpg
import pytest
from gateway_harness import FailingProducer, Gateway, GatewayFactory, Tap

from reelstream.events import derive_id
from schemas import topics
from schemas.api import Analysis, GenerationDetail, GenerationRequest, Scene, Video
from schemas.events import GenerationRequested
from stages.analysis.offline import analyze_offline

ID_RE = re.compile(r"^gen_[0-9a-f]{32}$")
RFC3339_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


async def test_create_answers_202_and_publishes_generation_requested(gw: Gateway, tap: Any) -> None:
    requested: Tap = await tap(topics.GENERATION_REQUESTED)
    body = {
        "prompt": "  A cozy coffee shop at dawn  ",
        "duration_seconds": 20,
        "aspect_ratio": "9:16",
        "brand": {"name": "Beanery", "colors": ["#112233"]},
        "options": {"seed": 7, "include_cta": False},
    }
    resp = await gw.client.post("/api/v1/generations", json=body)
    assert resp.status == 202
    assert resp.content_type == "application/json"
    created = await resp.json()
    gid = created["generation_id"]
    assert ID_RE.match(gid)
    assert created["status"] == "queued"
    assert RFC3339_RE.match(created["created_at"]), created["created_at"]
    assert datetime.fromisoformat(created["created_at"]).tzinfo is not None
    assert created["links"] == {"self": f"/api/v1/generations/{gid}", "websocket": f"/ws/generations/{gid}"}
    assert resp.headers["Location"] == f"/api/v1/generations/{gid}"

    record = await requested.wait_for(lambda r: r.event.subject == gid)
    assert record.key == gid.encode()
    event = record.event
    assert event.type == "reelstream.generation.requested"
    assert event.source == "/reelstream/gateway"
    assert event.specversion == "1.0" and event.datacontenttype == "application/json"
    assert event.id == derive_id(gid, "gateway", topics.GENERATION_REQUESTED)
    data = GenerationRequested.model_validate(event.data)
    assert data.generation_id == gid
    assert data.request == GenerationRequest.model_validate(body)
    assert data.request.prompt == "A cozy coffee shop at dawn"
    assert data.requested_at == datetime.fromisoformat(created["created_at"])


async def test_get_right_after_post_is_queued(gw: Gateway) -> None:
    gid = await gw.create("A bicycle ad", duration_seconds=10)
    resp = await gw.client.get(f"/api/v1/generations/{gid}")
    assert resp.status == 200
    detail = GenerationDetail.model_validate(await resp.json())
    assert detail.status == "queued"
    assert detail.prompt == "A bicycle ad"
    assert detail.duration_seconds == 10 and detail.aspect_ratio == "16:9"
    assert detail.brand is None and detail.options.include_cta is True
    assert detail.progress.stage == "queued" and detail.progress.percent == 0
    assert detail.analysis is None and detail.scenes is None and detail.clips == []
    assert detail.video is None and detail.error is None


async def test_detail_reads_everything_the_stages_wrote(gw: Gateway) -> None:
    request = GenerationRequest(prompt="Fresh sneakers for city runners", duration_seconds=10)
    gid = await gw.create(request.prompt, duration_seconds=10)
    analysis: Analysis = analyze_offline(request)
    scenes = [
        Scene(scene_id="scene_1", kind="intro", start_seconds=0, duration_seconds=3, description="hook"),
        Scene(
            scene_id="scene_2", kind="development", start_seconds=3, duration_seconds=7, description="body"
        ),
    ]
    video = Video(
        url="generations/x/final.mp4",
        duration_seconds=10,
        width=832,
        height=480,
        thumbnail_url=f"/api/v1/generations/{gid}/thumbnail",
    )
    await gw.pool.execute(
        "UPDATE generations SET status = 'completed', analysis = $2, scenes = $3, video = $4,"
        " compute_seconds = 12.5 WHERE id = $1",
        gid,
        analysis.model_dump(mode="json"),
        [s.model_dump(mode="json") for s in scenes],
        video.model_dump(mode="json"),
    )
    await gw.pool.executemany(
        "INSERT INTO clips (generation_id, clip_id, scene_id, idx, status, duration_seconds, prompt,"
        " prediction_id, attempts, storage_key) VALUES ($1, $2, $3, $4, 'succeeded', $5, $6, $7, 1, $8)",
        [
            (gid, "clip_02", "scene_2", 1, 5.0, "p2", f"pred_{gid}_2", None),
            (
                gid,
                "clip_01",
                "scene_1",
                0,
                5.0,
                "p1",
                f"pred_{gid}_1",
                f"generations/{gid}/clips/clip_01.mp4",
            ),
        ],
    )
    resp = await gw.client.get(f"/api/v1/generations/{gid}")
    assert resp.status == 200
    detail = GenerationDetail.model_validate(await resp.json())
    assert detail.status == "completed" and detail.progress.percent == 100
    assert detail.analysis == analysis and detail.analysis.source == "offline"
    assert detail.scenes == scenes
    assert [c.clip_id for c in detail.clips] == ["clip_01", "clip_02"]  # by index
    assert detail.clips[0].url == f"/api/v1/generations/{gid}/clips/clip_01/video"
    assert detail.clips[1].url is None  # not stored
    assert detail.clips[0].prediction_id == f"pred_{gid}_1" and detail.clips[0].attempts == 1
    assert detail.video is not None and detail.video.url == f"/api/v1/generations/{gid}/video"
    assert detail.video.thumbnail_url == f"/api/v1/generations/{gid}/thumbnail"
    assert detail.compute_seconds == 12.5
    assert detail.progress.clips_total == 2 and detail.progress.clips_completed == 2


# -- errors ---------------------------------------------------------------------------------------------

VALID: dict[str, Any] = {"prompt": "A cozy coffee shop"}


def _fields(body: dict[str, Any]) -> set[str]:
    return {d["field"] for d in body["error"].get("details", [])}


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        ({}, {"prompt"}),
        ({"prompt": "   "}, {"prompt"}),
        ({"prompt": "x" * 2001}, {"prompt"}),
        ({"prompt": "ok\x00"}, {"prompt"}),
        ({"prompt": 42}, {"prompt"}),
        ({**VALID, "duration_seconds": 4}, {"duration_seconds"}),
        ({**VALID, "duration_seconds": 121}, {"duration_seconds"}),
        ({**VALID, "duration_seconds": "15"}, {"duration_seconds"}),
        ({**VALID, "duration_seconds": 15.5}, {"duration_seconds"}),
        ({**VALID, "aspect_ratio": "4:3"}, {"aspect_ratio"}),
        ({**VALID, "brand": {"colors": ["#000000"]}}, {"brand.name"}),
        (
            {**VALID, "brand": {"name": "A", "colors": ["red", "#00FF00", "#12345"]}},
            {"brand.colors.0", "brand.colors.2"},
        ),
        ({**VALID, "brand": {"name": "A", "colors": ["#000000"] * 9}}, {"brand.colors"}),
        ({**VALID, "brand": {"name": "A", "fonts": ["a", "b", "c", "d", "e"]}}, {"brand.fonts"}),
        ({**VALID, "brand": {"name": "A", "logo_url": "ftp://x"}}, {"brand.logo_url"}),
        ({**VALID, "options": {"unknown_field": 1}}, {"options.unknown_field"}),
        (
            {**VALID, "options": {"seed": -1, "parallel_clips": "yes"}},
            {"options.seed", "options.parallel_clips"},
        ),
        ({**VALID, "extra": True}, {"extra"}),
        (
            {"prompt": "", "duration_seconds": 0, "aspect_ratio": "x", "brand": {"name": ""}},
            {"prompt", "duration_seconds", "aspect_ratio", "brand.name"},
        ),
    ],
)
async def test_validation_errors_name_every_bad_field(
    gw: Gateway, payload: dict[str, Any], fields: set[str]
) -> None:
    for path in ("/api/v1/generations", "/api/v1/estimates"):
        resp = await gw.client.post(path, json=payload)
        assert resp.status == 422, (path, await resp.text())
        body = await resp.json()
        assert body["error"]["code"] == "validation_error"
        assert isinstance(body["error"]["message"], str)
        assert _fields(body) == fields
        assert all(isinstance(d["message"], str) and d["message"] for d in body["error"]["details"])


@pytest.mark.parametrize(
    "raw",
    [b"{", b"not json", b'{"prompt": "x",}', b"\xff\xfe\x00", b"", b"   ", b'{"prompt": NaN}', b"[" * 5000],
)
async def test_invalid_json_is_400(gw: Gateway, raw: bytes) -> None:
    resp = await gw.client.post("/api/v1/generations", data=raw, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "invalid_json"


async def test_non_json_content_type_is_415(gw: Gateway) -> None:
    for headers in (
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/x-www-form-urlencoded"},
        {},
    ):
        resp = await gw.client.post("/api/v1/generations", data=json.dumps(VALID).encode(), headers=headers)
        assert resp.status == 415, headers
        assert (await resp.json())["error"]["code"] == "unsupported_media_type"


async def test_body_over_64_kib_is_413_by_header_and_by_bytes(gw: Gateway) -> None:
    big = json.dumps({"prompt": "x" * (64 * 1024)}).encode()
    resp = await gw.client.post("/api/v1/generations", data=big, headers={"Content-Type": "application/json"})
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "payload_too_large"

    async def chunks() -> Any:  # no Content-Length: only the bytes received can tell
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    resp = await gw.client.post(
        "/api/v1/generations", data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "payload_too_large"


GARBAGE: list[tuple[str, str, dict[str, str], bytes]] = [
    ("POST", "/api/v1/generations", {"Content-Type": "application/json"}, b"null"),
    ("POST", "/api/v1/generations", {"Content-Type": "application/json"}, b"[]"),
    ("POST", "/api/v1/generations", {"Content-Type": "application/json"}, b'"prompt"'),
    ("POST", "/api/v1/generations", {"Content-Type": "application/json"}, b"1e999999"),
    ("POST", "/api/v1/generations", {"Content-Type": "application/json"}, b'{"prompt": {"$ne": 1}}'),
    (
        "POST",
        "/api/v1/generations",
        {"Content-Type": "application/json"},
        b'{"brand": "nope", "options": []}',
    ),
    (
        "POST",
        "/api/v1/generations",
        {"Content-Type": "application/json; charset=latin-1"},
        b'{"prompt":"caf\xe9"}',
    ),
    ("POST", "/api/v1/generations", {"Content-Type": "application/json", "Idempotency-Key": ""}, b"{}"),
    (
        "POST",
        "/api/v1/estimates",
        {"Content-Type": "application/json"},
        b'{"prompt": "x", "duration_seconds": 1e308}',
    ),
    ("GET", "/api/v1/generations?limit=-1", {}, b""),
    ("GET", "/api/v1/generations?limit=1e2", {}, b""),
    ("GET", "/api/v1/generations?cursor=%00%FF", {}, b""),
    ("GET", "/api/v1/generations?cursor=W10", {}, b""),
    ("GET", "/api/v1/generations?cursor=WyIyMDI0LTAxLTAxIiwiZ2VuXzEiXQ", {}, b""),
    ("GET", "/api/v1/generations?status=%27%3B--", {}, b""),
    ("GET", "/api/v1/generations/..%2F..%2Fetc%2Fpasswd", {}, b""),
    ("GET", "/api/v1/generations/gen_%00", {}, b""),
    ("GET", "/api/v1/generations/" + "a" * 5000, {}, b""),
    ("GET", "/api/v1/generations/gen_0123/clips/..%2Ffinal/video", {}, b""),
    ("POST", "/api/v1/generations/gen_x/cancel", {}, b"garbage"),
    ("DELETE", "/api/v1/generations", {}, b""),
    ("GET", "/nope", {}, b""),
    ("POST", "/api/v1/webhooks/replicate", {"Content-Type": "application/json"}, b"\x00\x01"),
    ("GET", "/provider/outputs/..%2Fwebhook_secret", {}, b""),
]


@pytest.mark.parametrize(("method", "path", "headers", "body"), GARBAGE)
async def test_garbage_never_yields_500_or_html(
    gw: Gateway, method: str, path: str, headers: dict[str, str], body: bytes
) -> None:
    resp = await gw.client.request(method, path, headers=headers, data=body or None)
    assert 400 <= resp.status < 500, (resp.status, await resp.text())
    assert resp.content_type == "application/json"
    error = (await resp.json())["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str)
    assert "Traceback" not in error["message"]


async def test_unknown_route_and_method(gw: Gateway) -> None:
    resp = await gw.client.get("/api/v1/nothing-here")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"
    resp = await gw.client.delete("/api/v1/generations")
    assert resp.status == 405
    assert (await resp.json())["error"]["code"] == "method_not_allowed"
    assert "POST" in resp.headers["Allow"]


@pytest.mark.parametrize("gid", ["gen_" + "0" * 32, "gen_nothex", "GEN_" + "a" * 32, "12345"])
async def test_unknown_or_malformed_id_is_404(gw: Gateway, gid: str) -> None:
    for method, path in (
        ("GET", f"/api/v1/generations/{gid}"),
        ("POST", f"/api/v1/generations/{gid}/cancel"),
        ("GET", f"/api/v1/generations/{gid}/video"),
        ("GET", f"/api/v1/generations/{gid}/clips/clip_01/video"),
    ):
        resp = await gw.client.request(method, path)
        assert resp.status == 404, (method, path)
        assert (await resp.json())["error"]["code"] == "not_found"


async def test_unexpected_exception_is_500_internal_error_without_details(
    make_gateway: GatewayFactory,
) -> None:
    from aiohttp import web

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("secret internals")

    gw = await make_gateway(customize=lambda app: app.router.add_get("/api/v1/boom", boom))
    resp = await gw.client.get("/api/v1/boom", headers={"X-Request-ID": "req-123"})
    assert resp.status == 500
    body = await resp.json()
    assert body["error"]["code"] == "internal_error"
    assert "secret internals" not in body["error"]["message"]
    assert "req-123" in body["error"]["message"]
    assert resp.headers["X-Request-ID"] == "req-123"


# -- publishing failures ----------------------------------------------------------------------------------


async def test_broker_down_is_503_and_the_row_is_failed(make_gateway: GatewayFactory) -> None:
    producer = FailingProducer()
    gw = await make_gateway(producer=producer)
    resp = await gw.client.post("/api/v1/generations", json=VALID, headers={"Idempotency-Key": "down-1"})
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "unavailable"
    row = await gw.pool.fetchrow(
        "SELECT id, status, error FROM generations WHERE error->>'code' = 'unavailable'"
        " ORDER BY created_at DESC LIMIT 1"
    )
    assert row is not None and row["status"] == "failed"
    # The key was freed: a retry is a new attempt, not a replay of the dead generation.
    assert await gw.pool.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = 'down-1'") == 0
    assert producer.attempts == 1


# -- idempotency --------------------------------------------------------------------------------------------


async def test_idempotency_key_same_body_same_generation(gw: Gateway) -> None:
    key = {"Idempotency-Key": f"k-{asyncio.get_running_loop().time()}"}
    first = await gw.client.post(
        "/api/v1/generations", json={"prompt": "Same", "duration_seconds": 15}, headers=key
    )
    assert first.status == 202
    original = await first.json()
    # Same request, written differently (defaults spelled out, other key order): still the same.
    again = await gw.client.post(
        "/api/v1/generations",
        json={"duration_seconds": 15, "aspect_ratio": "16:9", "prompt": " Same "},
        headers=key,
    )
    assert again.status == 200
    assert await again.json() == original
    different = await gw.client.post("/api/v1/generations", json={"prompt": "Different"}, headers=key)
    assert different.status == 409
    assert (await different.json())["error"]["code"] == "conflict"
    count = await gw.pool.fetchval("SELECT count(*) FROM generations WHERE prompt IN ('Same', 'Different')")
    assert count >= 1
    assert (
        await gw.pool.fetchval(
            "SELECT count(*) FROM idempotency_keys WHERE generation_id = $1", original["generation_id"]
        )
        == 1
    )


async def test_idempotency_key_concurrent_requests_create_one_generation(gw: Gateway) -> None:
    key = {"Idempotency-Key": f"race-{asyncio.get_running_loop().time()}"}
    prompt = f"Race {key['Idempotency-Key']}"
    responses = await asyncio.gather(
        *(gw.client.post("/api/v1/generations", json={"prompt": prompt}, headers=key) for _ in range(5))
    )
    statuses = sorted(r.status for r in responses)
    assert statuses.count(202) == 1 and set(statuses) <= {200, 202}, statuses
    ids = {(await r.json())["generation_id"] for r in responses}
    assert len(ids) == 1
    assert await gw.pool.fetchval("SELECT count(*) FROM generations WHERE prompt = $1", prompt) == 1


async def test_idempotency_key_is_validated(gw: Gateway) -> None:
    resp = await gw.client.post("/api/v1/generations", json=VALID, headers={"Idempotency-Key": "x" * 256})
    assert resp.status == 422
    assert _fields(await resp.json()) == {"Idempotency-Key"}


async def test_expired_idempotency_key_creates_a_new_generation(gw: Gateway) -> None:
    key = f"old-{asyncio.get_running_loop().time()}"
    first = await gw.client.post("/api/v1/generations", json=VALID, headers={"Idempotency-Key": key})
    await gw.pool.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = $1", key
    )
    second = await gw.client.post(
        "/api/v1/generations", json={"prompt": "other"}, headers={"Idempotency-Key": key}
    )
    assert second.status == 202
    assert (await second.json())["generation_id"] != (await first.json())["generation_id"]


# -- listing ------------------------------------------------------------------------------------------


async def test_pagination_newest_first_without_duplicates(
    make_gateway: GatewayFactory, fresh_pool: asyncpg.Pool
) -> None:
    gw = await make_gateway(pool=fresh_pool, rate_limit_per_minute=1000)
    created = [await gw.create(f"Ad number {i}") for i in range(5)]
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        resp = await gw.client.get(f"/api/v1/generations{query}")
        assert resp.status == 200
        page = await resp.json()
        pages += 1
        assert len(page["items"]) <= 2
        seen.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 10
    assert pages == 3
    ids = [item["generation_id"] for item in seen]
    assert ids == list(reversed(created))
    stamps = [(item["created_at"], item["generation_id"]) for item in seen]
    assert stamps == sorted(stamps, reverse=True)
    item = seen[0]
    assert set(item) == {
        "generation_id",
        "status",
        "prompt",
        "duration_seconds",
        "aspect_ratio",
        "created_at",
        "updated_at",
        "thumbnail_url",
    }
    assert item["thumbnail_url"] is None and item["status"] == "queued"

    # A new generation arriving mid-walk does not shift later pages.
    first = await (await gw.client.get("/api/v1/generations?limit=2")).json()
    await gw.create("Late arrival")
    second = await (await gw.client.get(f"/api/v1/generations?limit=2&cursor={first['next_cursor']}")).json()
    assert [i["generation_id"] for i in second["items"]] == ids[2:4]

    # The default limit covers all six here.
    everything = await (await gw.client.get("/api/v1/generations")).json()
    assert len(everything["items"]) == 6 and everything["next_cursor"] is None


async def test_status_filter(make_gateway: GatewayFactory, fresh_pool: asyncpg.Pool) -> None:
    gw = await make_gateway(pool=fresh_pool)
    ids = [await gw.create(f"Filter {i}") for i in range(4)]
    await fresh_pool.execute("UPDATE generations SET status = 'completed' WHERE id = ANY($1)", ids[:2])
    await fresh_pool.execute("UPDATE generations SET status = 'failed' WHERE id = $1", ids[2])
    completed = await (await gw.client.get("/api/v1/generations?status=completed")).json()
    assert {i["generation_id"] for i in completed["items"]} == set(ids[:2])
    assert all(i["status"] == "completed" for i in completed["items"])
    ended = await (await gw.client.get("/api/v1/generations?status=completed,failed&limit=100")).json()
    assert {i["generation_id"] for i in ended["items"]} == set(ids[:3])
    queued = await (await gw.client.get("/api/v1/generations?status=queued")).json()
    assert [i["generation_id"] for i in queued["items"]] == [ids[3]]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=abc", "limit"),
        ("limit=", "limit"),
        ("cursor=not-a-cursor", "cursor"),
        ("cursor=" + "A" * 300, "cursor"),
        ("status=done", "status"),
        ("status=queued,nope", "status"),
    ],
)
async def test_list_parameters_are_validated(gw: Gateway, query: str, field: str) -> None:
    resp = await gw.client.get(f"/api/v1/generations?{query}")
    assert resp.status == 422
    body = await resp.json()
    assert body["error"]["code"] == "validation_error"
    assert _fields(body) == {field}
