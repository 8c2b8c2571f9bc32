"""A prompt in, a real MP4 out: the six stages, the gateway and the local renderer on real infrastructure."""

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest

from schemas.api import DELIVERY_SIZES, status_rank

from .conftest import Stack

pytestmark = pytest.mark.slow


async def follow(
    session: aiohttp.ClientSession, url: str, generation_id: str, timeout: float = 240
) -> list[dict[str, Any]]:
    """Every WebSocket message until a terminal status."""
    messages: list[dict[str, Any]] = []
    async with session.ws_connect(f"{url}/ws/generations/{generation_id}") as ws:
        async with asyncio.timeout(timeout):
            async for msg in ws:
                assert msg.type == aiohttp.WSMsgType.TEXT
                data = json.loads(msg.data)
                messages.append(data)
                status = data.get("status") or data.get("generation", {}).get("status")
                if data["type"] in ("status", "snapshot") and status in ("completed", "failed", "canceled"):
                    break
    return messages


def probe(path: Path) -> tuple[str, float, int, int]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert container.duration is not None
        return stream.codec_context.name, container.duration / 1_000_000, stream.width, stream.height


@pytest.mark.parametrize(("aspect_ratio", "duration"), [("16:9", 15), ("9:16", 7), ("1:1", 12)])
async def test_generation_completes_with_a_valid_video(
    stack: Stack, aspect_ratio: str, duration: int, tmp_path: Path
) -> None:
    body = {
        "prompt": "A barista pours latte art at dawn; cosy, warm, inviting. Fresh beans, steam, smiles.",
        "duration_seconds": duration,
        "aspect_ratio": aspect_ratio,
        "brand": {
            "name": "Bean There",
            "colors": ["#6F4E37", "#F5DEB3"],
            "tagline": "Coffee worth the trip",
            "guidelines": {"dont": ["cheap"], "required_disclaimer": "Offer valid in participating stores."},
        },
        "options": {"cta_text": "Order ahead today"},
    }
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{stack.url}/api/v1/generations", json=body) as resp:
            assert resp.status == 202
            created = await resp.json()
        generation_id = created["generation_id"]
        messages = await follow(session, stack.url, generation_id)
        assert messages[0]["type"] == "snapshot"
        statuses = [m["status"] for m in messages if m["type"] == "status"]
        ranks = [status_rank(s) for s in statuses]
        assert ranks == sorted(ranks), f"statuses moved backward: {statuses}"
        assert statuses[-1] == "completed", messages[-1]
        assert {"analyzing", "generating"} <= set(statuses) | {messages[0]["generation"]["status"]}

        async with session.get(f"{stack.url}/api/v1/generations/{generation_id}") as resp:
            detail = await resp.json()
        assert detail["status"] == "completed"
        assert detail["progress"]["percent"] == 100
        assert detail["analysis"]["source"] == "offline"
        assert sum(s["duration_seconds"] for s in detail["scenes"]) == duration
        assert [s["kind"] for s in detail["scenes"]] == ["intro", "development", "cta"]
        assert all(c["status"] == "succeeded" and c["url"] for c in detail["clips"])
        assert all("cheap" not in c["prompt"].lower() for c in detail["clips"])
        assert detail["video"]["duration_seconds"] == pytest.approx(duration, abs=0.1)

        out = tmp_path / "final.mp4"
        async with session.get(f"{stack.url}{detail['video']['url']}") as resp:
            assert resp.status == 200 and resp.content_type == "video/mp4"
            out.write_bytes(await resp.read())
    codec, seconds, width, height = probe(out)
    assert codec == "h264"
    assert seconds == pytest.approx(duration, abs=0.1)
    assert (width, height) == DELIVERY_SIZES[(aspect_ratio, "720p")]
    # The contract's storage layout, under the local data dir.
    root = stack.settings.data_dir / "storage" / "generations" / generation_id
    assert (root / "final.mp4").is_file() and (root / "thumbnail.jpg").is_file()
    assert sorted(p.name for p in (root / "clips").iterdir()) == sorted(
        f"{c['clip_id']}.mp4" for c in detail["clips"]
    )


async def test_cancel_ends_in_canceled(stack: Stack) -> None:
    body = {
        "prompt": "A slow pan across a mountain lake at dusk",
        "duration_seconds": 60,
        "options": {"parallel_clips": False},
    }
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{stack.url}/api/v1/generations", json=body) as resp:
            generation_id = (await resp.json())["generation_id"]
        async with session.post(f"{stack.url}/api/v1/generations/{generation_id}/cancel") as resp:
            assert resp.status == 202
        messages = await follow(session, stack.url, generation_id, timeout=60)
        final = messages[-1]
        assert (final.get("status") or final["generation"]["status"]) == "canceled"
        await asyncio.sleep(2)  # the stages must not move it on afterwards
        async with session.get(f"{stack.url}/api/v1/generations/{generation_id}") as resp:
            detail = await resp.json()
        assert detail["status"] == "canceled"
        assert all(c["status"] in ("pending", "canceled", "succeeded") for c in detail["clips"])
        async with session.post(f"{stack.url}/api/v1/generations/{generation_id}/cancel") as resp:
            assert resp.status == 409
            assert (await resp.json())["error"]["code"] == "conflict"


async def test_generate_command_follows_progress_and_downloads(stack: Stack, tmp_path: Path) -> None:
    import sys

    out = tmp_path / "cli.mp4"
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "reelstream"),
        "generate",
        "A paper plane glides over a city",
        "--duration",
        "5",
        "--aspect-ratio",
        "1:1",
        "--api",
        stack.url,
        "--out",
        str(out),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 240)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    assert stdout.decode().strip() == str(out.resolve())
    assert "completed" in stderr.decode()  # the live progress bar ends on the terminal status
    codec, seconds, width, height = probe(out)
    assert (codec, width, height) == ("h264", 720, 720)  # 1:1 at the default 720p
    assert seconds == pytest.approx(5, abs=0.1)


async def test_generate_command_reports_validation_errors(stack: Stack) -> None:
    import sys

    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "reelstream"),
        "generate",
        "x",
        "--duration",
        "500",
        "--api",
        stack.url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    assert "validation_error" in stderr.decode() and "duration_seconds" in stderr.decode()


async def _run_with_flaky_provider(
    stack: Stack, fail: set[tuple[str, int]], *, parallel: bool = True, duration: int = 8
) -> tuple[dict[str, Any], Any]:
    from flaky_provider import FlakyProvider

    from reelstream.service import webhook_secret

    original = stack.deps.provider
    secret = webhook_secret(stack.settings, original)
    assert isinstance(secret, str)
    flaky = FlakyProvider(original, secret, fail)
    stack.deps.provider = flaky
    try:
        async with aiohttp.ClientSession() as session:
            body = {
                "prompt": "Waves crash on a lighthouse in a storm",
                "duration_seconds": duration,
                "options": {"parallel_clips": parallel},
            }
            async with session.post(f"{stack.url}/api/v1/generations", json=body) as resp:
                generation_id = (await resp.json())["generation_id"]
            await follow(session, stack.url, generation_id)
            async with session.get(f"{stack.url}/api/v1/generations/{generation_id}") as resp:
                return await resp.json(), flaky
    finally:
        stack.deps.provider = original
        await flaky.close()


async def test_failed_clip_is_resubmitted_and_the_generation_completes(stack: Stack) -> None:
    detail, flaky = await _run_with_flaky_provider(stack, {("clip_01", 1)})
    assert detail["status"] == "completed", detail["error"]
    clip = next(c for c in detail["clips"] if c["clip_id"] == "clip_01")
    assert clip["attempts"] == 2 and clip["status"] == "succeeded"
    assert flaky.created.count(("clip_01", 1)) == 1 and flaky.created.count(("clip_01", 2)) == 1


async def test_clip_failing_every_attempt_fails_the_generation(stack: Stack) -> None:
    detail, flaky = await _run_with_flaky_provider(stack, {("clip_02", 1), ("clip_02", 2)})
    assert detail["status"] == "failed"
    assert detail["error"]["code"] == "clip_failed" and "clip_02" in detail["error"]["message"]
    assert detail["error"]["stage"] == "completion"
    clip = next(c for c in detail["clips"] if c["clip_id"] == "clip_02")
    assert clip["status"] == "failed" and clip["attempts"] == 2
    assert ("clip_02", 3) not in flaky.created, "no attempt beyond the configured two"


async def test_sequential_clips_are_submitted_one_after_another(stack: Stack) -> None:
    detail, flaky = await _run_with_flaky_provider(stack, set(), parallel=False, duration=12)
    assert detail["status"] == "completed"
    assert [c for c, _ in flaky.created] == [c["clip_id"] for c in detail["clips"]]
    assert len(flaky.created) >= 3 and max(flaky.running_at_create) == 0


async def test_parallel_clips_are_submitted_together(stack: Stack) -> None:
    detail, flaky = await _run_with_flaky_provider(stack, set(), parallel=True, duration=12)
    assert detail["status"] == "completed"
    assert max(flaky.running_at_create) >= 2, flaky.running_at_create
