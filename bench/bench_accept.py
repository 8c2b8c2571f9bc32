"""Benchmark 1: accepting orders. wrk POSTs one valid body to ``POST /api/v1/generations``.

Against ``reelstream serve`` on the embedded stack, with Replicate pointed at a stand-in that holds every
prediction (the provider never finishes, so nothing downstream ever completes) and the rate limit raised
out of the way. The ceiling is a bare aiohttp handler answering 202 on the same machine, measured in
the same run, alternating with the real thing so both see the same machine.

Each run gets a fresh stack: the orders of one run are still flowing through the stages when it ends, and
must not slow the next run down. With ``BENCH_PROFILE=1`` (the default) ``py-spy`` records the gateway
process during the first run and its top frames are printed and saved.

Targets (issue "Fast under load"): >= 2,000 req/s, p99 < 50 ms, >= 50 % of the bare handler.
Settings: BENCH_RUNS (3), BENCH_SECONDS (20), BENCH_CONNECTIONS (64), BENCH_PROFILE (1).
"""

import os
import time

import common

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "20"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "64"))
PROFILE = os.environ.get("BENCH_PROFILE", "1") == "1"
WARMUP_SECONDS = 3
TARGET_RPS, TARGET_P99_MS, TARGET_RATIO = 2000, 50.0, 0.5


def main() -> None:
    common.require_wrk()
    command = f"wrk -t2 -c{CONNECTIONS} -d{SECONDS}s -s post.lua http://127.0.0.1:PORT/api/v1/generations"
    info = common.header("accept: POST /api/v1/generations", command)
    logs = common.log_dir("accept")
    script = common.post_script(logs / "post.lua", common.ORDER)
    print(f"body: {common.ORDER}")
    bare, bare_url = common.start_bare(logs)
    runs: list[dict[str, object]] = []
    profile_text = None
    try:
        for run in range(1, RUNS + 1):
            common.wrk(bare_url, script, connections=CONNECTIONS, seconds=WARMUP_SECONDS)
            ceiling = common.wrk(bare_url, script, connections=CONNECTIONS, seconds=SECONDS)
            with common.stack(logs) as stack:
                url = stack.url + "/api/v1/generations"
                common.wrk(url, script, connections=CONNECTIONS, seconds=WARMUP_SECONDS)
                spy = None
                if PROFILE and run == 1:
                    spy = common.start_profile(stack.gateway_pid(), SECONDS - 2, logs / "profile.raw")
                cpu_before, started = common.cpu_by_kind(stack), time.monotonic()
                result = common.wrk(url, script, connections=CONNECTIONS, seconds=SECONDS)
                cpu = common.cpu_share(cpu_before, common.cpu_by_kind(stack), time.monotonic() - started)
                if spy is not None:
                    spy.wait()
                    profile_text = common.top_frames(logs / "profile.raw")
            print(f"run {run}: bare    {ceiling.line()}")
            print(f"run {run}: gateway {result.line()}  = {common.ratio(result.rps, ceiling.rps)} of bare")
            print(f"        {cpu}, wrk {result.wrk_cores:.2f}")
            runs.append({"bare": ceiling.__dict__, "gateway": result.__dict__, "cpu": cpu})
    finally:
        bare.stop()

    def med(side: str, key: str) -> float:
        return common.median([float(r[side][key]) for r in runs])  # type: ignore[index]

    rps, p99, bare_rps, bare_p99 = med("gateway", "rps"), med("gateway", "p99_ms"), med("bare", "rps"), 0.0
    bare_p99 = med("bare", "p99_ms")
    share = rps / bare_rps if bare_rps else 0.0
    print(
        f"median of {RUNS}: gateway {rps:.0f} req/s, p99 {p99:.1f} ms;"
        f" bare {bare_rps:.0f} req/s, p99 {bare_p99:.1f} ms; ratio {share:.0%}"
    )
    verdict = {
        f">= {TARGET_RPS} req/s": rps >= TARGET_RPS,
        f"p99 < {TARGET_P99_MS:.0f} ms": p99 < TARGET_P99_MS,
        f">= {TARGET_RATIO:.0%} of bare": share >= TARGET_RATIO,
    }
    print("targets: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in verdict.items()))
    if profile_text is not None:
        print("\nprofile of the gateway process during run 1 (py-spy, top frames):\n" + profile_text)
    common.save(
        "accept",
        {"machine": info, "command": command, "body": common.ORDER, "runs": runs,
         "median": {"rps": rps, "p99_ms": p99, "bare_rps": bare_rps, "bare_p99_ms": bare_p99, "ratio": share},
         "targets": verdict, "profile": profile_text},
    )  # fmt: skip


if __name__ == "__main__":
    main()
