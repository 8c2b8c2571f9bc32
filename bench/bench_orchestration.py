"""Orchestration: generations per second end to end when media work is only a copy.

The provider stand-in answers every prediction at once with a clip that already is its finished piece
(the 720p delivery size, 24 fps, exactly its share, tagged by ``media.finish_clip``), so completion
copies it and the final video is a stream-copy join: what is measured is reelstream's own orchestration
— the stages, Kafka, Postgres, the webhook path. Orders are 21 s, no brand, no captions, no end card,
hard cuts: the planner cuts them into five clips (3, 3, 5, 5 and 5 s), the target's five.

Two measurements on one stack:

1. **Throughput**: ``BENCH_ORDERS`` (80) orders posted ``AT_ONCE`` at a time, as fast as they are
   accepted; generations/s is their number over the time from the first POST to the last completion.
   (Their completions bunch up, since the orders move through the stages together: a rate taken in
   the middle of the run would flatter it.) With it, the CPU seconds every part of the stack spent per
   generation (ffmpeg, Postgres and tansu included): the machine's cores divided by that sum is the
   most this stack can complete here, whatever the waits.
2. **POST → first prediction** at a pace the stack keeps up with (``BENCH_PACED_RATE`` orders/s, 2, for
   ``BENCH_PACED_ORDERS``, 20): the latency of the four stage hops, not of a queue. The same figure
   during the throughput burst is printed beside it (there it is the queue).

Beside it, the ceiling: a raw aiokafka consume→produce pass-through on the same broker, in events/s.

Targets: ≥ 20 generations/s with 5 clips each; POST → first prediction p99 < 250 ms.
"""

import asyncio
import os
import statistics
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

ORDERS = int(os.environ.get("BENCH_ORDERS", "80"))
AT_ONCE = 16
PACED_RATE = float(os.environ.get("BENCH_PACED_RATE", "2"))
PACED_ORDERS = int(os.environ.get("BENCH_PACED_ORDERS", "20"))
#: 21 s: the planner's 30/70 split (no CTA scene) makes scenes of 6 and 15 s, cut into clips of 3, 3,
#: 5, 5 and 5 s. The model asks 81 frames for each, so the stand-in tells them apart by their seed
#: (clip i gets the order's seed + i) and answers each with the prerendered piece of its length
#: (a piece of another length would be re-encoded).
SEED = 1000
ORDER = {
    "prompt": "Kites over dunes at noon, playful and light",
    "duration_seconds": 21,
    # No finishing asked (no brand, no captions, no end card, cuts): every clip is copied as it is.
    "options": {"captions": False, "include_cta": False, "transitions": "cut", "seed": SEED},
}
CLIPS_PER_ORDER = 5
CLIP_SECONDS = (3, 3, 5, 5, 5)
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


async def finished_pieces(directory: Path) -> str:
    """A finished piece for each clip length of ``ORDER``; the stand-in's ``BENCH_PRERENDERED``."""
    made: dict[int, Path] = {}
    for seconds in sorted(set(CLIP_SECONDS)):
        spec = ClipSpec(
            clip_id="clip_00", scene_id="scene_00", scene_kind="intro", index=0,
            duration_seconds=float(seconds), aspect_ratio="16:9", width=WIDTH, height=HEIGHT,
            prompt="bench", negative_prompt="", caption="", colors=[], seed=1,
        )  # fmt: skip
        raw, piece = directory / f"raw-{seconds}.mp4", directory / f"piece-{seconds}.mp4"
        await media.render_clip(spec, raw, fps=24)
        frames = media.piece_frames(0.0, float(seconds))
        await media.finish_clip(raw, piece, frames=frames, width=WIDTH, height=HEIGHT)
        made[seconds] = piece
    return ",".join(f"{SEED + i}={made[seconds]}" for i, seconds in enumerate(CLIP_SECONDS))


def provider_options(pieces: str) -> dict[str, str]:
    return {"BENCH_PROVIDER_DELAY": "0", "BENCH_PRERENDERED": pieces}


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
    """What pushing orders through a running stack measured."""

    orders: int
    elapsed: float
    statuses: dict[str, int]
    #: POST → first prediction of each order, seconds, sorted.
    firsts: list[float]
    #: CPU seconds each role of the stack (``common.cpu_by_role``) used meanwhile.
    busy: dict[str, float]

    @property
    def rate(self) -> float:
        """Generations/s: the orders over the time from the first POST to the last completion."""
        return self.orders / self.elapsed

    @property
    def p50(self) -> float:
        return statistics.median(self.firsts)

    @property
    def p99(self) -> float:
        return self.firsts[min(len(self.firsts) - 1, round(0.99 * (len(self.firsts) - 1)))]

    def cpu_per_generation(self) -> dict[str, float]:
        """CPU seconds per generation by role (the stand-in's left out: a real provider is elsewhere)."""
        return {k: v / self.orders for k, v in self.busy.items() if k != "stand-in"}

    def cpu_ceiling(self) -> float:
        """Generations/s this machine's cores could complete at this CPU cost per generation."""
        return (os.cpu_count() or 1) / max(1e-9, sum(self.cpu_per_generation().values()))


async def drive(
    stack: common.Stack, extra_pids: Sequence[int] = (), *, orders: int = ORDERS, rate: float | None = None
) -> Drive:
    """Post ``orders`` orders, ``AT_ONCE`` at a time (or ``rate`` per second), until every one has ended."""
    limit = asyncio.Semaphore(AT_ONCE)
    ids: list[str] = []
    async with aiohttp.ClientSession() as session:

        async def one(delay: float) -> None:
            await asyncio.sleep(delay)
            async with limit, session.post(f"{stack.url}/api/v1/generations", json=ORDER) as resp:
                assert resp.status == 202, await resp.text()
                ids.append((await resp.json())["generation_id"])

        cpu_before = common.cpu_by_role(stack, extra_pids)
        started = time.monotonic()
        await asyncio.gather(*(one(i / rate if rate else 0.0) for i in range(orders)))
    conn = await asyncpg.connect(stack.stack["database_url"])
    try:
        async with asyncio.timeout(900):
            while True:
                done = await conn.fetchval(
                    "SELECT count(*) FROM generations WHERE id = ANY($1) AND status IN"
                    " ('completed', 'failed', 'canceled')",
                    ids,
                )
                if done >= orders:
                    break
                await asyncio.sleep(0.2)
        elapsed = time.monotonic() - started
        cpu_after = common.cpu_by_role(stack, extra_pids)
        busy = {role: cpu_after.get(role, 0.0) - cpu_before.get(role, 0.0) for role in cpu_after}
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
    return Drive(orders, elapsed, statuses, firsts, busy)


def print_busy(result: Drive) -> None:
    per = result.cpu_per_generation()
    top = sorted(per.items(), key=lambda kv: -kv[1])
    print(
        f"CPU per generation {sum(per.values()):.3f} s: "
        + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in top if v >= 0.0005)
        + f"; the stand-in {result.busy.get('stand-in', 0.0) / result.orders * 1000:.0f} ms"
    )
    print(
        f"at that cost {os.cpu_count()} cores complete at most {result.cpu_ceiling():.2f} generations/s"
        f" (measured {result.rate:.2f}/s: {result.rate / result.cpu_ceiling():.0%} of it)"
    )


async def main() -> int:
    info = common.header(
        "orchestration: generations per second, media work a copy", "python bench/bench_orchestration.py"
    )
    logs = common.log_dir("orchestration")
    with tempfile.TemporaryDirectory(prefix="reelstream-bench-orch-") as tmp:
        pieces = await finished_pieces(Path(tmp))
        with common.stack(logs, provider=provider_options(pieces), **SETTINGS) as stack:
            ceiling = await pass_through(stack.stack["kafka_bootstrap"])
            paced = await drive(stack, orders=PACED_ORDERS, rate=PACED_RATE)
            result = await drive(stack)
    # the stage hops, then per clip submitted/completed/status, then the end
    events_per_generation = 5 + CLIPS_PER_ORDER * 3 + 1
    per_generation = ceiling / events_per_generation
    print(
        f"{ORDERS} orders of {CLIPS_PER_ORDER} clips, {AT_ONCE} posted at a time: {result.statuses} in"
        f" {result.elapsed:.1f} s"
    )
    print(
        f"throughput {result.rate:.2f} generations/s"
        f" = {result.rate * CLIPS_PER_ORDER:.1f} clips/s"
        f" (target >= 20); ceiling: a bare aiokafka pass-through moves {ceiling:.0f} events/s ="
        f" {per_generation:.0f} generations/s at ~{events_per_generation} events each:"
        f" {common.ratio(result.rate, per_generation)}"
    )
    print_busy(result)
    print(
        f"POST to first prediction at {PACED_RATE:g} orders/s ({PACED_ORDERS} orders, {paced.statuses}):"
        f" p50 {paced.p50 * 1000:.0f} ms, p99 {paced.p99 * 1000:.0f} ms (target < 250 ms);"
        f" during the burst: p50 {result.p50 * 1000:.0f} ms, p99 {result.p99 * 1000:.0f} ms (queued)"
    )
    common.save(
        "orchestration",
        {
            "machine": info,
            "generations_per_second": result.rate,
            "cpu_per_generation": result.cpu_per_generation(),
            "cpu_ceiling": result.cpu_ceiling(),
            "pass_through_events_per_second": ceiling,
            "to_first_prediction_paced": paced.firsts,
            "to_first_prediction_burst": result.firsts,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
