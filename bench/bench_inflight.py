"""Benchmark 6: jobs in flight. 10,000 generations waiting for their webhooks (predictions held).

Orders go in (5-second videos: one clip, one prediction each). The benchmark takes the resident memory
(VmRSS) of every reelstream process and what a client sees (accept latency: sequential ``POST
/api/v1/generations``; read latency: ``GET`` of a waiting generation) at: one order waiting (the
reference), 1,000 waiting at the held Replicate stand-in, all 10,000 accepted (in flight, most still
queued in the stages), and as many waiting at the provider as the stages get there within
``BENCH_INFLIGHT_WAIT`` seconds. Does anything grow or slow with the number of jobs in flight?

How fast orders reach the provider is printed too: the stages' throughput on this machine, which is what
decides whether all 10,000 get there within the time ``make bench`` can give this benchmark.

At 1, 1,000 and the end it also measures the CPU each process uses while nothing else happens (the cost
of jobs merely waiting: sweeps, polls) and, at the end, profiles the gateway process meanwhile.

Targets: RSS of each reelstream process flat within 10 % from 1k to 10k and < 150 MB; latencies not
growing with the number in flight.
Settings: BENCH_INFLIGHT (10000), BENCH_INFLIGHT_FIRST (1000), BENCH_INFLIGHT_WAIT (130 s from the start
at most), BENCH_INFLIGHT_PROBES (200 requests per latency probe).
"""

import asyncio
import os
import statistics
import time
from typing import Any

import aiohttp
import asyncpg
import common

TOTAL = int(os.environ.get("BENCH_INFLIGHT", "10000"))
FIRST = int(os.environ.get("BENCH_INFLIGHT_FIRST", "1000"))
WAIT = float(os.environ.get("BENCH_INFLIGHT_WAIT", "130"))
PROBES = int(os.environ.get("BENCH_INFLIGHT_PROBES", "200"))
PROFILE = os.environ.get("BENCH_PROFILE", "1") == "1"
#: Seconds of nothing happening over which idle CPU is measured (and profiled at the end).
IDLE_SECONDS = 5.0
#: Seconds given to the last orders' tail of work before idle CPU is measured.
SETTLE_SECONDS = 3.0
ORDER = {**common.ORDER, "duration_seconds": 5}
TARGET_RSS_MB, TARGET_FLAT = 150.0, 0.10


async def submit(url: str, count: int, concurrency: int = 32) -> list[str]:
    """``count`` orders, ``concurrency`` at a time."""
    ids: list[str] = []
    async with aiohttp.ClientSession() as session:

        async def worker(n: int) -> None:
            for _ in range(n):
                async with session.post(f"{url}/api/v1/generations", json=ORDER) as resp:
                    if resp.status == 202:
                        ids.append((await resp.json())["generation_id"])

        share = [count // concurrency + (1 if i < count % concurrency else 0) for i in range(concurrency)]
        await asyncio.gather(*(worker(n) for n in share))
    return ids


async def orders(url: str, count: int, rates: list[str]) -> int:
    """Submit ``count`` orders; prints and notes how fast they were accepted."""
    started = time.monotonic()
    accepted = len(await submit(url, max(0, count)))
    rate = f"{accepted} orders accepted in {time.monotonic() - started:.1f} s"
    print(rate, flush=True)
    rates.append(rate)
    return accepted


async def waiting(database_url: str) -> int:
    """Generations whose prediction is created and recorded: waiting for a webhook."""
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval("SELECT count(DISTINCT generation_id) FROM predictions")
        return count
    finally:
        await conn.close()


async def wait_for(database_url: str, target: int, deadline: float) -> tuple[int, float]:
    """Until ``target`` generations wait (or the deadline): how many do, and how long it took."""
    started = time.monotonic()
    count = await waiting(database_url)
    while count < target and time.monotonic() < deadline:
        await asyncio.sleep(2)
        count = await waiting(database_url)
    return count, time.monotonic() - started


async def probe(url: str, sample: str) -> dict[str, float]:
    """Sequential latencies: ``PROBES`` creates and ``PROBES`` reads of a waiting generation, in ms."""
    creates, reads = [], []
    async with aiohttp.ClientSession() as session:
        for _ in range(PROBES):
            t = time.perf_counter()
            async with session.post(f"{url}/api/v1/generations", json=ORDER) as resp:
                await resp.read()
            creates.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            async with session.get(f"{url}/api/v1/generations/{sample}") as resp:
                await resp.read()
            reads.append((time.perf_counter() - t) * 1000)

    def q(values: list[float], p: float) -> float:
        values = sorted(values)
        return values[min(len(values) - 1, int(p * len(values)))]

    return {"create_p50_ms": statistics.median(creates), "create_p99_ms": q(creates, 0.99),
            "read_p50_ms": statistics.median(reads), "read_p99_ms": q(reads, 0.99)}  # fmt: skip


def idle_cpu(stack: common.Stack, seconds: float = IDLE_SECONDS) -> dict[str, float]:
    """Cores each reelstream process uses while no request comes in: the cost of the jobs just waiting."""
    pids = list(stack.reelstream_processes())
    before = {pid: common.cpu_seconds(pid) for pid in pids}
    time.sleep(seconds)
    return {str(pid): round((common.cpu_seconds(pid) - before[pid]) / seconds, 3) for pid in pids}


def snapshot(stack: common.Stack, label: str, count: int, latency: dict[str, float]) -> dict[str, Any]:
    processes = stack.reelstream_processes().items()
    rss = {f"{pid} {line[:60]}": round(common.rss_mb(pid), 1) for pid, line in processes}
    print(f"{label}: {count} waiting")
    for name, mb in rss.items():
        print(f"    {mb:7.1f} MB  {name}")
    print(
        f"    create p50 {latency['create_p50_ms']:.1f} ms p99 {latency['create_p99_ms']:.1f} ms;"
        f" read p50 {latency['read_p50_ms']:.1f} ms p99 {latency['read_p99_ms']:.1f} ms",
        flush=True,
    )
    return {"waiting": count, "rss_mb": rss, "latency": latency}


def point(stack: common.Stack, label: str, db: str, sample: str, profile: Any = None) -> dict[str, Any]:
    """Idle CPU first (nothing else going on), then RSS and the latency probes."""
    count = asyncio.run(waiting(db))
    time.sleep(SETTLE_SECONDS)  # the last orders' status events and bookkeeping are done
    spy = common.start_profile(stack.gateway_pid(), int(IDLE_SECONDS), profile) if profile else None
    idle = idle_cpu(stack)
    if spy is not None:
        spy.wait()
    print(f"{label}: idle CPU (cores) per process: {idle}", flush=True)
    found = snapshot(stack, label, count, asyncio.run(probe(stack.url, sample)))
    return {**found, "idle_cores": idle}


def main() -> None:
    command = (
        f"{TOTAL} orders of 5 s (one prediction each), held at the provider;"
        f" RSS and latency at 0/{FIRST}/{TOTAL}"
    )
    info = common.header("jobs in flight: generations waiting for webhooks", command)
    logs = common.log_dir("inflight")
    points: list[dict[str, Any]] = []
    rates: list[str] = []
    with common.stack(logs) as stack:
        db = stack.stack["database_url"]
        deadline = time.monotonic() + WAIT
        sample = asyncio.run(submit(stack.url, 1))[0]
        asyncio.run(wait_for(db, 1, deadline))
        points.append(point(stack, "reference", db, sample))
        submitted = 1 + PROBES  # the probes' creates are orders too
        # 1,000 waiting at the provider.
        submitted += asyncio.run(orders(stack.url, FIRST - submitted, rates))
        count, took = asyncio.run(wait_for(db, FIRST, deadline))
        rates.append(f"{count} waiting at the provider {took:.1f} s later")
        print(rates[-1], flush=True)
        points.append(point(stack, f"{FIRST} waiting", db, sample))
        submitted += PROBES
        # Every order accepted: in flight, most of them still queued in the stages.
        submitted += asyncio.run(orders(stack.url, TOTAL - submitted, rates))
        count = asyncio.run(waiting(db))
        points.append(snapshot(stack, f"{TOTAL} accepted", count, asyncio.run(probe(stack.url, sample))))
        # As many waiting at the provider as the stages get there within the time allowed.
        count, took = asyncio.run(wait_for(db, TOTAL, deadline))
        rate = f"{count} waiting at the provider {took:.1f} s later"
        if count < TOTAL:
            rate += f" (stopped at BENCH_INFLIGHT_WAIT={WAIT:.0f} s from the start)"
        print(rate, flush=True)
        rates.append(rate)
        profile = logs / "profile-idle.raw" if PROFILE else None
        points.append(point(stack, f"{count} waiting", db, sample, profile))
    if profile is not None and profile.exists():
        title = f"profile of the gateway process, idle with {count} waiting (py-spy)"
        print(f"\n{title}:\n{common.top_frames(profile)}")
    verdict = verdict_of(points)
    payload = {"machine": info, "command": command, "points": points, "rates": rates}
    if profile is not None and profile.exists():
        payload["profile"] = common.top_frames(profile)
    common.save("inflight", {**payload, **verdict})


def verdict_of(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Per process: RSS below the cap everywhere, and flat within 10 % from 1,000 waiting to the end."""
    first, last = points[1], points[-1]
    flat = True
    for name, mb in last["rss_mb"].items():
        before = first["rss_mb"].get(name)
        growth = (mb - before) / before if before else 0.0
        flat &= growth <= TARGET_FLAT
        print(f"{name[:70]}: {before} -> {mb} MB ({growth:+.0%})")
    below = all(mb < TARGET_RSS_MB for p in points for mb in p["rss_mb"].values())
    slower = last["latency"]["create_p99_ms"] / max(first["latency"]["create_p99_ms"], 0.001)
    print(
        f"targets: RSS flat within {TARGET_FLAT:.0%}: {'met' if flat else 'NOT met'};"
        f" below {TARGET_RSS_MB:.0f} MB: {'met' if below else 'NOT met'};"
        f" create p99 at {last['waiting']} vs {first['waiting']}: {slower:.1f}x"
    )
    return {"met": flat and below, "flat": flat, "below": below, "create_p99_ratio": slower}


if __name__ == "__main__":
    main()
