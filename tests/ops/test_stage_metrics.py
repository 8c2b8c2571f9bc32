"""`reelstream stage NAME` serves its /metrics by default, as a cluster runs it (no options)."""

import asyncio
import os
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent / "reelstream"
ROOT = Path(__file__).resolve().parents[2]


async def test_a_stage_process_serves_its_metrics_without_being_asked(
    kafka_bootstrap: str, new_database: Callable[[], Awaitable[str]], tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELSTREAM_")}
    env.update(
        REELSTREAM_KAFKA_BOOTSTRAP=kafka_bootstrap,
        REELSTREAM_DATABASE_URL=await new_database(),
        REELSTREAM_DATA_DIR=str(tmp_path),
        REELSTREAM_KAFKA_SESSION_TIMEOUT_MS="2000",
        REELSTREAM_KAFKA_HEARTBEAT_INTERVAL_MS="500",
    )
    # Two at once on one machine: the second finds the default port (9464) taken and uses another.
    procs = [
        await asyncio.create_subprocess_exec(
            str(BIN), "stage", "planning", env=env, cwd=ROOT, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(2)
    ]
    urls: list[str] = []
    try:
        for proc in procs:
            assert proc.stderr is not None
            while True:
                line = (await asyncio.wait_for(proc.stderr.readline(), 90)).decode()
                assert line, "the stage ended without serving its metrics"
                if found := re.search(r"metrics on (http://\S+/metrics)", line):
                    urls.append(found.group(1))
                    break
        assert len(set(urls)) == 2
        async with aiohttp.ClientSession() as session:
            for url in urls:
                async with session.get(url) as resp:
                    assert resp.status == 200
                    names = set(re.findall(r"^# TYPE (\S+)", await resp.text(), re.M))
                assert "reelstream_handler_seconds" in names
                assert {n for n in names if not n.startswith("reelstream_")} == set()
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
        codes = [await asyncio.wait_for(proc.wait(), 30) for proc in procs]
    assert codes == [0, 0]
