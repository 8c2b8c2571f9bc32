"""Benchmark 1: accepting orders. wrk POSTs one valid body to ``POST /api/v1/generations``.

Against ``reelstream serve`` on the embedded stack, with Replicate pointed at a stand-in that holds every
prediction (the provider never finishes, so nothing downstream ever completes) and the rate limit raised
out of the way. The ceiling is a bare aiohttp handler answering 202 on the same machine, measured in
the same run, alternating with the real thing so both see the same machine.

Each run gets a fresh stack: the orders of one run are still flowing through the stages when it ends, and
must not slow the next run down. With ``BENCH_PROFILE=1`` (the default) ``py-spy`` records the gateway
process during the first run and its top frames are printed and saved.

Beside each run's figures: the CPU each kind of process used, and the gateway process's CPU per answer
(user + system time over the requests answered), which moves far less than the request rate on a shared
machine and is what a change to the gateway's code changes. The trees take turns going first.

Targets (issue "Fast under load"): >= 2,000 req/s, p99 < 50 ms, >= 50 % of the bare handler.
While ``serve`` runs the gateway inside the stages' process, the first run also measures ``reelstream
gateway`` as a process of its own beside a fresh stack: the shape a supervisor of one process per stage
gives it (once, to keep ``make bench`` short).

Settings: BENCH_RUNS (3), BENCH_SECONDS (20), BENCH_CONNECTIONS (64), BENCH_PROFILE (1),
BENCH_LONE_GATEWAY (1: first run only; all; 0), and BENCH_COMPARE=DIR or NAME=DIR,... to measure
other source trees too, in the same runs (before/after figures).
"""

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import common

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "20"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "64"))
PROFILE = os.environ.get("BENCH_PROFILE", "1") == "1"
#: While serve runs the gateway in the stages' process, also measure it as a process of its own.
#: "1": in the first run only; "all": in every run; "0": never.
LONE = os.environ.get("BENCH_LONE_GATEWAY", "1")
WARMUP_SECONDS = 3
TARGET_RPS, TARGET_P99_MS, TARGET_RATIO = 2000, 50.0, 0.5


def measure(
    logs: Path, script: Path, tree: Path, profile: Path | None, *, lone: bool = False
) -> tuple[common.WrkResult, str, bool]:
    """One run against a fresh ``reelstream serve`` from ``tree``: figures, cores used, shared or not.

    ``lone``: against ``reelstream gateway`` started beside it instead (see :func:`common.lone_gateway`).
    """
    with common.stack(logs, tree=tree) as stack, contextlib.ExitStack() as extra:
        shared = stack.gateway_shares_stages()
        url, pid = stack.url, stack.gateway_pid()
        if lone:
            proc, url = extra.enter_context(common.lone_gateway(stack, tree=tree))
            pid = proc.pid
        url += "/api/v1/generations"
        common.wrk(url, script, connections=CONNECTIONS, seconds=WARMUP_SECONDS)
        spy = common.start_profile(pid, SECONDS - 2, profile) if profile else None
        cpu_before, started = common.cpu_by_kind(stack), time.monotonic()
        cpu_before["gateway process"] = common.cpu_seconds(pid)
        result = common.wrk(url, script, connections=CONNECTIONS, seconds=SECONDS)
        cpu_after = common.cpu_by_kind(stack)
        cpu_after["gateway process"] = common.cpu_seconds(pid)
        cpu = common.cpu_share(cpu_before, cpu_after, time.monotonic() - started)
        # CPU per answer of the process serving HTTP: steadier than req/s on a shared machine, where
        # the throughput follows whatever else the two cores run that minute.
        per_request = (cpu_after["gateway process"] - cpu_before["gateway process"]) / max(result.requests, 1)
        cpu += f", gateway process {per_request * 1000:.2f} ms CPU per request"
        if spy is not None:
            spy.wait()
    return result, f"{cpu}, wrk {result.wrk_cores:.2f}", shared


def report(
    run: int, name: str, result: common.WrkResult, ceiling: common.WrkResult, cpu: str, record: dict[str, Any]
) -> None:
    share = common.ratio(result.rps, ceiling.rps)
    print(f"run {run}: {name:8} {result.line()}  = {share} of bare")
    print(f"{'':16} {cpu}", flush=True)
    record[name] = {**result.__dict__, "cpu": cpu}


def main() -> None:
    common.require_wrk()
    command = f"wrk -t2 -c{CONNECTIONS} -d{SECONDS}s -s post.lua http://127.0.0.1:PORT/api/v1/generations"
    info = common.header("accept: POST /api/v1/generations", command)
    logs = common.log_dir("accept")
    script = common.post_script(logs / "post.lua", common.ORDER)
    print(f"body: {common.ORDER}")
    trees = {**common.compare_trees(), "gateway": common.ROOT}
    for name, tree in trees.items():
        print(f"{name}: {tree}")
    bare, bare_url = common.start_bare(logs)
    runs: list[dict[str, Any]] = []
    profiles: dict[str, str] = {}
    for stale in logs.glob("profile*.raw"):
        stale.unlink()
    try:
        for run in range(1, RUNS + 1):
            common.wrk(bare_url, script, connections=CONNECTIONS, seconds=WARMUP_SECONDS)
            ceiling = common.wrk(bare_url, script, connections=CONNECTIONS, seconds=SECONDS)
            print(f"run {run}: {'bare':8} {ceiling.line()}", flush=True)
            record: dict[str, Any] = {"bare": ceiling.__dict__}
            # The trees take turns going first: the one measured right after another stack stopped
            # shares the machine with its teardown.
            names = list(trees)
            names = names[(run - 1) % len(names) :] + names[: (run - 1) % len(names)]
            for name in names:
                tree = trees[name]
                raw = logs / f"profile-{name}.raw" if PROFILE and run == 1 else None
                result, cpu, shared = measure(logs, script, tree, raw)
                report(run, name, result, ceiling, cpu, record)
                if raw is not None and raw.exists():
                    profiles[name] = common.top_frames(raw)
                if shared and (LONE == "all" or (LONE == "1" and run == 1)):
                    raw = logs / f"profile-{name}-lone.raw" if PROFILE and run == 1 else None
                    result, cpu, _ = measure(logs, script, tree, raw, lone=True)
                    report(run, f"{name} (gateway process)", result, ceiling, cpu, record)
                    if raw is not None and raw.exists():
                        profiles[f"{name} (gateway process)"] = common.top_frames(raw)
            runs.append(record)
    finally:
        bare.stop()

    def med(side: str, key: str) -> float:
        return common.median([float(r[side][key]) for r in runs])

    summary: dict[str, Any] = {"bare": {"rps": med("bare", "rps"), "p99_ms": med("bare", "p99_ms")}}
    for name in [k for k in runs[0] if k != "bare"]:
        measured = [r for r in runs if name in r]
        rps = common.median([r[name]["rps"] for r in measured])
        p99 = common.median([r[name]["p99_ms"] for r in measured])
        share = common.median([r[name]["rps"] / r["bare"]["rps"] for r in measured])
        summary[name] = {"rps": rps, "p99_ms": p99, "ratio": share}
        print(
            f"median of {len(measured)}: {name} {rps:.0f} req/s, p99 {p99:.1f} ms, {share:.0%} of bare"
            f" (bare {summary['bare']['rps']:.0f} req/s, p99 {summary['bare']['p99_ms']:.1f} ms)"
        )
    mine = summary["gateway"]
    verdict = {
        f">= {TARGET_RPS} req/s": mine["rps"] >= TARGET_RPS,
        f"p99 < {TARGET_P99_MS:.0f} ms": mine["p99_ms"] < TARGET_P99_MS,
        f">= {TARGET_RATIO:.0%} of bare": mine["ratio"] >= TARGET_RATIO,
    }
    print("targets: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in verdict.items()))
    for name, text in profiles.items():
        print(f"\nprofile of the gateway process ({name}) during run 1 (py-spy, top frames):\n{text}")
    common.save(
        "accept",
        {"machine": info, "command": command, "body": common.ORDER, "runs": runs, "median": summary,
         "targets": verdict, "profiles": profiles},
    )  # fmt: skip


if __name__ == "__main__":
    main()
