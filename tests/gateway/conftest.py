"""Gateway test harness: the real app on aiohttp's TestServer, real Postgres, real tansu.

The gateway tests get their own database next to the session's ``database_url`` (listing endpoints
must not see generations other test packages create), and ``fresh_database`` makes one more for a
test that needs an empty table. Only the video provider is a double (it records cancels).
"""

import base64
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from gateway_harness import Gateway, GatewayFactory, RecordingProvider, Tap

from gateway.app import GatewayDeps, create_app
from reelstream import db, embedded, kafka
from reelstream.settings import Settings
from reelstream.storage import LocalStorage

# -- databases ----------------------------------------------------------------------------------------


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@dataclass
class Databases:
    """Creates migrated databases on the session's server and drops them at the end."""

    base_url: str
    created: list[str] = field(default_factory=list)

    async def create(self) -> str:
        name = f"reelstream_gw_{uuid.uuid4().hex[:12]}"
        admin = await asyncpg.connect(self.base_url)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        self.created.append(name)
        url = _with_database(self.base_url, name)
        await db.migrate(url)
        return url

    async def drop_all(self) -> None:
        admin = await asyncpg.connect(self.base_url)
        try:
            for name in self.created:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def gw_databases(database_url: str) -> AsyncIterator[Databases]:
    await db.migrate(database_url)
    databases = Databases(database_url)
    yield databases
    await databases.drop_all()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def gw_pool(gw_databases: Databases) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(await gw_databases.create(), max_size=20)
    yield pool
    await pool.close()


@pytest_asyncio.fixture(loop_scope="session")
async def fresh_pool(gw_databases: Databases) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a database of its own, empty but migrated."""
    pool = await db.create_pool(await gw_databases.create(), max_size=5)
    yield pool
    await pool.close()


# -- kafka --------------------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def gw_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """The gateway tests' own broker, not the session's: the orders they publish to
    ``generation.requested`` must never reach a whole stack another test package runs there (it would
    render them, and call back their callback URLs)."""
    service = await embedded.start_kafka(tmp_path_factory.mktemp("gateway-kafka"))
    try:
        await kafka.ensure_topics(service.url, kafka.all_topics())
        yield service.url
    finally:
        await service.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def gw_producer(gw_bootstrap: str) -> AsyncIterator[kafka.Producer]:
    producer = kafka.Producer(gw_bootstrap)
    await producer.start()
    yield producer
    await producer.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def tap(gw_bootstrap: str) -> AsyncIterator[Callable[[str], Awaitable[Tap]]]:
    taps: list[Tap] = []

    async def open_tap(topic: str) -> Tap:
        t = Tap(gw_bootstrap, topic)
        await t.start()
        taps.append(t)
        return t

    yield open_tap
    for t in taps:
        await t.stop()


# -- the gateway --------------------------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def make_gateway(
    gw_pool: asyncpg.Pool, gw_producer: kafka.Producer, gw_bootstrap: str, tmp_path: Path
) -> AsyncIterator[GatewayFactory]:
    """Start gateways with chosen settings or parts; all are stopped after the test."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def factory(
        *,
        pool: asyncpg.Pool | None = None,
        producer: kafka.Producer | None = None,
        bootstrap: str | None = None,
        provider: RecordingProvider | None = None,
        customize: Callable[[web.Application], None] | None = None,
        redis: aioredis.Redis | None = None,
        **settings: Any,
    ) -> Gateway:
        settings.setdefault("api_keys", None)  # whatever the environment says
        settings.setdefault("replicate_api_token", None)
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        storage = LocalStorage(tmp_path / f"storage_{len(clients)}")
        provider = provider or RecordingProvider()
        deps = GatewayDeps(
            settings=Settings(data_dir=tmp_path / "data", **settings),
            pool=pool or gw_pool,
            producer=producer or gw_producer,
            kafka_bootstrap=bootstrap or gw_bootstrap,
            storage=storage,
            provider=provider,
            webhook_secret=secret,
            redis=redis,
        )
        app = create_app(deps)
        if customize is not None:
            customize(app)
        client: TestClient[web.Request, web.Application] = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return Gateway(client, deps, provider, deps.pool, storage, secret)

    yield factory
    for client in clients:
        await client.close()


@pytest_asyncio.fixture(loop_scope="session")
async def gw(make_gateway: GatewayFactory) -> Gateway:
    """A gateway with the default settings: no API keys, a generous rate limit."""
    return await make_gateway(rate_limit_per_minute=100_000)
