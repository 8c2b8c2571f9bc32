"""The analytics example (examples/analytics, a faust-streaming app) against a real broker (tansu).

A known set of generations goes onto the topics as the stages would publish them (CloudEvents, keyed by
generation id, with repeats, as at-least-once delivery brings); the app's web view must then report
exactly their counts by outcome, their time to complete (p50, p95) and their cost.
"""

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from reelstream import embedded, kafka
from reelstream.events import make_event
from schemas import topics
from schemas.api import Progress, Video
from schemas.events import GenerationCompleted, GenerationStatusChanged

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
USD_PER_CLIP = 0.25


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[str]:
    """A broker of its own: the app reads the real topic names, which other tests' stacks also use."""
    service = await embedded.start_kafka(tmp_path / "kafka")
    try:
        yield service.url
    finally:
        await service.stop()


def _id(n: int) -> str:
    return f"gen_{n:032x}"


def _status(gid: str, status: str, clips: int, at: datetime) -> GenerationStatusChanged:
    progress = Progress(stage=status, percent=100 if status == "completed" else 50, clips_total=clips)
    return GenerationStatusChanged(generation_id=gid, status=status, progress=progress, at=at)


async def _publish(bootstrap: str) -> None:
    """Five generations: three completed in 10, 20 and 40 s (2, 3 and 3 clips, 5 s videos), one failed
    (2 clips), one canceled (no clips yet); every terminal event sent twice."""
    producer = kafka.Producer(bootstrap)
    await producer.start()
    now = datetime.now(UTC)
    video = Video(url="/v", duration_seconds=5, width=1280, height=720)
    events: list[tuple[str, Any]] = []
    plan = [(1, "completed", 2, 10), (2, "completed", 3, 20), (3, "completed", 3, 40), (4, "failed", 2, 5)]
    plan.append((5, "canceled", 0, 1))
    try:
        for n, outcome, clips, seconds in plan:
            gid = _id(n)
            start = now - timedelta(seconds=seconds)
            generating = _status(gid, "generating", clips, start)
            events.append(
                (
                    topics.GENERATION_STATUS,
                    make_event(topics.GENERATION_STATUS, generating, source="/t", subject=gid),
                )
            )
            end = make_event(
                topics.GENERATION_STATUS, _status(gid, outcome, clips, now), source="/t", subject=gid
            )
            events += [(topics.GENERATION_STATUS, end)] * 2
            if outcome == "completed":
                done = make_event(
                    topics.GENERATION_COMPLETED,
                    GenerationCompleted(generation_id=gid, video=video),
                    source="/t",
                    subject=gid,
                )
                done = done.model_copy(update={"time": now})
                events += [(topics.GENERATION_COMPLETED, done)] * 2
        for topic, event in events:  # one by one: in order per key, as the stages publish
            await producer.send(topic, event)
    finally:
        await producer.stop()


async def test_the_analytics_app_counts_a_known_set_of_generations(broker: str, tmp_path: Path) -> None:
    await kafka.ensure_topics(broker, kafka.all_topics())  # 4 partitions, before the app's tables
    await _publish(broker)
    port = embedded.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELSTREAM_")}
    env.update(
        ANALYTICS_KAFKA_BOOTSTRAP=broker,
        ANALYTICS_DATA_DIR=str(tmp_path / "faust"),
        ANALYTICS_USD_PER_CLIP=str(USD_PER_CLIP),
        PYTHONPATH=str(ROOT),
    )
    log_path = tmp_path / "faust.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "faust",
            "-A",
            "examples.analytics.app",
            "worker",
            "-l",
            "warn",
            "--web-host",
            "127.0.0.1",
            "--web-port",
            str(port),
            env=env,
            cwd=ROOT,
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
        )
    stats: dict[str, Any] = {}
    expected = {"completed": 3, "failed": 1, "canceled": 1}
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(1200):  # faust joins its group and restores its tables first
                await asyncio.sleep(0.1)
                assert proc.returncode is None, log_path.read_text()[-3000:]
                try:
                    async with session.get(f"http://127.0.0.1:{port}/stats/") as resp:
                        stats = await resp.json()
                except (aiohttp.ClientError, ValueError):
                    continue
                counts: dict[str, int] = {}
                for window in stats["generations_per_minute"].values():
                    for outcome, count in window.items():
                        counts[outcome] = counts.get(outcome, 0) + count
                if counts == expected and list(stats["video_seconds_per_day"].values()) == [15]:
                    break
        assert counts == expected, (stats, log_path.read_text()[-3000:])
        (day,) = stats["time_to_complete_seconds"].values()
        assert day == {"p50": pytest.approx(20, abs=0.01), "p95": pytest.approx(40, abs=0.01)}
        (usd,) = stats["cost_usd_per_day"].values()
        assert usd == pytest.approx((2 + 3 + 3 + 2) * USD_PER_CLIP)
        assert list(stats["video_seconds_per_day"].values()) == [15]  # 3 videos of 5 s, repeats once
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
