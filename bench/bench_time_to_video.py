"""Time to video: what reelstream adds to the provider's time, for one order and for twenty at once.

The provider stand-in (``fake_provider.py``) takes a fixed time per prediction and returns a clip like
Wan's at 720p (1280x720, 16 fps, 5.06 s), so every clip is really finished (scaled, cropped, re-timed,
encoded) as it lands. With a fixed time all four clips of an order land at the same instant and are
finished side by side after the last webhook; a second stand-in lets each prediction take 3 to 6 s, so
they land apart, as real renders do, and only the last clip's finishing and the join follow it. The
overhead of an order is its wall time (POST to ``completed``, from its own row) minus its slowest
prediction (create to webhook, from the rows of its predictions and deliveries): POST → first prediction,
and last webhook to completed, are printed apart. With twenty orders at once the overhead is set beside
the media CPU that must run after the webhooks, spread over the cores: the physical floor of this
machine.

Targets: one 15 s order, overhead p50 ≤ 1.5 s, of which last webhook to completed is the last clip's own
finishing plus the join.
"""

import asyncio
import os
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import common

from reelstream import media
from schemas.api import DELIVERY_SIZES
from schemas.events import ClipSpec

PREDICTION_SECONDS = 3.0
#: The second stand-in: each prediction takes 3 s plus up to this much more, so an order's clips land
#: apart as real renders do (Wan's times vary), not all at the same instant.
JITTER_SECONDS = 3.0
SINGLE_RUNS = 3
AT_ONCE = 20
#: The default order: 720p, captions, an end card with the call to action, crossfades.
ORDER = {"prompt": "A lighthouse keeper's morning, calm sea, soft light", "duration_seconds": 15}
WIDTH, HEIGHT = DELIVERY_SIZES[("16:9", "720p")]

_TIMINGS = """
SELECT g.id, g.status,
       extract(epoch FROM g.updated_at - g.created_at) AS wall,
       extract(epoch FROM min(p.created_at) - g.created_at) AS to_first_prediction,
       extract(epoch FROM max(w.received_at - p.created_at)) AS slowest_prediction,
       extract(epoch FROM g.updated_at - max(w.received_at)) AS last_webhook_to_completed,
       count(DISTINCT p.prediction_id) AS clips
FROM generations g
JOIN predictions p ON p.generation_id = g.id
JOIN webhook_deliveries w ON w.prediction_id = p.prediction_id
WHERE g.id = ANY($1::text[])
GROUP BY g.id
"""


async def provider_clip(directory: Path) -> Path:
    spec = ClipSpec(
        clip_id="clip_00", scene_id="scene_00", scene_kind="intro", index=0, duration_seconds=5.06,
        aspect_ratio="16:9", width=WIDTH, height=HEIGHT, prompt="bench", negative_prompt="",
        caption="A provider's clip", colors=["#0A84FF", "#FF375F"], seed=1,
    )  # fmt: skip
    path = directory / "provider_clip.mp4"
    await media.render_clip(spec, path, fps=16)
    return path


async def finishing_cpu(clip: Path, directory: Path) -> float:
    """CPU seconds one clip's finishing costs on this machine (what each webhook sets off)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    before = usage.ru_utime + usage.ru_stime
    frames = media.piece_frames(0.0, 5.0)
    await media.finish_clip(clip, directory / "probe_piece.mp4", frames=frames, width=WIDTH, height=HEIGHT)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime - before


async def order(session: aiohttp.ClientSession, url: str) -> str:
    async with session.post(f"{url}/api/v1/generations", json=ORDER) as resp:
        assert resp.status == 202, await resp.text()
        generation_id: str = (await resp.json())["generation_id"]
        return generation_id


async def until_ended(session: aiohttp.ClientSession, url: str, ids: list[str]) -> None:
    pending = set(ids)
    async with asyncio.timeout(300):
        while pending:
            for generation_id in list(pending):
                async with session.get(f"{url}/api/v1/generations/{generation_id}") as resp:
                    if (await resp.json())["status"] in ("completed", "failed", "canceled"):
                        pending.discard(generation_id)
            await asyncio.sleep(0.05)


async def timings(database_url: str, ids: list[str]) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(_TIMINGS, ids)
    finally:
        await conn.close()
    out = [{k: (float(v) if k not in ("id", "status") else v) for k, v in dict(r).items()} for r in rows]
    for row in out:
        row["overhead"] = row["wall"] - row["slowest_prediction"]
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


STACK = {
    "prediction_poll_seconds": "60",
    "reconcile_seconds": "120",
    "storage_allow_private_urls": "true",  # the stand-in serves its outputs from 127.0.0.1
}


async def singles(stack: common.Stack) -> list[dict[str, Any]]:
    """``SINGLE_RUNS`` orders one after another, each alone on the stack."""
    rows: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as session:
        for run in range(1, SINGLE_RUNS + 1):
            generation_id = await order(session, stack.url)
            await until_ended(session, stack.url, [generation_id])
            (row,) = await timings(stack.stack["database_url"], [generation_id])
            rows.append(row)
            print(
                f"run {run}: {row['status']} wall {row['wall']:.2f} s, slowest prediction"
                f" {row['slowest_prediction']:.2f} s, overhead {row['overhead']:.2f} s (POST to first"
                f" prediction {row['to_first_prediction']:.2f} s, last webhook to completed"
                f" {row['last_webhook_to_completed']:.2f} s)",
                flush=True,
            )
    return rows


async def main() -> int:
    info = common.header(
        "time to video: overhead beyond the slowest prediction", "python bench/bench_time_to_video.py"
    )
    logs = common.log_dir("time_to_video")
    with tempfile.TemporaryDirectory(prefix="reelstream-bench-ttv-") as tmp:
        directory = Path(tmp)
        clip = await provider_clip(directory)
        per_clip_cpu = await finishing_cpu(clip, directory)
        provider = {"BENCH_PROVIDER_DELAY": str(PREDICTION_SECONDS), "BENCH_PRERENDERED": str(clip)}
        with common.stack(logs, provider=provider, **STACK) as stack:
            print(f"predictions of {PREDICTION_SECONDS:g} s: an order's clips land together", flush=True)
            single = await singles(stack)
            async with aiohttp.ClientSession() as session:
                ids = await asyncio.gather(*(order(session, stack.url) for _ in range(AT_ONCE)))
                await until_ended(session, stack.url, list(ids))
            burst = await timings(stack.stack["database_url"], list(ids))
        apart = {**provider, "BENCH_PROVIDER_JITTER": str(JITTER_SECONDS)}
        with common.stack(common.log_dir("time_to_video_apart"), provider=apart, **STACK) as stack:
            print(
                f"predictions of {PREDICTION_SECONDS:g} to {PREDICTION_SECONDS + JITTER_SECONDS:g} s:"
                " an order's clips land apart",
                flush=True,
            )
            spread = await singles(stack)
    cores = os.cpu_count() or 1
    for name, rows in (("clips landing together", single), ("clips landing apart", spread)):
        overhead = common.median([r["overhead"] for r in rows])
        after = common.median([r["last_webhook_to_completed"] for r in rows])
        first = common.median([r["to_first_prediction"] for r in rows])
        print(
            f"one order, {name}: overhead p50 {overhead:.2f} s (target <= 1.5 s); POST to first"
            f" prediction p50 {first:.2f} s; last webhook to completed p50 {after:.2f} s, beside one"
            f" clip's own finishing: {per_clip_cpu:.2f} CPU-s"
        )
    burst_overheads = [r["overhead"] for r in burst]
    clips = sum(int(r["clips"]) for r in burst)
    floor = clips * per_clip_cpu / cores
    print(
        f"{AT_ONCE} at once: overhead p50 {percentile(burst_overheads, 0.5):.2f} s,"
        f" p95 {percentile(burst_overheads, 0.95):.2f} s; last webhook to completed p95"
        f" {percentile([r['last_webhook_to_completed'] for r in burst], 0.95):.2f} s; the floor: the"
        f" finishing of {clips} clips ({clips * per_clip_cpu:.1f} CPU-s) over {cores} cores = {floor:.2f} s"
    )
    common.save(
        "time_to_video",
        {
            "machine": info,
            "single": single,
            "single_apart": spread,
            "at_once": burst,
            "finishing_cpu_per_clip": per_clip_cpu,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
