"""The Replicate stand-in of the tests (tests/support/fake_replicate.py), run as its own process.

Every prediction is held (``hold_predictions``): it is created and stays ``processing``, so no clip ever
finishes and the benchmarks measure the stack with generations waiting for webhooks, like a provider that
takes minutes per clip. With ``BENCH_PRERENDERED=FILE`` (or ``SEED=FILE,...``: by the prediction's seed)
every prediction instead finishes after ``BENCH_PROVIDER_DELAY`` seconds (plus up to
``BENCH_PROVIDER_JITTER`` more) with that file as its output, signed webhook and all, and costs this
machine nothing to "render". A process of its own, so its CPU is not charged to ``serve``'s. Prints
``listening on URL`` once it answers; stops on SIGTERM.
"""

import asyncio
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]

from fake_replicate import FakeReplicate  # noqa: E402


async def main() -> None:
    fake = FakeReplicate(
        os.environ.get("BENCH_REPLICATE_TOKEN", "r8_bench_token"),
        secret=os.environ.get("BENCH_WEBHOOK_SECRET"),
        render_delay=float(os.environ.get("BENCH_PROVIDER_DELAY", "0.05")),
    )
    fake.render_jitter = float(os.environ.get("BENCH_PROVIDER_JITTER", "0"))
    prerendered = os.environ.get("BENCH_PRERENDERED")
    if prerendered and "=" in prerendered:
        for item in prerendered.split(","):
            seed, path = item.split("=", 1)
            fake.prerendered_by_seed[int(seed)] = Path(path)
    elif prerendered:
        fake.prerendered = Path(prerendered)
    else:
        fake.hold_predictions = True
    await fake.start()
    print(f"listening on {fake.base_url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print(f"predictions created: {len(fake.predictions)}", flush=True)
    await fake.stop()


if __name__ == "__main__":
    asyncio.run(main())
