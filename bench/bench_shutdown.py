"""Benchmark 5: stopping. SIGTERM to ``reelstream serve`` with 20 generations in flight; seconds until
``serve`` and every process it started (stages, gateway, broker, Postgres, their children) are gone.

"In flight" is meant hard: the 20 orders are sent, and the SIGTERM follows a moment later while the
stages are in the middle of them (and the held Replicate stand-in has some of their predictions). The
reference, measured in the same run, is the same stack stopped idle: what stopping costs with nothing
to drain. Every process is found from ``/proc`` as a descendant of the ``serve`` we started.

Target: every process gone within 10 s of the SIGTERM (the contract's promise).
Settings: BENCH_RUNS (2), BENCH_SHUTDOWN_ORDERS (20), BENCH_SHUTDOWN_AFTER (0.2 s from the last 202).
"""

import asyncio
import os
import time
from typing import Any

import aiohttp
import common

RUNS = int(os.environ.get("BENCH_RUNS", "2"))
ORDERS = int(os.environ.get("BENCH_SHUTDOWN_ORDERS", "20"))
AFTER = float(os.environ.get("BENCH_SHUTDOWN_AFTER", "0.2"))
TARGET_SECONDS = 10.0


async def submit(url: str, count: int) -> list[str]:
    async with aiohttp.ClientSession() as session:

        async def one() -> str:
            async with session.post(f"{url}/api/v1/generations", json=common.ORDER) as resp:
                assert resp.status == 202, await resp.text()
                generation_id: str = (await resp.json())["generation_id"]
                return generation_id

        return list(await asyncio.gather(*(one() for _ in range(count))))


async def statuses(url: str, ids: list[str]) -> dict[str, int]:
    """How far the orders are (read all at once, just before the SIGTERM)."""
    async with aiohttp.ClientSession() as session:

        async def one(gid: str) -> str:
            async with session.get(f"{url}/api/v1/generations/{gid}") as resp:
                status: str = (await resp.json())["status"]
                return status

        found = await asyncio.gather(*(one(gid) for gid in ids))
    return {status: found.count(status) for status in sorted(set(found))}


def stop_once(busy: bool, logs: Any) -> dict[str, Any]:
    """One stack, stopped idle or with ``ORDERS`` in flight: seconds, processes, what was in flight."""
    with common.stack(logs) as stack:
        in_flight: dict[str, int] = {}
        if busy:
            ids = asyncio.run(submit(stack.url, ORDERS))
            time.sleep(AFTER)
            in_flight = asyncio.run(statuses(stack.url, ids))
        processes = stack.processes()
        seconds = stack.serve.stop(timeout=30)
        left = [pid for pid in processes if common.alive(pid)]
        code = stack.serve.popen.returncode
    kinds = sorted({line.split()[0].rsplit("/", 1)[-1] for line in processes.values() if line})
    return {"seconds": seconds, "processes": len(processes), "left": left, "exit": code,
            "in_flight": in_flight, "kinds": kinds}  # fmt: skip


def main() -> None:
    command = f"reelstream serve; {ORDERS} orders; SIGTERM {AFTER:g} s after the last; wait for every process"
    info = common.header("shutdown: SIGTERM with generations in flight", command)
    logs = common.log_dir("shutdown")
    runs: list[dict[str, Any]] = []
    for run in range(1, RUNS + 1):
        idle = stop_once(False, logs)
        busy = stop_once(True, logs)
        for name, result in (("idle", idle), ("busy", busy)):
            where = f", in flight at the SIGTERM: {result['in_flight']}" if result["in_flight"] else ""
            left = f", LEFT BEHIND: {result['left']}" if result["left"] else ""
            print(
                f"run {run}: {name:5} {result['processes']} processes gone in {result['seconds']:.2f} s"
                f" (exit {result['exit']}{left}){where}",
                flush=True,
            )
        runs.append({"idle": idle, "busy": busy})
    busy_s = common.median([r["busy"]["seconds"] for r in runs])
    idle_s = common.median([r["idle"]["seconds"] for r in runs])
    worst = max(r["busy"]["seconds"] for r in runs)
    clean = all(not r["busy"]["left"] and not r["idle"]["left"] for r in runs)
    met = worst <= TARGET_SECONDS and clean
    print(
        f"median of {RUNS}: {busy_s:.2f} s with {ORDERS} in flight, {idle_s:.2f} s idle (reference);"
        f" worst {worst:.2f} s"
    )
    print(f"target every process gone <= {TARGET_SECONDS:.0f} s: {'met' if met else 'NOT met'}")
    median = {"busy_s": busy_s, "idle_s": idle_s, "worst_s": worst}
    common.save("shutdown", {"machine": info, "command": command, "runs": runs, "met": met, "median": median})


if __name__ == "__main__":
    main()
