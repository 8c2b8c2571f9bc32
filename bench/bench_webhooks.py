"""Benchmark 2: provider webhook ingest. wrk POSTs correctly signed Replicate webhooks to the gateway.

Every request is a different delivery (its own ``webhook-id``) of a terminal prediction recorded in
Postgres, so the gateway does all of its work: verify the Standard Webhooks signature, parse, resolve
the prediction, record the delivery, publish ``clip.completed``, answer. "Verified and published" is
read from the gateway's own ``reelstream_webhooks_total{outcome="accepted"}``, not from wrk, since a
duplicate or an unknown prediction is answered 2xx too.

Signing needs HMAC, which wrk's Lua lacks, so the deliveries are signed here beforehand (id, prediction,
signature per line of a data file, one timestamp per run, well inside the 5-minute tolerance) and the
Lua script assembles each body from the same template. The predictions belong to generations seeded
as ``canceled``: the stages consuming ``clip.completed`` look and do nothing, so what is measured is the
gateway, not clip downloads. The ceiling is the bare aiohttp handler fed the very same requests.

Beside each run's figures: the CPU each kind of process used, and the gateway process's CPU per answer.
The trees take turns going first.

Targets: >= 2,000 verified and published webhooks/s, p99 < 50 ms.
Settings: BENCH_RUNS (3), BENCH_SECONDS (10), BENCH_CONNECTIONS (64), BENCH_PROFILE (1), and
BENCH_COMPARE=DIR or NAME=DIR,... to measure other source trees in the same runs (before/after).
"""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import common

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "64"))
PROFILE = os.environ.get("BENCH_PROFILE", "1") == "1"
WARMUP_SECONDS = 3
#: Predictions seeded per run; deliveries cycle over them (a prediction may get several deliveries).
PREDICTIONS = 20_000
#: Deliveries signed per wrk run: more than a run can send, so no webhook-id repeats.
DELIVERIES = 120_000
TARGET_RPS, TARGET_P99_MS = 2000, 50.0
PATH = "/api/v1/webhooks/replicate"

_BODY = {
    "id": "{pid}",
    "model": "wan-video/wan-2.2-t2v-fast",
    "version": "0" * 64,
    "input": {"prompt": "A sunrise run through a coastal city", "aspect_ratio": "16:9", "num_frames": 81},
    "logs": "",
    "output": None,
    "data_removed": False,
    "error": "CUDA out of memory",
    "status": "failed",
    "created_at": "2026-01-01T00:00:00.000000Z",
    "started_at": "2026-01-01T00:00:01.000000Z",
    "completed_at": "2026-01-01T00:00:30.000000Z",
    "urls": {
        "get": "https://api.replicate.com/v1/predictions/{pid}",
        "cancel": "https://api.replicate.com/v1/predictions/{pid}/cancel",
        "web": "https://replicate.com/p/{pid}",
    },
    "metrics": {"predict_time": 29.0, "total_time": 30.0},
}
TEMPLATE = json.dumps(_BODY, separators=(",", ":")).split("{pid}")


def body(pid: str) -> str:
    return pid.join(TEMPLATE)


def signer(secret: str) -> tuple[bytes, str]:
    """The HMAC key of a ``whsec_`` secret and the timestamp this run's deliveries carry."""
    return base64.b64decode(secret.removeprefix("whsec_")), str(int(datetime.now(UTC).timestamp()))


def sign_deliveries(path: Path, pids: list[str], count: int) -> Path:
    """``count`` deliveries (``webhook-id prediction signature`` per line), prediction ids in turn."""
    key, stamp = signer(common.WEBHOOK_SECRET)
    lines = [stamp]
    for i in range(count):
        msg_id, pid = f"msg_{uuid.uuid4().hex}", pids[i % len(pids)]
        digest = hmac.new(key, f"{msg_id}.{stamp}.{body(pid)}".encode(), hashlib.sha256).digest()
        lines.append(f"{msg_id} {pid} v1,{base64.b64encode(digest).decode()}")
    path.write_text("\n".join(lines) + "\n")
    return path


def lua(data: Path) -> str:
    """Each wrk thread takes every n-th delivery of the data file, so no webhook-id is sent twice."""
    parts = ", ".join(common.lua_string(p) for p in TEMPLATE)
    return f"""
local parts = {{{parts}}}
local threads = {common.WRK_THREADS}
local mine, stamp, i = {{}}, nil, 0
wrapped = 0
function init(args)
  local n = 0
  for line in io.lines({common.lua_string(str(data))}) do
    if stamp == nil then stamp = line
    else
      if n % threads == tid then
        local id, pid, sig = line:match("^(%S+) (%S+) (%S+)$")
        table.insert(mine, {{id, pid, sig}})
      end
      n = n + 1
    end
  end
end
function request()
  i = i + 1
  if i > #mine then i = 1; wrapped = wrapped + 1 end
  local e = mine[i]
  local headers = {{["content-type"] = "application/json", ["webhook-id"] = e[1],
                   ["webhook-timestamp"] = stamp, ["webhook-signature"] = e[3]}}
  return wrk.format("POST", "{PATH}", headers, table.concat(parts, e[2]))
end
"""


async def seed(database_url: str, count: int) -> list[str]:
    """``count`` predictions of canceled generations (one clip each), recorded like the clips stage does."""
    generation_ids = [f"gen_{uuid.uuid4().hex}" for _ in range(count)]
    prediction_ids = [uuid.uuid4().hex[:26] for _ in range(count)]
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO generations (id, status, prompt, duration_seconds, aspect_ratio, options)"
            " SELECT id, 'canceled', 'webhook benchmark', 5, '16:9', '{}'::jsonb FROM unnest($1::text[]) id",
            generation_ids,
        )
        await conn.execute(
            "INSERT INTO predictions (prediction_id, generation_id, clip_id, attempt, provider, status)"
            " SELECT p, g, 'clip_01', 1, 'replicate', 'processing'"
            " FROM unnest($1::text[], $2::text[]) AS t(p, g)",
            prediction_ids,
            generation_ids,
        )
    finally:
        await conn.close()
    return prediction_ids


def accepted(url: str) -> float:
    return common.metric(url + "/metrics", "reelstream_webhooks_total", 'outcome="accepted"')


def measure(logs: Path, tree: Path, bare_url: str | None, profile: Path | None) -> dict[str, Any]:
    """One run against a fresh stack from ``tree``: seed, sign, (the bare handler,) warm up, measure."""
    record: dict[str, Any] = {}
    with common.stack(logs, tree=tree) as stack:
        pids = asyncio.run(seed(stack.stack["database_url"], PREDICTIONS))
        warm = common.wrk_script(
            logs / "warm.lua", lua(sign_deliveries(logs / "warm.txt", pids, DELIVERIES // 4))
        )
        deliveries = sign_deliveries(logs / "deliveries.txt", pids, DELIVERIES)
        script = common.wrk_script(logs / "webhooks.lua", lua(deliveries))
        if bare_url is not None:  # the ceiling, fed the very same requests, while this stack idles
            record["bare"] = common.wrk(bare_url + PATH, script, connections=CONNECTIONS, seconds=SECONDS)
        common.wrk(stack.url + PATH, warm, connections=CONNECTIONS, seconds=WARMUP_SECONDS)
        pid = stack.gateway_pid()
        spy = common.start_profile(pid, SECONDS - 2, profile) if profile else None
        before, cpu_before, started = accepted(stack.url), common.cpu_by_kind(stack), time.monotonic()
        cpu_before["gateway process"] = common.cpu_seconds(pid)
        result = common.wrk(stack.url + PATH, script, connections=CONNECTIONS, seconds=SECONDS)
        cpu_after = {**common.cpu_by_kind(stack), "gateway process": common.cpu_seconds(pid)}
        cpu = common.cpu_share(cpu_before, cpu_after, time.monotonic() - started)
        published = accepted(stack.url) - before
        # CPU per answer of the process serving HTTP: steadier than the rate on a shared machine.
        per_request = (cpu_after["gateway process"] - cpu_before["gateway process"]) / max(result.requests, 1)
        cpu += f", gateway process {per_request * 1000:.2f} ms CPU per request"
        if spy is not None:
            spy.wait()
    rate = published / (result.requests / result.rps) if result.rps else 0.0
    record["result"] = {**result.__dict__, "published": published, "published_per_s": rate, "cpu": cpu}
    record["wrk"] = result
    return record


def main() -> None:
    common.require_wrk()
    command = (
        f"wrk -t{common.WRK_THREADS} -c{CONNECTIONS} -d{SECONDS}s -s webhooks.lua http://127.0.0.1:PORT{PATH}"
    )
    info = common.header("webhook ingest: POST /api/v1/webhooks/replicate, signed deliveries", command)
    logs = common.log_dir("webhooks")
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
            row: dict[str, Any] = {}
            # The trees take turns going first (the bare handler is measured in the first one's stack).
            names = list(trees)
            names = names[(run - 1) % len(names) :] + names[: (run - 1) % len(names)]
            for i, name in enumerate(names):
                tree = trees[name]
                raw = logs / f"profile-{name}.raw" if PROFILE and run == 1 else None
                measured = measure(logs, tree, bare_url if i == 0 else None, raw)
                if "bare" in measured:
                    row["bare"] = measured["bare"].__dict__
                    print(f"run {run}: {'bare':8} {measured['bare'].line()}", flush=True)
                result, wrk_result = measured["result"], measured["wrk"]
                share = common.ratio(wrk_result.rps, row["bare"]["rps"])
                print(f"run {run}: {name:8} {wrk_result.line()}  = {share} of bare")
                print(
                    f"{'':16} verified and published: {result['published']:.0f}"
                    f" ({result['published_per_s']:.0f}/s); {result['cpu']}, wrk {wrk_result.wrk_cores:.2f}",
                    flush=True,
                )
                row[name] = result
                if raw is not None and raw.exists():
                    profiles[name] = common.top_frames(raw)
            runs.append(row)
    finally:
        bare.stop()

    def med(side: str, key: str) -> float:
        return common.median([float(r[side][key]) for r in runs])

    summary: dict[str, Any] = {"bare": {"rps": med("bare", "rps"), "p99_ms": med("bare", "p99_ms")}}
    for name in trees:
        rate, p99 = med(name, "published_per_s"), med(name, "p99_ms")
        share = common.median([r[name]["rps"] / r["bare"]["rps"] for r in runs])
        summary[name] = {"published_per_s": rate, "p99_ms": p99, "ratio": share}
        print(
            f"median of {RUNS}: {name} {rate:.0f} verified and published/s, p99 {p99:.1f} ms,"
            f" {share:.0%} of bare"
            f" (bare {summary['bare']['rps']:.0f} req/s, p99 {summary['bare']['p99_ms']:.1f} ms)"
        )
    mine = summary["gateway"]
    verdict = {
        f">= {TARGET_RPS}/s": mine["published_per_s"] >= TARGET_RPS,
        f"p99 < {TARGET_P99_MS:.0f} ms": mine["p99_ms"] < TARGET_P99_MS,
    }
    print("targets: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in verdict.items()))
    for name, text in profiles.items():
        print(f"\nprofile of the gateway process ({name}) during run 1 (py-spy, top frames):\n{text}")
    payload = {"machine": info, "command": command, "runs": runs, "median": summary, "targets": verdict}
    common.save("webhooks", {**payload, "profiles": profiles})


if __name__ == "__main__":
    main()
