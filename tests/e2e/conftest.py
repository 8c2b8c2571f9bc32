"""An in-process embedded stack per test module: real tansu, real Postgres, every stage, the gateway."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reelstream import embedded, service
from reelstream.settings import Settings


@dataclass
class Stack:
    settings: Settings
    url: str
    deps: service.Deps


def stack_settings(data_dir: Path, kafka_bootstrap: str, database_url: str, **overrides: Any) -> Settings:
    """Settings of an in-process stack: test-speed Kafka timeouts, its own port and data dir."""
    return Settings(
        data_dir=data_dir,
        http_port=embedded.free_port(),
        kafka_bootstrap=kafka_bootstrap,
        database_url=database_url,
        kafka_session_timeout_ms=2000,
        kafka_heartbeat_interval_ms=500,
        render_concurrency=2,
        **overrides,
    )


@asynccontextmanager
async def running_stack(settings: Settings) -> AsyncIterator[Stack]:
    """Every stage and the gateway in this process, ready to take requests, stopped on exit."""
    async with service.infrastructure(settings) as (pool, producer, deps):
        stop = asyncio.Event()
        ready = asyncio.Event()

        async def on_ready() -> None:
            ready.set()

        everything = asyncio.create_task(
            service.run_everything(
                settings, pool=pool, producer=producer, deps=deps, stop=stop, on_ready=on_ready
            )
        )
        try:
            waiting = asyncio.create_task(ready.wait())
            await asyncio.wait([waiting, everything], timeout=90, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            if everything.done():
                everything.result()  # raises what stopped the stack while starting
            assert ready.is_set(), "the stack did not become ready in 90 s"
            yield Stack(settings, settings.gateway_url, deps)
        finally:
            stop.set()
            await asyncio.gather(everything, return_exceptions=True)


@pytest.fixture(scope="module")
async def stack(
    kafka_bootstrap: str, new_database: Callable[[], Awaitable[str]], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    settings = stack_settings(tmp_path_factory.mktemp("stack"), kafka_bootstrap, await new_database())
    async with running_stack(settings) as running:
        yield running
