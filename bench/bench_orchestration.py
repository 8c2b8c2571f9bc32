"""Orchestration: generations per second end to end when media work is only a copy.

The provider stand-in answers every prediction at once with a clip that already is its finished piece
(the 720p delivery size, 24 fps, exactly one 5 s share, tagged by ``media.finish_clip``), so completion
copies it and the final video is a stream-copy join: what is measured is reelstream's own orchestration
— the stages, Kafka, Postgres, the webhook path. Orders are 50 s (ten 5 s clips), no brand, no captions,
no end card, hard cuts. Beside it, the ceiling: a raw aiokafka consume→produce pass-through on the same
broker, in events per second.

Targets: ≥ 20 generations/s with 5 clips each; POST → first prediction p99 < 250 ms. (Orders here have
ten 5 s clips — see ``ORDER`` — so clips/s is the comparable figure.)
"""

import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import common
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from reelstream import media
from schemas.api import DELIVERY_SIZES
from schemas.events import ClipSpec

ORDERS = int(os.environ.get("BENCH_ORDERS", "30"))
AT_ONCE = 16
#: 50 s: the planner's 30/70 split (no CTA scene) then cuts it into ten clips of exactly 5 s, each
#: the prerendered piece's share, so every clip is copied (other lengths would be re-encoded).
ORDER = {
    "prompt": "Kites over dunes at noon, playful and light",
    "duration_seconds": 50,
    # No finishing asked (no brand, no captions, no end card, cuts): every clip is copied as it is.
    "options": {"captions": False, "include_cta": False, "transitions": "cut"},
}
CLIPS_PER_ORDER = 10
#: Settings of the stack under test: BENCH_FETCH_WAIT_MS sets REELSTREAM_KAFKA_FETCH_MAX_WAIT_MS and
#: BENCH_CLIP_CONCURRENCY sets REELSTREAM_CLIP_CONCURRENCY (predictions in flight per order), and
#: BENCH_STAGE_CONCURRENCY sets REELSTREAM_STAGE_CONCURRENCY (events a stage process handles at once).
SETTINGS = {"storage_allow_private_urls": "true"}
if os.environ.get("BENCH_FETCH_WAIT_MS"):
    SETTINGS["kafka_fetch_max_wait_ms"] = os.environ["BENCH_FETCH_WAIT_MS"]
if os.environ.get("BENCH_CLIP_CONCURRENCY"):
    SETTINGS["clip_concurrency"] = os.environ["BENCH_CLIP_CONCURRENCY"]
if os.environ.get("BENCH_STAGE_CONCURRENCY"):
    SETTINGS["stage_concurrency"] = os.environ["BENCH_STAGE_CONCURRENCY"]
WIDTH, HEIGHT = DELIVERY_SIZES[("16:9", "720p")]
PASS_THROUGH = 20_000


async def finished_piece(directory: Path) -> Path:
    spec = ClipSpec(
        clip_id="clip_00", scene_id="scene_00", scene_kind="intro", index=0, duration_seconds=5.0,
        aspect_ratio="16:9", width=WIDTH, height=HEIGHT, prompt="bench", negative_prompt="", caption="",
        colors=[], seed=1,
    )  # fmt: skip
    raw, piece = directory / "raw.mp4", directory / "piece.mp4"
    await media.render_clip(spec, raw, fps=24)
    await media.finish_clip(raw, piece, frames=media.piece_frames(0.0, 5.0), width=WIDTH, height=HEIGHT)
    return piece


async def pass_through(bootstrap: str) -> float:
    """Events per second a bare aiokafka consumer→producer loop moves on this broker (the ceiling)."""
    source, sink = f"bench_pt_in_{uuid.uuid4().hex[:8]}", f"bench_pt_out_{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    body = b"x" * 800
    await asyncio.gather(
        *[await producer.send(source, body, key=str(i % 64).encode()) for i in range(PASS_THROUGH)]
    )
    consumer = AIOKafkaConsumer(source, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    moved, started = 0, time.monotonic()
    while moved < PASS_THROUGH:
        batch = await consumer.getmany(timeout_ms=500, max_records=2000)
        futures = [await producer.send(sink, r.value, key=r.key) for rs in batch.values() for r in rs]
        await asyncio.gather(*futures)
        moved += len(futures)
    elapsed = time.monotonic() - started
    await consumer.stop()
    await producer.stop()
    return moved / elapsed


@dataclass
class Drive:
    """What pushing ``ORDERS`` orders through a running stack measured."""

    elapsed: float
    statuses: dict[str, int]
    #: POST → first prediction of each order, seconds, sorted.
    firsts: list[float]
    #: CPU seconds each process of the stack used meanwhile.
    busy: dict[str, float]

    @property
    def rate(self) -> float:
        return ORDERS / self.elapsed

    @property
    def p99(self) -> float:
        return self.firsts[min(len(self.firsts) - 1, round(0.99 * (len(self.firsts) - 1)))]


async def drive(stack: common.Stack, extra_pids: Sequence[int] = ()) -> Drive:
    """Post ``ORDERS`` orders, ``AT_ONCE`` at a time, and wait until every one has ended."""
    limit = asyncio.Semaphore(AT_ONCE)
    ids: list[str] = []

    def processes() -> dict[int, str]:
        return {**stack.processes(), **{pid: common.cmdline(pid) for pid in extra_pids}}

    async with aiohttp.ClientSession() as session:

        async def one() -> None:
            async with limit, session.post(f"{stack.url}/api/v1/generations", json=ORDER) as resp:
                assert resp.status == 202, await resp.text()
                ids.append((await resp.json())["generation_id"])

        cpu_before = {pid: common.cpu_seconds(pid) for pid in processes()}
        started = time.monotonic()
        await asyncio.gather(*(one() for _ in range(ORDERS)))
    conn = await asyncpg.connect(stack.stack["database_url"])
    try:
        async with asyncio.timeout(600):
            while True:
                done = await conn.fetchval(
                    "SELECT count(*) FROM generations WHERE id = ANY($1) AND status IN"
                    " ('completed', 'failed', 'canceled')",
                    ids,
                )
                if done >= ORDERS:
                    break
                await asyncio.sleep(0.2)
        elapsed = time.monotonic() - started
        busy = {
            f"{line.split('/')[-1][:60]} [{pid}]": common.cpu_seconds(pid) - cpu_before.get(pid, 0.0)
            for pid, line in processes().items()
        }
        statuses = dict(
            await conn.fetch(
                "SELECT status, count(*) FROM generations WHERE id = ANY($1) GROUP BY status", ids
            )
        )
        firsts = sorted(
            float(v)
            for v in await conn.fetchval(
                "SELECT array_agg(x) FROM (SELECT extract(epoch FROM min(p.created_at) - g.created_at) AS x"
                " FROM generations g JOIN predictions p ON p.generation_id = g.id"
                " WHERE g.id = ANY($1) GROUP BY g.id) t",
                ids,
            )
        )
    finally:
        await conn.close()
    return Drive(elapsed, statuses, firsts, busy)


def print_busy(result: Drive) -> None:
    top = sorted(result.busy.items(), key=lambda kv: -kv[1])[:12]
    print("CPU seconds by process: " + ", ".join(f"{k} {v:.1f}" for k, v in top))


async def main() -> int:
    info = common.header(
        "orchestration: generations per second, media work a copy", "python bench/bench_orchestration.py"
    )
    logs = common.log_dir("orchestration")
    with tempfile.TemporaryDirectory(prefix="reelstream-bench-orch-") as tmp:
        piece = await finished_piece(Path(tmp))
        provider = {"BENCH_PROVIDER_DELAY": "0", "BENCH_PRERENDERED": str(piece)}
        with common.stack(logs, provider=provider, **SETTINGS) as stack:
            ceiling = await pass_through(stack.stack["kafka_bootstrap"])
            result = await drive(stack)
    print_busy(result)
    rate, firsts = result.rate, result.firsts
    # the stage hops, then per clip submitted/completed/status, then the end
    events_per_generation = 5 + CLIPS_PER_ORDER * 3 + 1
    print(
        f"{ORDERS} orders of {CLIPS_PER_ORDER} clips, {AT_ONCE} posted at a time: {result.statuses} in"
        f" {result.elapsed:.1f} s ({ORDERS * CLIPS_PER_ORDER / result.elapsed:.1f} clips/s)"
    )
    print(
        f"throughput {rate:.2f} generations/s (target >= 20); ceiling: a bare aiokafka pass-through moves"
        f" {ceiling:.0f} events/s = {ceiling / events_per_generation:.0f} generations/s at"
        f" ~{events_per_generation} events each: {common.ratio(rate, ceiling / events_per_generation)}"
    )
    print(
        f"POST to first prediction p50 {firsts[len(firsts) // 2] * 1000:.0f} ms,"
        f" p99 {result.p99 * 1000:.0f} ms (target < 250 ms)"
    )
    common.save(
        "orchestration",
        {
            "machine": info,
            "generations_per_second": rate,
            "pass_through_events_per_second": ceiling,
            "to_first_prediction": firsts,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
