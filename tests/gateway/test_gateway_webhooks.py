"""POST /api/v1/webhooks/replicate and GET /provider/outputs/{name}."""

import asyncio
import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from fake_replicate import WAN_22_T2V_FAST, FakeReplicate
from gateway_harness import FailingProducer, Gateway, GatewayFactory, Record, RecordingProvider, Tap

from gateway.webhooks import DELIVERIES, OUTCOME_LOG, Delivery, resolve_and_mark
from reelstream.providers import marker, parse_marker
from reelstream.providers.replicate import ReplicateVideoProvider
from reelstream.webhooks import sign
from schemas import topics
from schemas.events import ClipCompleted

URL = "/api/v1/webhooks/replicate"


def _prediction(prediction_id: str, status: str = "succeeded") -> bytes:
    return json.dumps(
        {
            "id": prediction_id,
            "status": status,
            "output": "https://example.invalid/out.mp4" if status == "succeeded" else None,
            "error": None,
            "metrics": {"predict_time": 12.5},
        }
    ).encode()


async def _recorded_prediction(gw: Gateway, attempt: int = 1) -> tuple[str, str]:
    gid = await gw.create("Webhook ad")
    prediction_id = f"p_{uuid.uuid4().hex}"
    await gw.pool.execute(
        "INSERT INTO predictions (prediction_id, generation_id, clip_id, attempt, provider)"
        " VALUES ($1, $2, 'clip_02', $3, 'replicate')",
        prediction_id,
        gid,
        attempt,
    )
    return gid, prediction_id


def _completed_for(webhook_id: str) -> Any:
    return lambda r: r.event.data.get("webhook_id") == webhook_id


async def test_signed_webhook_publishes_clip_completed_once(gw: Gateway, tap: Any) -> None:
    completed: Tap = await tap(topics.CLIP_COMPLETED)
    gid, prediction_id = await _recorded_prediction(gw, attempt=2)
    body = _prediction(prediction_id)
    webhook_id = f"msg_{uuid.uuid4().hex}"
    headers = sign(gw.secret, body, webhook_id=webhook_id)

    resp = await gw.client.post(URL, data=body, headers=headers)
    assert resp.status == 200
    assert await resp.json() == {"status": "accepted"}
    record: Record = await completed.wait_for(_completed_for(webhook_id))
    assert record.key == gid.encode()
    assert record.event.source == "/reelstream/gateway" and record.event.subject == gid
    data = ClipCompleted.model_validate(record.event.data)
    assert (data.generation_id, data.clip_id, data.attempt) == (gid, "clip_02", 2)
    assert data.prediction.id == prediction_id and data.prediction.status == "succeeded"
    assert data.prediction.output_url == "https://example.invalid/out.mp4"

    replay = await gw.client.post(URL, data=body, headers=headers)
    assert replay.status == 200
    assert await replay.json() == {"status": "duplicate"}
    published = await completed.collect(_completed_for(webhook_id), seconds=1.5)
    assert len(published) == 1


async def test_bad_signatures_are_401_and_publish_nothing(gw: Gateway, tap: Any) -> None:
    completed: Tap = await tap(topics.CLIP_COMPLETED)
    _, prediction_id = await _recorded_prediction(gw)
    body = _prediction(prediction_id)
    good = sign(gw.secret, body, webhook_id="msg_forged")
    cases: dict[str, dict[str, str]] = {
        "forged": sign("whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB", body, webhook_id="msg_forged"),
        "tampered body": good,  # sent with a different body below
        "stale": sign(gw.secret, body, webhook_id="msg_stale", at=datetime.now(UTC) - timedelta(minutes=6)),
        "future": sign(gw.secret, body, webhook_id="msg_future", at=datetime.now(UTC) + timedelta(minutes=6)),
        "no headers": {"content-type": "application/json"},
        "no signature": {k: v for k, v in good.items() if k != "webhook-signature"},
        "no timestamp": {k: v for k, v in good.items() if k != "webhook-timestamp"},
        "no id": {k: v for k, v in good.items() if k != "webhook-id"},
        "garbled signature": {**good, "webhook-signature": "v1,!!!not base64"},
        "garbled timestamp": {**good, "webhook-timestamp": "yesterday"},
        "other id": {**good, "webhook-id": "msg_other"},
    }
    for name, headers in cases.items():
        data = body.replace(b"succeeded", b"failed") if name == "tampered body" else body
        resp = await gw.client.post(URL, data=data, headers=headers)
        assert resp.status == 401, name
        assert (await resp.json())["error"]["code"] == "unauthorized", name
    published = await completed.collect(
        lambda r: r.event.data.get("prediction", {}).get("id") == prediction_id, 1.0
    )
    assert published == []
    assert (
        await gw.pool.fetchval(
            "SELECT count(*) FROM webhook_deliveries WHERE prediction_id = $1", prediction_id
        )
        == 0
    )


async def _intent(gw: Gateway, mark: str, prediction_id: str | None = None, *, columns: bool = True) -> None:
    """A submission intent as the clips stage writes it before calling the provider."""
    parsed = parse_marker(mark)
    assert parsed is not None
    if columns:
        await gw.pool.execute(
            "INSERT INTO submissions (marker, generation_id, clip_id, attempt, prediction_id)"
            " VALUES ($1, $2, $3, $4, $5)",
            mark,
            *parsed,
            prediction_id,
        )
    else:  # the older stage: the marker alone
        await gw.pool.execute("INSERT INTO submissions (marker) VALUES ($1)", mark)


async def _canceled(provider: RecordingProvider, prediction_id: str, within: float = 5.0) -> bool:
    """Cancels run off the request path: wait (bounded) for the provider to see it."""
    deadline = asyncio.get_running_loop().time() + within
    while prediction_id not in provider.canceled:
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


@pytest.mark.parametrize("columns", [True, False], ids=["intent", "marker-only-intent"])
async def test_marker_of_a_submission_intent_resolves_a_prediction_not_recorded_yet(
    gw: Gateway, tap: Any, columns: bool
) -> None:
    completed: Tap = await tap(topics.CLIP_COMPLETED)
    gid = await gw.create("Fast render")
    mark = marker(gid, "clip_03", 1)
    await _intent(gw, mark, columns=columns)
    prediction_id = f"p_{uuid.uuid4().hex}"
    body = _prediction(prediction_id, "failed")
    webhook_id = f"msg_{uuid.uuid4().hex}"
    resp = await gw.client.post(
        f"{URL}?marker={mark}", data=body, headers=sign(gw.secret, body, webhook_id=webhook_id)
    )
    assert resp.status == 200 and await resp.json() == {"status": "accepted"}
    data = ClipCompleted.model_validate((await completed.wait_for(_completed_for(webhook_id))).event.data)
    assert (data.generation_id, data.clip_id, data.attempt) == (gid, "clip_03", 1)
    assert data.prediction.status == "failed"
    assert prediction_id not in gw.provider.canceled


async def test_intent_bound_to_this_prediction_resolves(gw: Gateway, tap: Any) -> None:
    completed: Tap = await tap(topics.CLIP_COMPLETED)
    gid = await gw.create("Answer recorded, prediction not yet")
    prediction_id = f"p_{uuid.uuid4().hex}"
    mark = marker(gid, "clip_01", 2)
    await _intent(gw, mark, prediction_id)
    body = _prediction(prediction_id)
    webhook_id = f"msg_{uuid.uuid4().hex}"
    resp = await gw.client.post(
        f"{URL}?marker={mark}", data=body, headers=sign(gw.secret, body, webhook_id=webhook_id)
    )
    assert await resp.json() == {"status": "accepted"}
    data = ClipCompleted.model_validate((await completed.wait_for(_completed_for(webhook_id))).event.data)
    assert (data.generation_id, data.clip_id, data.attempt) == (gid, "clip_01", 2)


async def test_forged_marker_is_refused_and_its_prediction_canceled(gw: Gateway, tap: Any) -> None:
    """The marker is not signed: naming an existing generation is not enough without our intent."""
    completed: Tap = await tap(topics.CLIP_COMPLETED)
    gid = await gw.create("Someone else's prediction")
    prediction_id = f"p_{uuid.uuid4().hex}"
    body = _prediction(prediction_id)
    webhook_id = f"msg_{uuid.uuid4().hex}"
    resp = await gw.client.post(
        f"{URL}?marker={marker(gid, 'clip_01', 1)}",
        data=body,
        headers=sign(gw.secret, body, webhook_id=webhook_id),
    )
    assert resp.status == 200
    assert await resp.json() == {"status": "unknown_prediction"}
    assert await _canceled(gw.provider, prediction_id)
    assert await completed.collect(_completed_for(webhook_id), seconds=1.0) == []
    assert (
        await gw.pool.fetchval("SELECT count(*) FROM webhook_deliveries WHERE webhook_id = $1", webhook_id)
        == 0
    )


async def test_intent_bound_to_another_prediction_is_refused(gw: Gateway, tap: Any) -> None:
    """A second prediction for one submission (a duplicate create) is not attached, and is canceled."""
    completed: Tap = await tap(topics.CLIP_COMPLETED)
    gid = await gw.create("Duplicate create")
    mark = marker(gid, "clip_02", 1)
    await _intent(gw, mark, f"p_{uuid.uuid4().hex}")
    stray = f"p_{uuid.uuid4().hex}"
    body = _prediction(stray)
    webhook_id = f"msg_{uuid.uuid4().hex}"
    resp = await gw.client.post(
        f"{URL}?marker={mark}", data=body, headers=sign(gw.secret, body, webhook_id=webhook_id)
    )
    assert await resp.json() == {"status": "unknown_prediction"}
    assert await _canceled(gw.provider, stray)
    assert await completed.collect(_completed_for(webhook_id), seconds=1.0) == []


async def test_a_strangers_running_prediction_is_canceled_too(gw: Gateway) -> None:
    """Progress webhooks are checked as well: a running prediction is the one worth canceling."""
    gid = await gw.create("Running stranger")
    prediction_id = f"p_{uuid.uuid4().hex}"
    body = _prediction(prediction_id, "processing")
    resp = await gw.client.post(
        f"{URL}?marker={marker(gid, 'clip_01', 1)}",
        data=body,
        headers=sign(gw.secret, body, webhook_id=f"msg_{uuid.uuid4().hex}"),
    )
    assert await resp.json() == {"status": "unknown_prediction"}
    assert await _canceled(gw.provider, prediction_id)


async def test_a_failing_provider_cancel_still_answers_2xx(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(provider=RecordingProvider(fail_cancel=True))
    prediction_id = f"p_{uuid.uuid4().hex}"
    body = _prediction(prediction_id)
    resp = await gw.client.post(URL, data=body, headers=sign(gw.secret, body, webhook_id="msg_x"))
    assert resp.status == 200 and await resp.json() == {"status": "unknown_prediction"}
    assert await _canceled(gw.provider, prediction_id)


async def test_forged_marker_cancels_the_prediction_at_replicate(
    make_gateway: GatewayFactory, tap: Any
) -> None:
    """End to end with the Replicate client against the fake: the stranger's running prediction is
    canceled through Replicate's cancel endpoint, and nothing reaches the pipeline."""
    completed: Tap = await tap(topics.CLIP_COMPLETED)
    fake = await FakeReplicate().start()
    provider = ReplicateVideoProvider(
        api_token=fake.token, base_url=fake.base_url, model=WAN_22_T2V_FAST, timeout=5.0
    )
    try:
        gw = await make_gateway(provider=provider)
        fake.hold_predictions = True  # still running when its webhook is refused
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{fake.base_url}/v1/models/{WAN_22_T2V_FAST}/predictions",
                json={"input": {"prompt": "not ours"}},
                headers={"Authorization": f"Bearer {fake.token}"},
            ) as created:
                assert created.status == 201
                prediction_id = (await created.json())["id"]
        gid = await gw.create("Victim of a forged marker")
        body = _prediction(prediction_id, "succeeded")
        webhook_id = f"msg_{uuid.uuid4().hex}"
        resp = await gw.client.post(
            f"{URL}?marker={marker(gid, 'clip_01', 1)}",
            data=body,
            headers=sign(gw.secret, body, webhook_id=webhook_id),
        )
        assert resp.status == 200 and await resp.json() == {"status": "unknown_prediction"}
        deadline = asyncio.get_running_loop().time() + 5.0
        while prediction_id not in fake.canceled_ids:
            assert asyncio.get_running_loop().time() < deadline, "the provider's cancel was not called"
            await asyncio.sleep(0.05)
        assert fake.predictions[prediction_id]["status"] == "canceled"
        assert await completed.collect(_completed_for(webhook_id), seconds=1.0) == []
    finally:
        await provider.close()
        await fake.stop()


async def test_predictions_table_wins_over_the_marker(gw: Gateway, tap: Any) -> None:
    completed: Tap = await tap(topics.CLIP_COMPLETED)
    gid, prediction_id = await _recorded_prediction(gw, attempt=1)
    other = await gw.create("Someone else")
    body = _prediction(prediction_id)
    webhook_id = f"msg_{uuid.uuid4().hex}"
    resp = await gw.client.post(
        f"{URL}?marker={marker(other, 'clip_09', 3)}",
        data=body,
        headers=sign(gw.secret, body, webhook_id=webhook_id),
    )
    assert resp.status == 200
    data = ClipCompleted.model_validate((await completed.wait_for(_completed_for(webhook_id))).event.data)
    assert (data.generation_id, data.clip_id, data.attempt) == (gid, "clip_02", 1)


async def test_unknown_prediction_is_200_and_not_remembered(gw: Gateway, tap: Any) -> None:
    completed: Tap = await tap(topics.CLIP_COMPLETED)
    gid = await gw.create("Late record")
    prediction_id = f"p_{uuid.uuid4().hex}"
    body = _prediction(prediction_id)
    webhook_id = f"msg_{uuid.uuid4().hex}"
    headers = sign(gw.secret, body, webhook_id=webhook_id)
    for query in ("", "?marker=garbage", f"?marker={marker('gen_' + '0' * 32, 'clip_01', 1)}"):
        resp = await gw.client.post(URL + query, data=body, headers=headers)
        assert resp.status == 200
        assert await resp.json() == {"status": "unknown_prediction"}
    assert await _canceled(gw.provider, prediction_id)
    assert (
        await gw.pool.fetchval("SELECT count(*) FROM webhook_deliveries WHERE webhook_id = $1", webhook_id)
        == 0
    )

    # Once the submission is recorded, the provider's redelivery of the same webhook goes through.
    await gw.pool.execute(
        "INSERT INTO predictions (prediction_id, generation_id, clip_id, attempt, provider)"
        " VALUES ($1, $2, 'clip_01', 1, 'replicate')",
        prediction_id,
        gid,
    )
    resp = await gw.client.post(URL, data=body, headers=headers)
    assert await resp.json() == {"status": "accepted"}
    await completed.wait_for(_completed_for(webhook_id))


async def test_non_terminal_status_is_ignored(gw: Gateway, tap: Any) -> None:
    completed: Tap = await tap(topics.CLIP_COMPLETED)
    _, prediction_id = await _recorded_prediction(gw)
    for state in ("starting", "processing"):
        body = _prediction(prediction_id, state)
        webhook_id = f"msg_{uuid.uuid4().hex}"
        resp = await gw.client.post(URL, data=body, headers=sign(gw.secret, body, webhook_id=webhook_id))
        assert resp.status == 200 and await resp.json() == {"status": "ignored"}
    assert await completed.collect(lambda r: r.event.data["prediction"]["id"] == prediction_id, 1.0) == []


async def test_aborted_is_terminal(gw: Gateway, tap: Any) -> None:
    completed: Tap = await tap(topics.CLIP_COMPLETED)
    _, prediction_id = await _recorded_prediction(gw)
    body = _prediction(prediction_id, "aborted")
    webhook_id = f"msg_{uuid.uuid4().hex}"
    resp = await gw.client.post(URL, data=body, headers=sign(gw.secret, body, webhook_id=webhook_id))
    assert await resp.json() == {"status": "accepted"}
    record = await completed.wait_for(_completed_for(webhook_id))
    assert record.event.data["prediction"]["status"] == "aborted"


async def test_signed_but_not_a_prediction_is_422(gw: Gateway) -> None:
    body = json.dumps({"id": "x", "status": "exploded"}).encode()
    resp = await gw.client.post(URL, data=body, headers=sign(gw.secret, body, webhook_id="msg_bad"))
    assert resp.status == 422
    payload = await resp.json()
    assert payload["error"]["code"] == "validation_error"
    assert {d["field"] for d in payload["error"]["details"]} == {"status"}


async def test_webhook_over_1_mib_is_413(gw: Gateway) -> None:
    body = b'{"id": "x", "status": "succeeded", "output": "' + b"a" * (1024 * 1024) + b'"}'
    resp = await gw.client.post(URL, data=body, headers=sign(gw.secret, body, webhook_id="msg_big"))
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "payload_too_large"


async def test_publish_failure_is_503_and_the_retry_is_not_a_duplicate(
    make_gateway: GatewayFactory, gw_pool: Any
) -> None:
    healthy = await make_gateway()
    broken = await make_gateway(producer=FailingProducer())
    _, prediction_id = await _recorded_prediction(healthy)
    body = _prediction(prediction_id)
    webhook_id = f"msg_{uuid.uuid4().hex}"
    headers = sign(broken.secret, body, webhook_id=webhook_id)
    resp = await broken.client.post(URL, data=body, headers=headers)
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "unavailable"
    assert (
        await gw_pool.fetchval("SELECT count(*) FROM webhook_deliveries WHERE webhook_id = $1", webhook_id)
        == 0
    )
    # The provider retries once the broker is back (here: a healthy gateway on the same database).
    resp = await healthy.client.post(
        URL, data=body, headers=sign(healthy.secret, body, webhook_id=webhook_id)
    )
    assert await resp.json() == {"status": "accepted"}


async def test_provider_outputs_are_served_by_strict_name(gw: Gateway) -> None:
    folder = gw.deps.settings.data_dir / "provider"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pred_abc_1.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(200)))
    (gw.deps.settings.data_dir / "secret.mp4").write_bytes(b"nope")
    resp = await gw.client.get("/provider/outputs/pred_abc_1.mp4")
    assert resp.status == 200
    assert resp.content_type == "video/mp4"
    assert (await resp.read()).startswith(b"\x00\x00\x00\x18ftyp")
    for name in (
        "missing.mp4",
        "PRED.mp4",
        "a.txt",
        "..%2Fsecret.mp4",
        "%2e%2e%2fsecret.mp4",
        "x" * 70 + ".mp4",
    ):
        resp = await gw.client.get(f"/provider/outputs/{name}")
        assert resp.status == 404, name
        assert (await resp.json())["error"]["code"] == "not_found"


# -- many at once (the batched path: one statement resolves and marks a batch) --------------------------


async def test_concurrent_webhooks_are_each_published_once(
    gw: Gateway, tap: Any, caplog: pytest.LogCaptureFixture
) -> None:
    completed: Tap = await tap(topics.CLIP_COMPLETED)
    recorded = [await _recorded_prediction(gw) for _ in range(12)]
    sends = []
    for _, prediction_id in recorded:
        body = _prediction(prediction_id, "failed")
        webhook_id = f"msg_{uuid.uuid4().hex}"
        headers = sign(gw.secret, body, webhook_id=webhook_id)
        sends.append((webhook_id, gw.client.post(URL, data=body, headers=headers)))
    before = gw.client.app[DELIVERIES].items
    with caplog.at_level(logging.INFO, logger="gateway.webhooks"):
        responses = await asyncio.gather(*(send for _, send in sends))
        gw.client.app[OUTCOME_LOG].flush()
    assert [await r.json() for r in responses] == [{"status": "accepted"}] * len(sends)
    logged = " ".join(r.getMessage() for r in caplog.records if r.name == "gateway.webhooks")
    for gid, prediction_id in recorded:  # each outcome named in the log, in a line of its own or a burst's
        assert f"{gid} clip_02 attempt 1: prediction {prediction_id} failed" in logged
    assert gw.client.app[DELIVERIES].items - before == len(sends)
    for (gid, prediction_id), (webhook_id, _) in zip(recorded, sends, strict=True):
        record = await completed.wait_for(_completed_for(webhook_id))
        data = ClipCompleted.model_validate(record.event.data)
        assert (data.generation_id, data.prediction.id) == (gid, prediction_id)
        assert data.prediction.status == "failed"


async def test_the_same_delivery_at_once_is_published_once(gw: Gateway, tap: Any) -> None:
    """Redeliveries racing each other (even inside one batch): one is accepted, the rest are duplicates."""
    completed: Tap = await tap(topics.CLIP_COMPLETED)
    _, prediction_id = await _recorded_prediction(gw)
    body = _prediction(prediction_id)
    webhook_id = f"msg_{uuid.uuid4().hex}"
    headers = sign(gw.secret, body, webhook_id=webhook_id)
    responses = await asyncio.gather(*(gw.client.post(URL, data=body, headers=headers) for _ in range(8)))
    answers = sorted([(await r.json())["status"] for r in responses])
    assert answers == ["accepted"] + ["duplicate"] * 7
    assert len(await completed.collect(_completed_for(webhook_id), seconds=1.5)) == 1


async def test_batched_and_unrecorded_webhooks_together(gw: Gateway, tap: Any) -> None:
    """A prediction not recorded yet (found by its intent's marker) still resolves beside recorded ones."""
    completed: Tap = await tap(topics.CLIP_COMPLETED)
    gid = await gw.create("Marker neighbour")
    mark = marker(gid, "clip_01", 1)
    await _intent(gw, mark)
    unrecorded = f"p_{uuid.uuid4().hex}"
    _, recorded = await _recorded_prediction(gw)
    sends = []
    for prediction_id, query in ((unrecorded, f"?marker={mark}"), (recorded, "")):
        body = _prediction(prediction_id)
        webhook_id = f"msg_{uuid.uuid4().hex}"
        headers = sign(gw.secret, body, webhook_id=webhook_id)
        sends.append((webhook_id, gw.client.post(URL + query, data=body, headers=headers)))
    responses = await asyncio.gather(*(send for _, send in sends))
    assert [await r.json() for r in responses] == [{"status": "accepted"}] * 2
    for webhook_id, _ in sends:
        await completed.wait_for(_completed_for(webhook_id))


async def test_one_batch_with_the_same_webhook_id_twice_marks_one_fresh(gw: Gateway) -> None:
    _, prediction_id = await _recorded_prediction(gw)
    webhook_id = f"msg_{uuid.uuid4().hex}"
    unknown = Delivery(f"msg_{uuid.uuid4().hex}", f"p_{uuid.uuid4().hex}")
    twice = Delivery(webhook_id, prediction_id)
    found = await resolve_and_mark(gw.deps, [twice, unknown, twice])
    assert found[1] is None  # not recorded: the caller looks further (Redis, marker)
    assert found[0] is not None and found[2] is not None
    assert (found[0].fresh, found[2].fresh) == (True, False)
    assert found[0].ref == found[2].ref and found[0].ref.clip_id == "clip_02"
    again = await resolve_and_mark(gw.deps, [twice])
    assert again[0] is not None and not again[0].fresh
