"""The Replicate provider, through the real ``replicate`` client, against a Replicate-compatible server."""

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fake_replicate import WAN_22_T2V_FAST, WAN_25_T2V, FakeReplicate

from reelstream.providers import ProviderError, ProviderUnavailable, marker, webhook_url
from reelstream.providers.replicate import ReplicateVideoProvider
from schemas.events import ClipSpec

GEN = "gen_" + "ab" * 16
#: When a test's submission intent was recorded: a little before the test made anything.
INTENT_TIME = datetime.now(UTC) - timedelta(minutes=1)


def spec(index: int = 0, **extra: Any) -> ClipSpec:
    fields: dict[str, Any] = {
        "clip_id": f"clip_{index:02d}",
        "scene_id": "scene_00",
        "scene_kind": "intro",
        "index": index,
        "duration_seconds": 4.0,
        "aspect_ratio": "16:9",
        "width": 832,
        "height": 480,
        "prompt": f"A lighthouse in a storm, shot {index}",
        "negative_prompt": "text, watermark",
        "caption": "",
        "colors": [],
        "seed": 7,
    }
    return ClipSpec.model_validate(fields | extra)


@pytest.fixture
async def fake() -> AsyncIterator[FakeReplicate]:
    server = await FakeReplicate(max_render_seconds=1.0).start()
    server.drop_webhooks = True  # nobody listens in these tests
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def provider(fake: FakeReplicate) -> AsyncIterator[ReplicateVideoProvider]:
    p = ReplicateVideoProvider(
        api_token=fake.token, base_url=fake.base_url, model=WAN_22_T2V_FAST, timeout=0.5, max_wait=5
    )
    try:
        yield p
    finally:
        await p.close()


async def create(provider: ReplicateVideoProvider, index: int = 0, attempt: int = 1) -> str:
    mark = marker(GEN, f"clip_{index:02d}", attempt)
    return await provider.create(
        spec(index), webhook_url=webhook_url("https://reel.example", mark), marker=mark
    )


async def test_create_sends_the_webhook_marker_filter_and_only_inputs_the_model_takes(
    fake: FakeReplicate, provider: ReplicateVideoProvider
) -> None:
    prediction_id = await create(provider)
    assert list(fake.predictions) == [prediction_id]
    body = fake.create_requests[-1]
    assert body["webhook"] == f"https://reel.example/api/v1/webhooks/replicate?marker={GEN}.clip_00.1"
    assert body["webhook_events_filter"] == ["completed"]
    assert "negative_prompt" not in body["input"]  # wan-2.2 has no such input
    assert body["input"]["prompt"] == "A lighthouse in a storm, shot 0"
    assert body["input"]["seed"] == 7


async def test_a_model_with_other_inputs_gets_its_own(fake: FakeReplicate) -> None:
    p = ReplicateVideoProvider(api_token=fake.token, base_url=fake.base_url, model=WAN_25_T2V)
    try:
        await create(p)  # type: ignore[arg-type]
    finally:
        await p.close()
    sent = fake.create_requests[-1]["input"]
    assert sent["negative_prompt"] == "text, watermark"
    assert sent["size"] == "832*480" and sent["duration"] == 5


async def test_throttled_create_waits_and_makes_one_prediction(
    fake: FakeReplicate, provider: ReplicateVideoProvider
) -> None:
    fake.throttle_next(2, retry_after=1)
    prediction_id = await create(provider)
    assert fake.throttled == 2
    assert list(fake.predictions) == [prediction_id]


async def test_throttling_beyond_the_cap_is_unavailable_not_rejected(fake: FakeReplicate) -> None:
    p = ReplicateVideoProvider(
        api_token=fake.token, base_url=fake.base_url, model=WAN_22_T2V_FAST, create_attempts=2, max_wait=1
    )
    fake.throttle_next(5, retry_after=1)
    try:
        with pytest.raises(ProviderUnavailable):
            await create(p)  # type: ignore[arg-type]
    finally:
        await p.close()
    assert fake.predictions == {}


async def test_create_with_lost_answer_adopts_the_prediction_instead_of_paying_twice(
    fake: FakeReplicate, provider: ReplicateVideoProvider
) -> None:
    for index in range(1, 4):
        await create(provider, index)
    fake.hang_next_create(3.0)  # created, but the answer comes after the client's 0.5 s
    prediction_id = await create(provider, 0)
    ours = [p for p in fake.predictions.values() if p["input"]["prompt"].endswith("shot 0")]
    assert [p["id"] for p in ours] == [prediction_id]
    assert len(fake.create_requests) == 4  # 3 others, the lost one, and no second create for shot 0
    # A different attempt of the same clip is a different submission: it is created anew.
    again = await create(provider, 0, attempt=2)
    assert again != prediction_id


async def test_get_reads_statuses_the_client_model_rejects(
    fake: FakeReplicate, provider: ReplicateVideoProvider
) -> None:
    fake.abort_next(1)
    prediction_id = await create(provider)
    await fake.wait_idle()
    prediction = await provider.get(prediction_id)
    assert prediction.status == "aborted" and prediction.terminal


async def test_get_of_a_finished_prediction_has_output_and_predict_time(
    fake: FakeReplicate, provider: ReplicateVideoProvider
) -> None:
    prediction_id = await create(provider)
    await fake.wait_idle()
    prediction = await provider.get(prediction_id)
    assert prediction.status == "succeeded"
    assert prediction.output_url == f"{fake.base_url}/files/{prediction_id}.mp4"
    assert (prediction.metrics or {})["predict_time"] > 0


async def test_cancel_reaches_replicate(fake: FakeReplicate, provider: ReplicateVideoProvider) -> None:
    fake.hold_predictions = True
    prediction_id = await create(provider)
    await provider.cancel(prediction_id)
    assert fake.canceled_ids == [prediction_id]
    assert (await provider.get(prediction_id)).status == "canceled"
    await provider.cancel("no_such_prediction")  # already gone: not an error


async def test_webhook_secret_comes_from_the_account(
    fake: FakeReplicate, provider: ReplicateVideoProvider
) -> None:
    assert await provider.webhook_secret() == fake.secret


async def test_unknown_model_and_bad_token_are_rejected(fake: FakeReplicate) -> None:
    for model, token in (("wan-video/no-such-model", fake.token), (WAN_22_T2V_FAST, "r8_wrong")):
        p = ReplicateVideoProvider(api_token=token, base_url=fake.base_url, model=model)
        try:
            with pytest.raises(ProviderError):
                await create(p)  # type: ignore[arg-type]
        finally:
            await p.close()
    assert fake.predictions == {}


async def test_unreachable_replicate_is_unavailable() -> None:
    from reelstream.embedded import free_port

    p = ReplicateVideoProvider(
        api_token="r8_x", base_url=f"http://127.0.0.1:{free_port()}", model=WAN_22_T2V_FAST, timeout=0.5
    )
    try:
        with pytest.raises(ProviderUnavailable):
            await create(p)  # type: ignore[arg-type]
    finally:
        await p.close()


def test_model_must_be_owner_and_name() -> None:
    with pytest.raises(ValueError, match="owner/name"):
        ReplicateVideoProvider(api_token="r8", model="wan-2.2")


async def test_a_retried_submission_adopts_what_an_earlier_try_created(
    fake: FakeReplicate, provider: ReplicateVideoProvider
) -> None:
    # As after a crash between Replicate's answer and our commit: the same marker comes again.
    first = await create(provider)
    mark = marker(GEN, "clip_00", 1)
    again = await provider.create(
        spec(0), webhook_url=webhook_url("https://reel.example", mark), marker=mark, since=INTENT_TIME
    )
    assert again == first
    assert list(fake.predictions) == [first]


async def test_the_lookup_reads_every_page_back_to_the_intent(
    fake: FakeReplicate, provider: ReplicateVideoProvider
) -> None:
    # A busy account: ours is far down the listing, behind 7 pages of other predictions.
    fake.page_size = 3
    first = await create(provider, 0)
    for index in range(1, 22):
        await create(provider, index)
    mark = marker(GEN, "clip_00", 1)
    again = await provider.create(
        spec(0), webhook_url=webhook_url("https://reel.example", mark), marker=mark, since=INTENT_TIME
    )
    assert again == first
    assert len(fake.predictions) == 22  # nothing paid twice


async def test_a_prediction_with_the_same_input_but_another_marker_is_never_adopted(
    fake: FakeReplicate, provider: ReplicateVideoProvider
) -> None:
    # The planner is deterministic: another generation's clip can have exactly our input.
    other_generation = "gen_" + "cd" * 16
    other_mark = marker(other_generation, "clip_00", 1)
    theirs = await provider.create(
        spec(0), webhook_url=webhook_url("https://reel.example", other_mark), marker=other_mark
    )
    fake.list_shows_webhook = False  # even where the listing leaves webhooks out
    mark = marker(GEN, "clip_00", 1)
    ours = await provider.create(
        spec(0), webhook_url=webhook_url("https://reel.example", mark), marker=mark, since=INTENT_TIME
    )
    assert ours != theirs
    assert len(fake.predictions) == 2
