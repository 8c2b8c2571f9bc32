"""Production providers end to end: OpenAI analysis, Wan clips on Replicate, files in S3, Redis mappings.

The real ``openai``, ``replicate`` and ``aiobotocore`` clients talk to local servers that speak the same
HTTP APIs: a fake OpenAI, a fake Replicate that renders real MP4s and signs its webhooks like Replicate,
and moto's S3 server. Everything else is the real stack: tansu, Postgres, Redis, every stage, the gateway.
"""

import asyncio
import io
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import av
import pytest
import redis.asyncio as aioredis
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from aiohttp import web
from fake_openai import FakeOpenAI
from fake_replicate import WAN_22_T2V_FAST, FakeReplicate
from loopback import serve
from PIL import Image, ImageOps

from reelstream import metrics, overlays
from reelstream.providers import ProviderUnavailable, VideoProvider
from reelstream.webhooks import sign
from schemas.events import ClipSpec, Prediction

from .conftest import Stack, running_stack, stack_settings

pytestmark = pytest.mark.slow

BUCKET = "reelstream-e2e"
TERMINAL = ("completed", "failed", "canceled")


def s3_client(endpoint: str) -> Any:
    return get_session().create_client(
        "s3", endpoint_url=endpoint, config=AioConfig(signature_version="s3v4")
    )


@pytest.fixture(scope="module")
async def replicate() -> AsyncIterator[FakeReplicate]:
    server = await FakeReplicate(max_render_seconds=2.0).start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(scope="module")
async def openai() -> AsyncIterator[FakeOpenAI]:
    server = await FakeOpenAI().start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(scope="module")
async def cloud(
    kafka_bootstrap: str,
    new_database: Callable[[], Awaitable[str]],
    redis_url: str,
    s3_endpoint: str,
    replicate: FakeReplicate,
    openai: FakeOpenAI,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Stack]:
    async with s3_client(s3_endpoint) as s3:
        await s3.create_bucket(Bucket=BUCKET)
    settings = stack_settings(
        tmp_path_factory.mktemp("cloud"),
        kafka_bootstrap,
        await new_database(),
        redis_url=redis_url,
        openai_api_key="sk-test",
        openai_base_url=openai.base_url,
        replicate_api_token=replicate.token,
        replicate_base_url=replicate.base_url,
        replicate_model=WAN_22_T2V_FAST,
        # No webhook secret: it is fetched from the account, as in production.
        replicate_timeout_seconds=1.0,
        prediction_poll_seconds=1.5,
        s3_bucket=BUCKET,
        s3_endpoint_url=s3_endpoint,
        storage_allow_private_urls=True,  # the fake's outputs are on 127.0.0.1
    )
    async with running_stack(settings) as stack:
        yield stack


@pytest.fixture(autouse=True)
def clean_fakes(replicate: FakeReplicate, openai: FakeOpenAI) -> None:
    replicate.reset()
    openai.reset()


@pytest.fixture
async def db(cloud: Stack) -> AsyncIterator[asyncpg.Connection]:
    assert cloud.settings.database_url
    conn = await asyncpg.connect(cloud.settings.database_url)
    try:
        yield conn
    finally:
        await conn.close()


async def submit(
    stack: Stack,
    duration: int = 10,
    *,
    brand: dict[str, Any] | None = None,
    aspect: str = "16:9",
    **options: Any,
) -> str:
    body = {
        "prompt": f"Trail runners at sunrise on a ridge, fast cuts ({uuid.uuid4().hex[:6]})",
        "duration_seconds": duration,
        "aspect_ratio": aspect,
        "brand": brand or {"name": "Acme", "colors": ["#0A84FF"], "tagline": "Run further"},
        "options": {"parallel_clips": True, **options},
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{stack.url}/api/v1/generations", json=body) as resp,
    ):
        assert resp.status == 202, await resp.text()
        generation_id: str = (await resp.json())["generation_id"]
        return generation_id


async def detail(stack: Stack, generation_id: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{stack.url}/api/v1/generations/{generation_id}") as resp,
    ):
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def wait_for(
    stack: Stack, generation_id: str, *, until: Any = None, timeout: float = 120
) -> dict[str, Any]:
    """The detail once ``until(detail)`` holds (default: a terminal status)."""
    until = until or (lambda d: d["status"] in TERMINAL)
    async with asyncio.timeout(timeout):
        while True:
            current = await detail(stack, generation_id)
            if until(current):
                return current
            await asyncio.sleep(0.2)


async def generate(stack: Stack, duration: int = 10, **options: Any) -> dict[str, Any]:
    return await wait_for(stack, await submit(stack, duration, **options))


def created_for(replicate: FakeReplicate, generation_id: str) -> list[dict[str, Any]]:
    return [p for p in replicate.predictions.values() if generation_id in p.get("webhook", "")]


async def test_generation_completes_on_replicate_with_files_in_s3(
    cloud: Stack, replicate: FakeReplicate, db: asyncpg.Connection, redis_url: str, tmp_path: Path
) -> None:
    result = await generate(cloud, duration=10)
    generation_id = result["generation_id"]
    assert result["status"] == "completed", result["error"]
    assert result["analysis"]["source"] == "openai" and result["analysis"]["fallback_reason"] is None
    clips = result["clips"]
    assert len(clips) >= 2 and all(c["status"] == "succeeded" and c["attempts"] == 1 for c in clips)
    assert result["compute_seconds"] > 0
    # The bill: the provider's predict_time at the model's price per second (a setting; H100 by default).
    cost = result["cost"]
    assert cost["compute_seconds"] == pytest.approx(result["compute_seconds"], abs=1e-3)
    assert cost["actual_usd"] == pytest.approx(result["compute_seconds"] * 0.001525, abs=1e-4)
    assert cost["estimated_usd"] == pytest.approx(len(clips) * 30 * 0.001525, abs=1e-4)

    # One prediction per clip, made on the official-model endpoint with a completed-only webhook.
    created = created_for(replicate, generation_id)
    assert sorted(p["id"] for p in created) == sorted(c["prediction_id"] for c in clips)
    assert all(p["model"] == WAN_22_T2V_FAST for p in created)
    assert all(p["webhook_events_filter"] == ["completed"] for p in created)
    assert all("negative_prompt" not in p["input"] for p in created)  # wan-2.2 takes none

    async with s3_client(cloud.settings.s3_endpoint_url) as s3:
        listing = await s3.list_objects_v2(Bucket=BUCKET, Prefix=f"generations/{generation_id}/")
    keys = {item["Key"] for item in listing.get("Contents", [])}
    assert keys == {f"generations/{generation_id}/clips/{c['clip_id']}.mp4" for c in clips} | {
        f"generations/{generation_id}/final.mp4",
        f"generations/{generation_id}/thumbnail.jpg",
    }

    # The download route redirects to a presigned URL that serves the video.
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"{cloud.url}/api/v1/generations/{generation_id}/video", allow_redirects=False
        ) as resp:
            assert resp.status == 302
            location = resp.headers["Location"]
        assert "X-Amz-Signature=" in location
        async with session.get(location) as resp:
            assert resp.status == 200
            (tmp_path / "final.mp4").write_bytes(await resp.read())
        clip_route = f"{cloud.url}/api/v1/generations/{generation_id}/clips/{clips[0]['clip_id']}/video"
        async with session.get(clip_route, allow_redirects=False) as resp:
            assert resp.status == 302
            clip_location = resp.headers["Location"]
        async with session.get(clip_location) as resp:
            assert resp.status == 200
            (tmp_path / "clip.mp4").write_bytes(await resp.read())
    with av.open(str(tmp_path / "clip.mp4")) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    with av.open(str(tmp_path / "final.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.width, stream.height) == (1280, 720)  # 16:9 at the default 720p
        assert sum(1 for p in container.demux(stream) if p.size) == 10 * 24  # 10 s to the frame
        assert [a.codec_context.name for a in container.streams.audio] == ["aac"]
    assert (result["video"]["width"], result["video"]["height"]) == (1280, 720)
    assert result["video"]["fps"] == 24 and result["video"]["has_audio"] is True
    assert (
        result["compliance"]["logo"] == "none"
        and result["compliance"]["disclaimer_on_screen_seconds"] is None
    )

    # Any gateway resolves the webhooks of these predictions from Redis, and from Postgres without it.
    redis = aioredis.Redis.from_url(redis_url)
    try:
        for clip in clips:
            assert await redis.ttl(f"prediction_mapping:{clip['prediction_id']}") > 0
    finally:
        await redis.aclose()
    recorded = await db.fetchval("SELECT count(*) FROM predictions WHERE generation_id = $1", generation_id)
    assert recorded == len(clips)


async def test_throttled_create_waits_and_makes_one_prediction_per_clip(
    cloud: Stack, replicate: FakeReplicate
) -> None:
    replicate.throttle_next(2, retry_after=1)
    result = await generate(cloud, duration=10)
    assert result["status"] == "completed", result["error"]
    assert replicate.throttled == 2
    assert len(created_for(replicate, result["generation_id"])) == len(result["clips"])


async def test_create_with_lost_answer_makes_no_duplicate(
    cloud: Stack, replicate: FakeReplicate, db: asyncpg.Connection
) -> None:
    replicate.hang_next_create(3.0)  # longer than the 1 s create timeout: outcome unknown
    result = await generate(cloud, duration=5)
    assert result["status"] == "completed", result["error"]
    # The webhook may complete the generation before the lost create's retry has looked its prediction
    # up: wait for that retry to record what it found (or made) before counting.
    for _ in range(150):
        open_intents = await db.fetchval(
            "SELECT count(*) FROM submissions WHERE generation_id = $1 AND prediction_id IS NULL",
            result["generation_id"],
        )
        if not open_intents:
            break
        await asyncio.sleep(0.2)
    created = created_for(replicate, result["generation_id"])
    assert sorted(p["id"] for p in created) == sorted(c["prediction_id"] for c in result["clips"])


@pytest.mark.parametrize("fault", ["failed", "aborted"])
async def test_failed_prediction_is_resubmitted(cloud: Stack, replicate: FakeReplicate, fault: str) -> None:
    if fault == "failed":
        replicate.fail_next(1)
    else:
        replicate.abort_next(1)
    result = await generate(cloud, duration=5)
    assert result["status"] == "completed", result["error"]
    assert sorted(c["attempts"] for c in result["clips"])[-2:] == [1, 2]
    created = created_for(replicate, result["generation_id"])
    assert sorted(p["status"] for p in created) == sorted([fault] + ["succeeded"] * len(result["clips"]))


async def test_generation_fails_when_every_attempt_fails(cloud: Stack, replicate: FakeReplicate) -> None:
    replicate.fail_next(10, error="CUDA out of memory")
    result = await generate(cloud, duration=5, parallel_clips=False)
    assert result["status"] == "failed"
    assert result["error"]["stage"] and "CUDA out of memory" in result["error"]["message"]
    created = created_for(replicate, result["generation_id"])
    assert len(created) == cloud.settings.clip_attempts  # the first clip, once per attempt; no more
    assert {p["status"] for p in created} == {"failed"}


class LoseFirstAnswer:
    """The first create reaches Replicate, but its answer dies with the handler (as in a crash)."""

    def __init__(self, inner: VideoProvider) -> None:
        self.inner = inner
        self.name = inner.name
        #: Whether each create was told to look its prediction up first (an intent tried before).
        self.retries: list[bool] = []

    async def create(
        self, spec: ClipSpec, *, webhook_url: str, marker: str, since: datetime | None = None
    ) -> str:
        self.retries.append(since is not None)
        prediction_id = await self.inner.create(spec, webhook_url=webhook_url, marker=marker, since=since)
        if len(self.retries) == 1:
            raise ProviderUnavailable("connection reset after the prediction was made")
        return prediction_id

    async def find(self, marker: str, since: datetime) -> str | None:
        return await self.inner.find(marker, since)

    async def get(self, prediction_id: str) -> Prediction:
        return await self.inner.get(prediction_id)

    async def cancel(self, prediction_id: str) -> None:
        await self.inner.cancel(prediction_id)

    async def close(self) -> None:
        await self.inner.close()


async def test_submission_rolled_back_after_the_create_makes_no_duplicate(
    cloud: Stack, replicate: FakeReplicate
) -> None:
    original = cloud.deps.provider
    lossy = LoseFirstAnswer(original)
    cloud.deps.provider = lossy
    try:
        result = await generate(cloud, duration=10)
    finally:
        cloud.deps.provider = original
    assert result["status"] == "completed", result["error"]
    assert lossy.retries[0] is False and True in lossy.retries  # the redelivery looked first
    created = created_for(replicate, result["generation_id"])
    assert sorted(p["id"] for p in created) == sorted(c["prediction_id"] for c in result["clips"])


async def test_webhook_delivered_twice_is_handled_once(
    cloud: Stack, replicate: FakeReplicate, db: asyncpg.Connection
) -> None:
    replicate.duplicate_webhooks = True
    result = await generate(cloud, duration=10)
    assert result["status"] == "completed", result["error"]
    ids = [c["prediction_id"] for c in result["clips"]]
    await replicate.wait_idle()
    delivered = [d for d in replicate.webhook_deliveries if d[1] == 200]
    assert len(delivered) == 2 * len(ids)  # both copies were answered 2xx
    rows = await db.fetch("SELECT prediction_id FROM webhook_deliveries WHERE prediction_id = ANY($1)", ids)
    assert sorted(r["prediction_id"] for r in rows) == sorted(ids)  # one recorded delivery each
    assert all(c["attempts"] == 1 for c in result["clips"])


async def test_webhook_arriving_before_the_submission_is_recorded_still_resolves(
    cloud: Stack, replicate: FakeReplicate
) -> None:
    replicate.webhook_before_response = True
    result = await generate(cloud, duration=10)
    assert result["status"] == "completed", result["error"]
    assert all(c["attempts"] == 1 for c in result["clips"])
    assert len(created_for(replicate, result["generation_id"])) == len(result["clips"])


async def test_lost_webhooks_are_completed_by_polling(cloud: Stack, replicate: FakeReplicate) -> None:
    replicate.drop_webhooks = True
    result = await generate(cloud, duration=10)
    assert result["status"] == "completed", result["error"]
    assert replicate.webhook_deliveries == []
    assert all(c["status"] == "succeeded" and c["attempts"] == 1 for c in result["clips"])


async def test_a_long_prediction_is_polled_again_until_it_ends(
    cloud: Stack, replicate: FakeReplicate
) -> None:
    replicate.drop_webhooks = True
    replicate.hold_predictions = True
    generation_id = await submit(cloud, duration=5)
    # The poll finds the predictions running: the clips show it.
    await wait_for(
        cloud,
        generation_id,
        until=lambda d: d["clips"] and all(c["status"] == "processing" for c in d["clips"]),
    )
    replicate.release()
    result = await wait_for(cloud, generation_id)  # a later poll finds them finished
    assert result["status"] == "completed", result["error"]
    assert replicate.webhook_deliveries == []


async def test_a_generations_clips_are_fetched_and_finished_side_by_side(
    cloud: Stack, replicate: FakeReplicate
) -> None:
    """Clips that land together are not finished one after another: all their outputs are being fetched
    at once (the output host holds every download until each clip's has started)."""
    replicate.hold_files = True
    generation_id = await submit(cloud, duration=15)
    planned = await wait_for(cloud, generation_id, until=lambda d: len(d["clips"]) > 1)
    try:
        for _ in range(300):
            if replicate.files_waiting == len(planned["clips"]):
                break
            await asyncio.sleep(0.1)
        assert replicate.files_waiting == len(planned["clips"])
    finally:
        replicate.release_files()
    result = await wait_for(cloud, generation_id)
    assert result["status"] == "completed", result["error"]
    assert result["video"]["duration_seconds"] == 15


async def eventually(condition: Callable[[], bool], seconds: float = 60) -> None:
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"still not so after {seconds:.0f} s")


def transitions_made(when: str) -> float:
    return metrics.REGISTRY.get_sample_value("reelstream_transitions_total", {"when": when}) or 0.0


async def test_each_crossfade_is_made_as_soon_as_both_of_its_clips_are_in(
    cloud: Stack, replicate: FakeReplicate
) -> None:
    """Clips landing one by one: the crossfade of each boundary is made when its second clip is finished,
    so the join after the last webhook makes none of them, and the video is whole."""
    early, at_join = transitions_made("early"), transitions_made("at_join")
    replicate.hold_predictions = True
    try:
        generation_id = await submit(cloud, duration=15, transitions="crossfade")
        planned = await wait_for(cloud, generation_id, until=lambda d: len(d["clips"]) > 1)
        clips = len(planned["clips"])
        for landed in range(1, clips + 1):
            await eventually(lambda: replicate.held > 0)
            replicate.release_next()  # clips are created, so held and released, in playback order
            if landed < clips:  # this clip's crossfade with the one before it is made (none for the first)
                await wait_for(
                    cloud,
                    generation_id,
                    until=lambda d, n=landed: sum(c["status"] == "succeeded" for c in d["clips"]) >= n,
                )
                await eventually(lambda n=landed: transitions_made("early") - early >= n - 1)
    finally:
        replicate.release()
    result = await wait_for(cloud, generation_id)
    assert result["status"] == "completed", result["error"]
    assert result["video"]["duration_seconds"] == 15
    assert transitions_made("early") - early == clips - 1
    assert transitions_made("at_join") == at_join


async def test_forged_or_stale_signatures_are_refused(cloud: Stack, replicate: FakeReplicate) -> None:
    body = b'{"id": "forged", "status": "succeeded", "output": "https://evil.example/x.mp4"}'
    url = f"{cloud.url}/api/v1/webhooks/replicate"
    forged = sign("whsec_" + "QUJD" * 8, body, webhook_id="msg_forged")
    stale = sign(replicate.secret, body, webhook_id="msg_stale", at=datetime.now(UTC) - timedelta(minutes=10))
    fresh = sign(replicate.secret, body, webhook_id=f"msg_{uuid.uuid4().hex}")
    async with aiohttp.ClientSession() as session:
        for headers, expected in ((forged, 401), (stale, 401), ({}, 401), (fresh, 200)):
            async with session.post(url, data=body, headers=headers) as resp:
                assert resp.status == expected, await resp.text()
                if expected == 401:
                    assert (await resp.json())["error"]["code"] == "unauthorized"


async def test_cancel_cancels_the_predictions_at_replicate(cloud: Stack, replicate: FakeReplicate) -> None:
    replicate.hold_predictions = True
    generation_id = await submit(cloud, duration=10)
    submitted = await wait_for(
        cloud,
        generation_id,
        until=lambda d: d["clips"] and all(c["prediction_id"] for c in d["clips"]),
    )
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{cloud.url}/api/v1/generations/{generation_id}/cancel") as resp,
    ):
        assert resp.status == 202
    result = await wait_for(cloud, generation_id)
    assert result["status"] == "canceled"
    ids = {c["prediction_id"] for c in submitted["clips"]}
    assert ids <= set(replicate.canceled_ids)
    assert {replicate.predictions[i]["status"] for i in ids} == {"canceled"}


# -- outcomes: one decision for the clips and completion stages ----------------------------------------


async def test_a_refused_create_fails_the_generation_creates_nothing_more_and_cancels_the_rest(
    cloud: Stack, replicate: FakeReplicate
) -> None:
    replicate.reject_creates = {2}  # a 3-clip generation: the second create answers 422
    result = await generate(cloud, duration=15)
    assert result["status"] == "failed"
    assert result["error"]["code"] == "provider_rejected" and result["error"]["stage"] == "clips"
    created = created_for(replicate, result["generation_id"])
    print(f"\nclips planned 3, create requests {len(replicate.create_requests)}, predictions {len(created)}")
    assert len(replicate.create_requests) == 2  # nothing was created after the refusal
    assert len(created) == 1
    async with asyncio.timeout(10):  # canceled right after the failure was recorded
        while True:
            if replicate.canceled_ids:
                break
            await asyncio.sleep(0.05)
    assert replicate.canceled_ids == [created[0]["id"]]


async def test_a_prediction_that_succeeded_without_output_is_made_again(
    cloud: Stack, replicate: FakeReplicate
) -> None:
    replicate.succeed_without_output_next(1)
    result = await generate(cloud, duration=10)
    assert result["status"] == "completed", result["error"]
    created = created_for(replicate, result["generation_id"])
    assert len(created) == len(result["clips"]) + 1  # exactly one more: the clip made again
    assert sum(1 for p in created if p["status"] == "succeeded" and p["output"] is None) == 1
    assert sorted(c["attempts"] for c in result["clips"])[-1] == 2


async def test_an_output_host_answering_503_is_waited_out_without_paying_again(
    cloud: Stack, replicate: FakeReplicate
) -> None:
    replicate.file_errors = [503, 503]
    result = await generate(cloud, duration=10)
    assert result["status"] == "completed", result["error"]
    assert replicate.file_errors == []  # both were met
    assert len(created_for(replicate, result["generation_id"])) == len(result["clips"])
    assert all(c["attempts"] == 1 for c in result["clips"])


async def test_an_output_refused_for_good_fails_the_attempt_and_the_clip_is_made_again(
    cloud: Stack, replicate: FakeReplicate
) -> None:
    # Gone for good: a duplicate outcome of that prediction (a poll beside its webhook) meets 404 too.
    replicate.refuse_outputs = 1
    result = await generate(cloud, duration=10)
    assert result["status"] == "completed", result["error"]
    assert len(created_for(replicate, result["generation_id"])) == len(result["clips"]) + 1
    assert sorted(c["attempts"] for c in result["clips"])[-1] == 2


# -- the finished ad: the brand applied to plain model clips -------------------------------------------


@pytest.fixture(scope="module")
async def logo_url() -> AsyncIterator[str]:
    """A brand's logo on a web server: a magenta PNG."""
    buf = io.BytesIO()
    Image.new("RGBA", (200, 100), (255, 0, 255, 255)).save(buf, "PNG")

    async def logo(_: web.Request) -> web.Response:
        return web.Response(body=buf.getvalue(), content_type="image/png")

    app = web.Application()
    app.router.add_get("/logo.png", logo)
    runner, port = await serve(app)
    try:
        yield f"http://127.0.0.1:{port}/logo.png"
    finally:
        await runner.cleanup()


async def download_final(stack: Stack, generation_id: str, dest: Path) -> Path:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{stack.url}/api/v1/generations/{generation_id}/video") as resp:
            assert resp.status == 200
            await asyncio.to_thread(dest.write_bytes, await resp.read())
    return dest


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="install the Debian package tesseract-ocr")
async def test_a_portrait_ad_carries_the_brand_whatever_the_model_rendered(
    cloud: Stack, logo_url: str, tmp_path: Path
) -> None:
    brand = {
        "name": "Acme",
        "colors": ["#0A84FF"],
        "tagline": "Run further",
        "logo_url": logo_url,
        "guidelines": {"dont": ["cheap"], "required_disclaimer": "Terms apply. Offer ends 31 March."},
    }
    result = await generate(cloud, 5, brand=brand, aspect="9:16", cta_text="Shop now")
    assert result["status"] == "completed", result["error"]
    assert result["video"]["width"] == 720 and result["video"]["height"] == 1280
    assert result["compliance"]["logo"] == "placed"
    assert result["compliance"]["disclaimer_on_screen_seconds"] >= 3.0
    final = await download_final(cloud, result["generation_id"], tmp_path / "final.mp4")
    with av.open(str(final)) as container:
        assert sum(1 for p in container.demux(video=0) if p.size) == 5 * 24
    with av.open(str(final)) as container:
        frames = {i: f.to_image() for i, f in enumerate(container.decode(video=0)) if i in (10, 110)}
    logo_box = overlays.place_logo(Image.new("RGBA", (200, 100)), 720, 1280).box
    centre = ((logo_box.left + logo_box.right) // 2, (logo_box.top + logo_box.bottom) // 2)
    for i, frame in frames.items():
        r, g, b = frame.getpixel(centre)[:3]
        assert r > 200 and g < 90 and b > 200, f"no logo in frame {i}"
    safe = overlays.safe_area(720, 1280)
    card = ImageOps.grayscale(frames[110].crop((safe.left, safe.top, safe.right, safe.bottom)))
    card.save(tmp_path / "card.png")
    read = subprocess.run(
        ["tesseract", str(tmp_path / "card.png"), "-", "--psm", "6"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "terms apply" in " ".join(read.stdout.split()).casefold(), read.stdout


async def test_a_bad_logo_and_an_unknown_font_still_make_the_video_and_the_report_says_why(
    cloud: Stack, logo_url: str
) -> None:
    brand = {
        "name": "Acme",
        "fonts": ["No Such Font Sans"],
        "logo_url": logo_url.replace("logo.png", "missing.png"),
    }
    result = await generate(cloud, 5, brand=brand, aspect="1:1", resolution="480p", transitions="cut")
    assert result["status"] == "completed", result["error"]
    assert (result["video"]["width"], result["video"]["height"]) == (480, 480)
    compliance = result["compliance"]
    assert compliance["logo"].startswith("not used") and "404" in compliance["logo"]
    assert "No Such Font Sans" in compliance["fonts"] and "fallback" in compliance["fonts"]
