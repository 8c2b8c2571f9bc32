"""POST /api/v1/generations/{id}/cancel."""

from typing import Any

from gateway_harness import Gateway, GatewayFactory, RecordingProvider, Tap

from schemas import topics
from schemas.api import GenerationDetail
from schemas.events import GenerationStatusChanged


async def _with_clips(gw: Gateway) -> str:
    gid = await gw.create("An ad to cancel")
    await gw.pool.execute("UPDATE generations SET status = 'generating' WHERE id = $1", gid)
    await gw.pool.executemany(
        "INSERT INTO clips (generation_id, clip_id, scene_id, idx, status, duration_seconds,"
        " prediction_id, attempts) VALUES ($1, $2, 'scene_1', $3, $4, 5.0, $5, $6)",
        [
            (gid, "clip_01", 0, "succeeded", f"done_{gid}", 1),
            (gid, "clip_02", 1, "submitted", f"sub_{gid}", 1),
            (gid, "clip_03", 2, "processing", f"proc_{gid}", 2),
            (gid, "clip_04", 3, "pending", None, 0),
        ],
    )
    return gid


async def test_cancel_marks_everything_and_cancels_outstanding_predictions(gw: Gateway, tap: Any) -> None:
    statuses: Tap = await tap(topics.GENERATION_STATUS)
    gid = await _with_clips(gw)

    resp = await gw.client.post(f"/api/v1/generations/{gid}/cancel")
    assert resp.status == 202
    detail = GenerationDetail.model_validate(await resp.json())
    assert detail.status == "canceled"
    assert {c.clip_id: c.status for c in detail.clips} == {
        "clip_01": "succeeded",
        "clip_02": "canceled",
        "clip_03": "canceled",
        "clip_04": "canceled",
    }
    assert await gw.pool.fetchval("SELECT status FROM generations WHERE id = $1", gid) == "canceled"
    assert sorted(gw.provider.canceled) == sorted([f"sub_{gid}", f"proc_{gid}"])

    record = await statuses.wait_for(lambda r: r.event.subject == gid)
    assert record.key == gid.encode()
    assert record.event.source == "/reelstream/gateway"
    assert record.event.type == "reelstream.generation.status"
    event = GenerationStatusChanged.model_validate(record.event.data)
    assert event.status == "canceled" and event.generation_id == gid

    again = await gw.client.post(f"/api/v1/generations/{gid}/cancel")
    assert again.status == 409
    assert (await again.json())["error"]["code"] == "conflict"
    assert len(gw.provider.canceled) == 2  # nothing canceled twice


async def test_cancel_of_a_terminal_generation_is_409(gw: Gateway) -> None:
    for final in ("completed", "failed", "canceled"):
        gid = await gw.create(f"Already {final}")
        await gw.pool.execute("UPDATE generations SET status = $2 WHERE id = $1", gid, final)
        resp = await gw.client.post(f"/api/v1/generations/{gid}/cancel")
        assert resp.status == 409, final
        assert (await resp.json())["error"]["code"] == "conflict"
        assert await gw.pool.fetchval("SELECT status FROM generations WHERE id = $1", gid) == final


async def test_provider_errors_do_not_fail_the_cancel(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(provider=RecordingProvider(fail_cancel=True))
    gid = await _with_clips(gw)
    resp = await gw.client.post(f"/api/v1/generations/{gid}/cancel")
    assert resp.status == 202
    assert len(gw.provider.canceled) == 2
    assert await gw.pool.fetchval("SELECT status FROM generations WHERE id = $1", gid) == "canceled"


async def test_cancel_of_a_queued_generation(gw: Gateway) -> None:
    gid = await gw.create("Cancel me early")
    resp = await gw.client.post(f"/api/v1/generations/{gid}/cancel")
    assert resp.status == 202
    body = await resp.json()
    assert body["status"] == "canceled" and body["clips"] == []
    assert gw.provider.canceled == []
