"""Scale-out: the orchestration benchmark with one, then two, instances of the busiest stage.

The busiest stage in the orchestration run is completion (it fetches, probes and stores every clip and
joins every order). Here the same orders run twice on fresh stacks: once as ``serve`` starts them, and
once with a second ``reelstream stage completion`` process beside it, joining the same consumer group
(the way a cluster scales a stage: another copy of the same command). Printed: generations/s of each
and the CPU seconds every process used, which says what limits it.

Run: ``python bench/bench_scaleout.py`` (``make bench`` runs it with the others).
"""

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import common
from bench_orchestration import (
    AT_ONCE,
    CLIPS_PER_ORDER,
    SETTINGS,
    drive,
    finished_pieces,
    print_busy,
    provider_options,
)

STAGE = "completion"
#: Orders per run (two runs, a stack each): fewer than the orchestration benchmark's, for make bench's time.
ORDERS_HERE = int(os.environ.get("BENCH_SCALE_ORDERS", "60"))


async def one_run(pieces: str, instances: int) -> float:
    logs = common.log_dir(f"scaleout-{instances}")
    with common.stack(logs, provider=provider_options(pieces), **SETTINGS) as stack:
        extra: list[common.Proc] = []
        try:
            for n in range(2, instances + 1):
                argv = common.reelstream_argv("stage", STAGE, "--metrics-port", "0")
                proc = common.Proc.start(f"{STAGE}-{n}", argv, stack.env, logs)
                proc.wait_for("ready", 60)
                extra.append(proc)
            if extra:
                await asyncio.sleep(3)  # the group rebalances onto the new member
            result = await drive(stack, [p.pid for p in extra], orders=ORDERS_HERE)
        finally:
            for proc in extra:
                proc.stop()
    print(
        f"{instances} x {STAGE}: {ORDERS_HERE} orders of {CLIPS_PER_ORDER} clips ({AT_ONCE} at a time)"
        f" {result.statuses} in {result.elapsed:.1f} s: {result.rate:.2f} generations/s,"
        f" POST to first prediction p99 {result.p99 * 1000:.0f} ms"
    )
    print_busy(result)
    return result.rate


async def main() -> int:
    info = common.header(f"scale-out: one and two {STAGE} processes", "python bench/bench_scaleout.py")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="reelstream-bench-scale-") as tmp:
        pieces = await finished_pieces(Path(tmp))
        one = await one_run(pieces, 1)
        two = await one_run(pieces, 2)
    print(
        f"two {STAGE} instances: {two:.2f} generations/s beside one: {one:.2f} ({two / one:.2f}x),"
        f" {time.monotonic() - started:.0f} s in all"
    )
    common.save("scaleout", {"machine": info, "one": one, "two": two})
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
