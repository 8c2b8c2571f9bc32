"""Run every benchmark: each ``bench/bench_*.py`` found here, in name order, one process each.

New benchmarks (orchestration, time-to-video, media, ...) join by being dropped in as ``bench_NAME.py``;
nothing here lists them. A benchmark that misses its target still counts as run (its figures say so);
one that crashes makes the whole run exit non-zero. ``python bench/run.py accept webhooks`` runs only
the named ones. Each writes its figures to ``bench/results/NAME.json``.
"""

import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def main() -> int:
    wanted = set(sys.argv[1:])
    scripts = sorted(BENCH.glob("bench_*.py"))
    if wanted:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in wanted]
    failed: list[str] = []
    started = time.monotonic()
    timings: list[tuple[str, float, int]] = []
    for script in scripts:
        t0 = time.monotonic()
        print(f"\n### {script.name}", flush=True)
        code = subprocess.call([sys.executable, str(script)], cwd=BENCH.parent)
        timings.append((script.name, time.monotonic() - t0, code))
        if code != 0:
            failed.append(script.name)
    print("\n### summary")
    for name, seconds, code in timings:
        print(f"{name:28} {seconds:6.0f} s  {'ok' if code == 0 else f'FAILED (exit {code})'}")
    print(f"{'total':28} {time.monotonic() - started:6.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
