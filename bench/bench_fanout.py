"""Benchmark 4: status fan-out. 1,000 WebSocket clients on ``/ws/generations/{id}``, spread over 50
generations; status events published to ``generation.status``; delay from publish to receipt.

The generations are real orders, waiting at the held Replicate stand-in (status ``generating``). The
benchmark then publishes ``generation.status`` events for them itself, each stamped with the time it
was published (``at``), progress moving forward so every subscriber must be told; the clients (a
process of their own) note when each message arrives. Same machine, same clock.

The ceiling is a bare aiohttp server fed from the same topic (no group, no database, no validation),
measured with the same clients and the same publisher in the same run.

Target: status delivery p99 < 200 ms.
BENCH_COMPARE=DIR or NAME=DIR,... measures other source trees too (a stack each), for before/after.
Settings: BENCH_RUNS (3), BENCH_WS_CLIENTS (1000), BENCH_WS_GENERATIONS (50), BENCH_WS_ROUNDS (24; runs x
rounds must stay under 74, percent goes up to 99), BENCH_WS_RATE (4
rounds of one event per generation per second: 200 events/s, 4,000 messages/s to the sockets, spread
evenly in time).
"""

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import common
from aiokafka import AIOKafkaProducer

from reelstream.events import encode, make_event, now
from schemas import topics
from schemas.api import Progress
from schemas.events import GenerationStatusChanged

CLIENTS = int(os.environ.get("BENCH_WS_CLIENTS", "1000"))
GENERATIONS = int(os.environ.get("BENCH_WS_GENERATIONS", "50"))
ROUNDS = int(os.environ.get("BENCH_WS_ROUNDS", "24"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
#: Progress of a held generation is 25 %; the synthetic events count up from just above it, to 99.
FIRST_PERCENT = 26
RATE = float(os.environ.get("BENCH_WS_RATE", "4"))
PROFILE = os.environ.get("BENCH_PROFILE", "1") == "1"
TARGET_P99_MS = 200.0


async def orders(url: str, count: int) -> list[str]:
    """``count`` generations, waited for until every one is ``generating`` (held at the provider)."""
    async with aiohttp.ClientSession() as session:
        ids = []
        for _ in range(count):
            async with session.post(f"{url}/api/v1/generations", json=common.ORDER) as resp:
                ids.append((await resp.json())["generation_id"])
        deadline = time.monotonic() + 180
        waiting = set(ids)
        while waiting and time.monotonic() < deadline:
            for gid in list(waiting):
                async with session.get(f"{url}/api/v1/generations/{gid}") as resp:
                    detail = await resp.json()
                if detail["status"] == "generating" and all(c["prediction_id"] for c in detail["clips"]):
                    waiting.discard(gid)
            await asyncio.sleep(0.5)
        if waiting:
            raise RuntimeError(f"{len(waiting)} generations never reached 'generating'")
    await asyncio.sleep(2)  # the last status events of the stages are out
    return ids


async def publish_rounds(bootstrap: str, ids: list[str], rounds: int, rate: float, first: int) -> int:
    """``rounds`` rounds of one status event per generation (percent first, first + 1, ...), spread evenly.

    Each event is stamped (``at``) just before it is handed to the producer, which is not waited for
    event by event: the stamp is the moment of publishing, whatever the broker's acknowledgement takes.
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=0
    )
    await producer.start()
    pending = []
    try:
        start, step = time.monotonic(), 1.0 / (rate * len(ids))
        for r in range(rounds):
            progress = Progress(stage="generating", percent=first + r, clips_total=3)
            for i, gid in enumerate(ids):
                await asyncio.sleep(max(0.0, start + (r * len(ids) + i) * step - time.monotonic()))
                data = GenerationStatusChanged(
                    generation_id=gid, status="generating", progress=progress, at=now()
                )
                event = make_event(topics.GENERATION_STATUS, data, source="/bench/fanout", subject=gid)
                pending.append(await producer.send(topics.GENERATION_STATUS, encode(event), key=gid.encode()))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return len(pending)


def measure(
    name: str,
    base: str,
    ids_file: Path,
    bootstrap: str,
    ids: list[str],
    logs: Path,
    first: int,
    pid: int | None = None,
) -> dict[str, Any]:
    """Connect the clients to ``base``, publish every round, and collect what arrived and when."""
    listen = ROUNDS / RATE + 60  # a lagging server still gets its messages counted, late
    out = logs / f"ws-{name}.json"
    argv = [common.PYTHON, str(common.BENCH / "ws_clients.py"), base, str(ids_file), str(CLIENTS)]
    argv += [str(ROUNDS), str(listen), str(out)]
    clients = common.Proc.start(f"ws_clients_{name}", argv, common.base_env(), logs)
    try:
        line = clients.wait_for("connected", 120)
        connected = int(line.split()[1])
        spy = None
        if pid is not None and PROFILE:
            spy = common.start_profile(pid, max(1, int(ROUNDS / RATE)), logs / f"profile-{name}.raw")
        sent = asyncio.run(publish_rounds(bootstrap, ids, ROUNDS, RATE, first))
        if spy is not None:
            spy.wait()
        clients.popen.wait(listen + 60)
    finally:
        clients.stop()
    data = json.loads(out.read_text())
    delays = sorted(d * 1000 for d in data["delays"])
    per_generation = CLIENTS / len(ids)
    expected = round(sent * per_generation)

    def pct(q: float) -> float:
        return delays[min(len(delays) - 1, int(q * len(delays)))] if delays else float("nan")

    result = {
        "connected": connected, "events": sent, "expected": expected, "received": len(delays),
        "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": delays[-1] if delays else float("nan"),
        "closes": data["closes"][:10], "closed": len(data["closes"]),
    }  # fmt: skip
    print(
        f"{name:8} {connected} sockets, {sent} events -> {len(delays)}/{expected} messages;"
        f" p50 {result['p50_ms']:.1f} ms  p99 {result['p99_ms']:.1f} ms  max {result['max_ms']:.1f} ms"
        + (f"; closed early: {len(data['closes'])} {data['closes'][:3]}" if data["closes"] else "")
        + (f"; sockets that missed messages: {short}" if (short := _short(data, ROUNDS)) else ""),
        flush=True,
    )
    return result


def _short(data: dict[str, Any], rounds: int) -> int:
    return sum(1 for counts in data.get("received", {}).values() for got in counts if got < rounds)


def main() -> None:
    command = (
        f"{CLIENTS} WebSockets over {GENERATIONS} generations; {ROUNDS} rounds of one generation.status"
        f" event per generation at {RATE:g} rounds/s, {RUNS} runs"
    )
    info = common.header("fan-out: generation.status to WebSockets", command)
    logs = common.log_dir("fanout")
    trees = {**common.compare_trees(), "gateway": common.ROOT}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in [*trees, "bare"]}
    for stale in logs.glob("profile-*.raw"):
        stale.unlink()
    for name, tree in trees.items():
        print(f"{name}: {tree}", flush=True)
        with common.stack(logs, tree=tree) as stack:
            ids = asyncio.run(orders(stack.url, GENERATIONS))
            ids_file = logs / "ids.txt"
            ids_file.write_text("\n".join(ids) + "\n")
            bootstrap = stack.stack["kafka_bootstrap"]
            bare = None
            if name == "gateway":  # the ceiling once, beside the last stack
                bare, bare_url = common.start_bare(logs, "--ws", bootstrap)
                bare.wait_for("fan-out ready", 60)
            try:
                for run in range(RUNS):
                    # Percent moves on from run to run: a snapshot may come from the gateway's memory of
                    # generation.status (when Postgres is slow to hand out a connection), which has seen
                    # the earlier runs' events, and a subscriber is only told what moves forward.
                    first = FIRST_PERCENT + run * ROUNDS
                    pid = stack.gateway_pid() if run == 0 and PROFILE else None
                    runs[name].append(measure(name, stack.url, ids_file, bootstrap, ids, logs, first, pid))
                    if bare is not None:
                        runs["bare"].append(measure("bare", bare_url, ids_file, bootstrap, ids, logs, first))
            finally:
                if bare is not None:
                    bare.stop()
    bare_p99 = common.median([r["p99_ms"] for r in runs["bare"]])
    summary: dict[str, Any] = {"bare": {"p99_ms": bare_p99}}
    for name in trees:
        p99 = common.median([r["p99_ms"] for r in runs[name]])
        delivered = all(r["received"] == r["expected"] for r in runs[name])
        summary[name] = {"p99_ms": p99, "delivered": delivered}
        print(
            f"median of {RUNS}: {name} p99 {p99:.1f} ms, bare p99 {bare_p99:.1f} ms ({p99 / bare_p99:.1f}x);"
            f" every message delivered: {delivered}"
        )
    mine = summary["gateway"]
    met = mine["p99_ms"] < TARGET_P99_MS and mine["delivered"]
    print(f"target p99 < {TARGET_P99_MS:.0f} ms with every message delivered: {'met' if met else 'NOT met'}")
    profiles = {}
    for name in trees:
        profile = logs / f"profile-{name}.raw"
        if profile.exists():
            profiles[name] = common.top_frames(profile)
            title = f"profile of the gateway process ({name}) during run 1 (py-spy, top frames)"
            print(f"\n{title}:\n{profiles[name]}")
    payload = {"machine": info, "command": command, "runs": runs, "median": summary, "met": met}
    common.save("fanout", {**payload, "profiles": profiles})


if __name__ == "__main__":
    main()
