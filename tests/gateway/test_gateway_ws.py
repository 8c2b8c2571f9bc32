"""GET /ws/generations/{id}: snapshot, live status and clip messages, close codes, slow clients."""

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import aiohttp
from gateway_harness import Gateway, publish

from gateway.ws import CLOSE_TOO_SLOW, Rendered, Subscriber
from reelstream.kafka import Producer
from schemas import topics
from schemas.api import Clip, GenerationDetail, Progress
from schemas.events import GenerationStatusChanged


def _status(gid: str, status: str, percent: int, **progress: int) -> GenerationStatusChanged:
    return GenerationStatusChanged(
        generation_id=gid,
        status=status,
        progress=Progress(stage=status, percent=percent, **progress),
        at=datetime.now(UTC),
    )


async def _send(producer: Producer, event: GenerationStatusChanged) -> None:
    await publish(producer, topics.GENERATION_STATUS, event, event.generation_id)


async def _next(ws: aiohttp.ClientWebSocketResponse, within: float = 15.0) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.receive(), within)
    assert msg.type == aiohttp.WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
    data: dict[str, Any] = json.loads(msg.data)
    return data


async def _closed(ws: aiohttp.ClientWebSocketResponse, within: float = 15.0) -> int | None:
    msg = await asyncio.wait_for(ws.receive(), within)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), (msg.type, msg.data)
    return ws.close_code


async def test_snapshot_first_then_live_status_to_every_client(gw: Gateway, gw_producer: Producer) -> None:
    gid = await gw.create("Live ad")
    a = await gw.client.ws_connect(f"/ws/generations/{gid}")
    b = await gw.client.ws_connect(f"/ws/generations/{gid}")
    for ws in (a, b):
        snapshot = await _next(ws)
        assert snapshot["type"] == "snapshot"
        detail = GenerationDetail.model_validate(snapshot["generation"])
        assert detail.generation_id == gid and detail.status == "queued"

    await _send(gw_producer, _status(gid, "analyzing", 5))
    for ws in (a, b):
        message = await _next(ws)
        assert message["type"] == "status"
        assert message["generation_id"] == gid and message["status"] == "analyzing"
        assert message["progress"]["percent"] == 5 and "at" in message

    await _send(gw_producer, _status(gid, "planning", 15))
    await _send(gw_producer, _status(gid, "analyzing", 5))  # late, out of order: must not go backward
    await _send(gw_producer, _status(gid, "planning", 15))  # nothing new
    await _send(gw_producer, _status(gid, "prompting", 20))
    for ws in (a, b):
        assert [(await _next(ws))["status"] for _ in range(2)] == ["planning", "prompting"]

    await _send(gw_producer, _status(gid, "completed", 100))
    for ws in (a, b):
        final = await _next(ws)
        assert final["type"] == "status" and final["status"] == "completed"
        assert await _closed(ws) == 1000
    assert gw.client.app is not None


async def test_clip_messages_carry_changes(gw: Gateway, gw_producer: Producer) -> None:
    gid = await gw.create("Clips ad")
    await gw.pool.execute(
        "INSERT INTO clips (generation_id, clip_id, scene_id, idx, status, duration_seconds)"
        " VALUES ($1, 'clip_01', 'scene_1', 0, 'pending', 5.0),"
        "        ($1, 'clip_02', 'scene_1', 1, 'pending', 5.0)",
        gid,
    )
    ws = await gw.client.ws_connect(f"/ws/generations/{gid}")
    snapshot = await _next(ws)
    assert [c["status"] for c in snapshot["generation"]["clips"]] == ["pending", "pending"]

    await gw.pool.execute(
        "UPDATE clips SET status = 'submitted', prediction_id = 'p1', attempts = 1"
        " WHERE generation_id = $1 AND clip_id = 'clip_01'",
        gid,
    )
    await _send(gw_producer, _status(gid, "generating", 25, clips_total=2))
    clip = await _next(ws)
    assert clip["type"] == "clip" and clip["generation_id"] == gid and "at" in clip
    assert Clip.model_validate(clip["clip"]).model_dump(
        include={"clip_id", "status", "prediction_id", "attempts"}
    ) == {
        "clip_id": "clip_01",
        "status": "submitted",
        "prediction_id": "p1",
        "attempts": 1,
    }
    assert (await _next(ws))["status"] == "generating"  # clip_02 did not change: no message for it

    await gw.pool.execute(
        "UPDATE clips SET status = 'succeeded', storage_key = $2"
        " WHERE generation_id = $1 AND clip_id = 'clip_01'",
        gid,
        f"generations/{gid}/clips/clip_01.mp4",
    )
    await _send(gw_producer, _status(gid, "generating", 55, clips_total=2, clips_completed=1))
    clip = await _next(ws)
    assert clip["clip"]["status"] == "succeeded"
    assert clip["clip"]["url"] == f"/api/v1/generations/{gid}/clips/clip_01/video"
    status = await _next(ws)
    assert status["type"] == "status" and status["progress"]["clips_completed"] == 1
    await ws.close()


async def test_unknown_and_malformed_ids_close_with_4404(gw: Gateway) -> None:
    for gid in ("gen_" + "f" * 32, "not-an-id"):
        ws = await gw.client.ws_connect(f"/ws/generations/{gid}")
        assert await _closed(ws) == 4404


async def test_an_ended_generation_gets_its_snapshot_and_a_normal_close(gw: Gateway) -> None:
    gid = await gw.create("Done already")
    await gw.pool.execute("UPDATE generations SET status = 'failed' WHERE id = $1", gid)
    ws = await gw.client.ws_connect(f"/ws/generations/{gid}")
    snapshot = await _next(ws)
    assert snapshot["type"] == "snapshot" and snapshot["generation"]["status"] == "failed"
    assert await _closed(ws) == 1000


async def test_status_events_of_other_generations_are_not_sent(gw: Gateway, gw_producer: Producer) -> None:
    mine, other = await gw.create("Mine"), await gw.create("Other")
    ws = await gw.client.ws_connect(f"/ws/generations/{mine}")
    await _next(ws)
    await _send(gw_producer, _status(other, "analyzing", 5))
    await _send(gw_producer, _status(mine, "analyzing", 5))
    message = await _next(ws)
    assert message["generation_id"] == mine
    await ws.close()


# -- the subscriber's rules, without a socket --------------------------------------------------------------


def _detail(gid: str, status: str) -> GenerationDetail:
    now = datetime.now(UTC)
    return GenerationDetail.model_validate(
        {
            "generation_id": gid,
            "status": status,
            "prompt": "p",
            "duration_seconds": 15,
            "aspect_ratio": "16:9",
            "brand": None,
            "options": {},
            "created_at": now,
            "updated_at": now,
            "progress": {"stage": status, "percent": 0},
        }
    )


def _drain(sub: Subscriber) -> list[Any]:
    items = []
    while not sub.queue.empty():
        items.append(sub.queue.get_nowait())
    return items


def test_events_held_until_the_snapshot_are_filtered_against_it() -> None:
    gid = "gen_" + "1" * 32
    sub = Subscriber(gid)
    sub.offer(_status(gid, "analyzing", 5), None)  # older than the snapshot below
    sub.offer(_status(gid, "prompting", 20), None)  # newer
    assert sub.queue.empty()  # nothing before the snapshot has been sent
    sub.seed(_detail(gid, "planning"))
    assert [json.loads(m)["status"] for m in _drain(sub)] == ["prompting"]


def test_progress_within_a_status_never_goes_back() -> None:
    gid = "gen_" + "2" * 32
    sub = Subscriber(gid)
    sub.seed(_detail(gid, "generating"))
    sub.offer(_status(gid, "generating", 55), None)
    sub.offer(_status(gid, "generating", 40), None)
    sub.offer(_status(gid, "generating", 55), None)
    sub.offer(_status(gid, "generating", 70), None)
    assert [json.loads(m)["progress"]["percent"] for m in _drain(sub)] == [55, 70]


def test_a_slow_subscriber_is_dropped_not_waited_for() -> None:
    gid = "gen_" + "3" * 32
    sub = Subscriber(gid, maxsize=3)
    sub.seed(_detail(gid, "generating"))
    for percent in range(26, 40):
        sub.offer(_status(gid, "generating", percent), None)
    items = _drain(sub)
    assert len(items) == 1 and getattr(items[0], "code", None) == CLOSE_TOO_SLOW
    sub.offer(_status(gid, "assembling", 90), None)
    assert sub.queue.empty()


def _clip(status: str, attempts: int) -> Clip:
    return Clip(
        clip_id="clip_01", scene_id="scene_1", index=0, status=status, duration_seconds=5, attempts=attempts
    )


def test_clip_states_never_go_back() -> None:
    gid = "gen_" + "4" * 32
    sub = Subscriber(gid)
    # Loaded by the hub before the snapshot was read: older than the snapshot.
    sub.offer(_status(gid, "generating", 25), [_clip("submitted", 1)])
    detail = _detail(gid, "generating").model_copy(
        update={"clips": [_clip("succeeded", 1)], "progress": Progress(stage="generating", percent=25)}
    )
    sub.seed(detail)
    assert [json.loads(m)["type"] for m in _drain(sub)] == []  # the 25 % status is the snapshot's own
    sub.offer(_status(gid, "generating", 30), [_clip("processing", 1)])
    assert [json.loads(m)["type"] for m in _drain(sub)] == ["status"]
    sub.offer(_status(gid, "generating", 31), [_clip("submitted", 2)])  # a retry is a later attempt
    assert [json.loads(m).get("clip", {}).get("attempts") for m in _drain(sub)] == [2, None]


def test_subscribers_of_one_generation_share_the_rendered_messages() -> None:
    """Rendered once per event, not once per socket; each subscriber still filters for itself."""
    gid = "gen_" + "5" * 32
    behind, ahead = Subscriber(gid), Subscriber(gid)
    behind.seed(_detail(gid, "generating"))
    ahead.seed(_detail(gid, "generating"))
    ahead.offer(_status(gid, "generating", 60), None)
    _drain(ahead)
    event = _status(gid, "generating", 50)
    rendered = Rendered(event)
    behind.offer(event, [_clip("processing", 1)], rendered)
    ahead.offer(event, [_clip("processing", 1)], rendered)
    told, other = _drain(behind), _drain(ahead)
    assert [json.loads(m)["type"] for m in told] == ["clip", "status"]
    assert [json.loads(m)["type"] for m in other] == ["clip"]  # 50 % is behind what it was told
    assert told[0] is other[0]  # the very same string: rendered once
    assert json.loads(told[1]) == {
        "type": "status",
        "generation_id": gid,
        "status": "generating",
        "progress": json.loads(event.progress.model_dump_json()),
        "at": json.loads(event.model_dump_json())["at"],
    }
