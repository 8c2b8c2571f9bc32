"""The fake Replicate server speaks the API: driven here through the real ``replicate`` client and httpx."""

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import loopback
import pydantic.v1
import pytest
from aiohttp import web
from fake_replicate import WAN_22_T2V_FAST, WAN_25_T2V, FakeReplicate
from replicate.client import Client
from replicate.exceptions import ReplicateError
from replicate.webhook import Webhooks, WebhookSigningSecret

from reelstream.media import probe

PROMPT = "Neon city at night, running shoes splashing through puddles"


@dataclass
class Receiver:
    """A webhook endpoint: answers with queued statuses (then 200) and keeps every delivery."""

    url: str = ""
    statuses: deque[int] = field(default_factory=deque)
    received: list[tuple[dict[str, str], str]] = field(default_factory=list)
    arrived: asyncio.Queue[tuple[dict[str, str], str]] = field(default_factory=asyncio.Queue)

    async def handle(self, request: web.Request) -> web.Response:
        delivery = (dict(request.headers), await request.text())
        self.received.append(delivery)
        status = self.statuses.popleft() if self.statuses else 200
        if status < 300:
            self.arrived.put_nowait(delivery)
        return web.Response(status=status)

    async def next(self, timeout: float = 30) -> tuple[dict[str, str], str]:
        return await asyncio.wait_for(self.arrived.get(), timeout)


@pytest.fixture
async def fake() -> AsyncIterator[FakeReplicate]:
    server = await FakeReplicate().start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def client(fake: FakeReplicate) -> AsyncIterator[Client]:
    replicate = Client(api_token=fake.token, base_url=fake.base_url)
    try:
        yield replicate
    finally:
        await replicate._async_client.aclose()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = Receiver()
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    runner, port = await loopback.serve(app)
    hook.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield hook
    finally:
        await runner.cleanup()


def raw(fake: FakeReplicate) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=fake.base_url, headers={"Authorization": f"Bearer {fake.token}"})


async def wait_status(fake: FakeReplicate, pid: str, status: str) -> None:
    for _ in range(500):
        if fake.predictions[pid]["status"] == status:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{pid} never reached {status}: {fake.predictions[pid]['status']}")


async def test_create_signed_webhook_and_real_mp4(
    fake: FakeReplicate, client: Client, receiver: Receiver, tmp_path: Path
) -> None:
    model = await client.models.async_get(WAN_22_T2V_FAST)
    assert model.latest_version is not None
    props = model.latest_version.openapi_schema["components"]["schemas"]["Input"]["properties"]
    assert props["num_frames"]["minimum"] == 81 and "negative_prompt" not in props
    secret = await client.webhooks.default.async_secret()
    assert secret.key == fake.secret and secret.key.startswith("whsec_")

    pred = await client.predictions.async_create(
        model=WAN_22_T2V_FAST,
        input={"prompt": PROMPT, "aspect_ratio": "9:16", "seed": 7},
        webhook=receiver.url,
        webhook_events_filter=["completed"],
    )
    assert pred.status == "starting" and pred.model == WAN_22_T2V_FAST and len(pred.id) == 26
    assert pred.version == model.latest_version.id and pred.urls is not None

    headers, body = await receiver.next()
    assert Webhooks.validate(headers=headers, body=body, secret=secret, tolerance=300) is None
    with pytest.raises(ValueError, match="invalid"):
        forged = WebhookSigningSecret(key="whsec_" + "A" * 44)
        Webhooks.validate(headers=headers, body=body, secret=forged, tolerance=300)

    done = await client.predictions.async_get(pred.id)
    assert done.status == "succeeded" and done.completed_at and done.metrics
    assert done.metrics["predict_time"] > 0 and isinstance(done.output, str)
    async with httpx.AsyncClient() as http:  # delivery URLs need no token
        video = await http.get(done.output)
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    (tmp_path / "clip.mp4").write_bytes(video.content)
    info = await asyncio.to_thread(probe, tmp_path / "clip.mp4")
    assert (info.codec, info.width, info.height, info.fps) == ("h264", 480, 832, 16.0)
    assert info.duration_seconds == pytest.approx(81 / 16, abs=0.1)
    assert fake.webhook_deliveries == [(headers["webhook-id"], 200)]


async def test_bad_token_and_unknown_model(fake: FakeReplicate) -> None:
    bad = Client(api_token="r8_wrong", base_url=fake.base_url)
    with pytest.raises(ReplicateError) as exc:
        await bad.models.async_get(WAN_25_T2V)
    await bad._async_client.aclose()
    assert exc.value.status == 401 and exc.value.detail == "Invalid token."
    async with raw(fake) as http:
        assert (await http.get("/v1/models/wan-video/nope")).json() == {"detail": "Not found.", "status": 404}


async def test_invalid_input_is_422_and_creates_nothing(fake: FakeReplicate, client: Client) -> None:
    with pytest.raises(ReplicateError) as exc:
        await client.predictions.async_create(
            model=WAN_22_T2V_FAST, input={"prompt": PROMPT, "negative_prompt": "blurry"}
        )
    assert exc.value.status == 422 and exc.value.title == "Input validation failed"
    assert "input.negative_prompt" in (exc.value.detail or "")
    async with raw(fake) as http:
        bad = {"input": {"num_frames": 50, "go_fast": "yes", "duration": 7}}
        resp = await http.post(f"/v1/models/{WAN_22_T2V_FAST}/predictions", json=bad)
        fields = {(f["field"], f["type"]) for f in resp.json()["invalid_fields"]}
        resp25 = await http.post(
            f"/v1/models/{WAN_25_T2V}/predictions", json={"input": {"prompt": "x", "duration": 7}}
        )
    assert resp.status_code == 422 and fields == {
        ("input.prompt", "required"),
        ("input.num_frames", "greater_equal"),
        ("input.go_fast", "invalid_type"),
        ("input.duration", "additional_property_not_allowed"),
    }
    assert resp25.status_code == 422 and resp25.json()["invalid_fields"][0]["type"] == "enum"
    assert fake.predictions == {} and len(fake.create_requests) == 3


async def test_throttle_answers_429_with_retry_after(fake: FakeReplicate, client: Client) -> None:
    fake.throttle_next(2, retry_after=3)
    async with raw(fake) as http:
        resp = await http.post(f"/v1/models/{WAN_25_T2V}/predictions", json={"input": {"prompt": PROMPT}})
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "3"
    assert resp.json()["status"] == 429
    with pytest.raises(ReplicateError) as exc:  # the client's RetryTransport never retries a POST
        await client.predictions.async_create(model=WAN_25_T2V, input={"prompt": PROMPT})
    assert exc.value.status == 429 and fake.predictions == {} and fake.throttled == 2
    pred = await client.predictions.async_create(model=WAN_25_T2V, input={"prompt": PROMPT})
    assert list(fake.predictions) == [pred.id]


async def test_list_pages_newest_first(fake: FakeReplicate, client: Client) -> None:
    fake.page_size, fake.hold_predictions = 2, True
    for i in range(5):
        await client.predictions.async_create(model=WAN_25_T2V, input={"prompt": f"{PROMPT} {i}"})
    seen: list[str] = []
    page = await client.predictions.async_list()
    while True:
        assert len(page.results) <= 2
        seen += [p.id for p in page.results]
        if page.next is None:
            break
        page = await client.predictions.async_list(page.next)
    assert seen == list(reversed(fake.predictions))


async def test_cancel_mid_flight_sends_canceled_webhook(
    fake: FakeReplicate, client: Client, receiver: Receiver
) -> None:
    fake.hold_predictions = True
    pred = await client.predictions.async_create(
        model=WAN_22_T2V_FAST,
        input={"prompt": PROMPT},
        webhook=receiver.url,
        webhook_events_filter=["completed"],
    )
    await wait_status(fake, pred.id, "processing")
    canceled = await client.predictions.async_cancel(pred.id)
    assert canceled.status == "canceled" and canceled.completed_at
    headers, body = await receiver.next()
    Webhooks.validate(headers=headers, body=body, secret=WebhookSigningSecret(key=fake.secret))
    assert '"status": "canceled"' in body and fake.canceled_ids == [pred.id]
    fake.release()
    await fake.wait_idle()
    assert fake.predictions[pred.id]["status"] == "canceled" and len(receiver.received) == 1
    await client.predictions.async_cancel(pred.id)  # cancelling a finished prediction changes nothing
    assert fake.canceled_ids == [pred.id, pred.id] and len(fake.webhook_deliveries) == 1


async def test_abort_is_visible_in_raw_json_only(fake: FakeReplicate, client: Client) -> None:
    fake.abort_next()
    pred = await client.predictions.async_create(model=WAN_25_T2V, input={"prompt": PROMPT})
    await fake.wait_idle()
    async with raw(fake) as http:
        body: dict[str, Any] = (await http.get(f"/v1/predictions/{pred.id}")).json()
    assert body["status"] == "aborted" and body["output"] is None
    with pytest.raises(pydantic.v1.ValidationError):  # Prediction.status has no "aborted"
        await client.predictions.async_get(pred.id)


async def test_failure_retries_and_duplicates_keep_one_webhook_id(
    fake: FakeReplicate, client: Client, receiver: Receiver
) -> None:
    fake.fail_next(error="CUDA out of memory")
    fake.duplicate_webhooks = True
    receiver.statuses.extend([500, 503])
    pred = await client.predictions.async_create(
        model=WAN_25_T2V, input={"prompt": PROMPT}, webhook=receiver.url
    )
    await fake.wait_idle()
    ids = {h["webhook-id"] for h, _ in receiver.received}
    assert len(ids) == 1 and [s for _, s in fake.webhook_deliveries] == [500, 503, 200, 200]
    done = await client.predictions.async_get(pred.id)
    assert done.status == "failed" and done.error == "CUDA out of memory" and done.output is None


async def test_hang_and_webhook_before_response(
    fake: FakeReplicate, client: Client, receiver: Receiver
) -> None:
    # The client sends creates with timeout=None (no timeout at all, whatever Client(timeout=) says),
    # so the caller has to bound them itself, as reelstream.providers.replicate does.
    fake.hang_next_create(5)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(
            client.predictions.async_create(model=WAN_25_T2V, input={"prompt": PROMPT}), 0.3
        )
    assert len(fake.predictions) == 1  # created all the same: the client cannot know

    fake.webhook_before_response, fake.max_render_seconds = True, 0.5
    pred = await client.predictions.async_create(
        model=WAN_22_T2V_FAST, input={"prompt": PROMPT}, webhook=receiver.url
    )
    assert pred.status == "starting"  # the response still shows the prediction as created...
    _, body = receiver.arrived.get_nowait()  # ...but the webhook is already in
    assert f'"id": "{pred.id}"' in body and '"status": "succeeded"' in body


async def test_drop_webhooks_still_completes(fake: FakeReplicate, client: Client, receiver: Receiver) -> None:
    fake.drop_webhooks, fake.max_render_seconds = True, 0.5
    pred = await client.predictions.async_create(
        model=WAN_25_T2V, input={"prompt": PROMPT}, webhook=receiver.url
    )
    await fake.wait_idle()
    assert (await client.predictions.async_get(pred.id)).status == "succeeded"
    assert receiver.received == [] and fake.webhook_deliveries == []
