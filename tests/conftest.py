"""Shared test harness: real services, started once per session, each falling back to something embedded.

* ``kafka_bootstrap``: a tansu broker via :func:`reelstream.embedded.start_kafka` (what ``serve`` runs);
  with ``REELSTREAM_TEST_DOCKER=1`` and a reachable Docker engine, a testcontainers Kafka instead.
* ``database_url``: a fresh database ``reelstream_test_<hex>`` on the local Postgres (127.0.0.1:5432, or
  the server ``REELSTREAM_TEST_PG`` names), dropped at the end; without a local server, an embedded
  Postgres in a temporary dir. The shared server is never stopped or reconfigured. ``new_database``
  makes one more such database: every whole stack gets its own.
* ``redis_url``: db 13 of the local Redis (flushed), else a throwaway ``redis-server``, else a skip.
* ``s3_endpoint``: a moto server, with dummy AWS credentials in the environment.
* ``topic_name``: a unique topic-name prefix per test, so tests never see each other's records.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio

from reelstream import db, embedded
from reelstream.kafka import Producer

log = logging.getLogger(__name__)

#: The shared local server (trust auth); ``REELSTREAM_TEST_PG`` overrides it.
LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/test"
LOCAL_REDIS = "redis://127.0.0.1:6379"
REDIS_DB = 13


# --------------------------------------------------------------------------------------------------
# Kafka


def _docker_available() -> bool:
    try:
        import docker

        docker.from_env().ping()
    except Exception:  # no SDK, no engine, no permission: all mean "no Docker"
        return False
    return True


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """Bootstrap address of a session-wide broker."""
    if os.environ.get("REELSTREAM_TEST_DOCKER") == "1":
        if await asyncio.to_thread(_docker_available):
            from testcontainers.kafka import KafkaContainer

            container = KafkaContainer()
            await asyncio.to_thread(container.start)
            try:
                yield container.get_bootstrap_server()
            finally:
                await asyncio.to_thread(container.stop)
            return
        warnings.warn("REELSTREAM_TEST_DOCKER=1 but no Docker engine answers: using tansu", stacklevel=1)
    service = await embedded.start_kafka(tmp_path_factory.mktemp("kafka"))
    try:
        yield service.url
    finally:
        await service.stop()


@pytest.fixture
def topic_name() -> str:
    """A prefix no other test uses: ``t_<hex>``; append ``.in``, ``.out``, ... for several topics."""
    return f"t_{uuid.uuid4().hex[:12]}"


# --------------------------------------------------------------------------------------------------
# Postgres


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def _reachable(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=3.0)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    await conn.close()
    return True


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def pg_server() -> AsyncIterator[str]:
    """URL of a Postgres server for this session: the local one, or an embedded one on a fresh machine."""
    server_url = os.environ.get("REELSTREAM_TEST_PG")
    if server_url is not None:
        if not await _reachable(server_url):
            raise RuntimeError(f"REELSTREAM_TEST_PG={server_url} does not answer")
        yield server_url
        return
    if await _reachable(LOCAL_PG):
        yield LOCAL_PG
        return
    # A fresh machine: an embedded cluster in a temporary dir. mkdtemp under /tmp (not pytest's 0700
    # tmp tree) keeps the path reachable for the postgres user when the tests run as root.
    fallback_dir = Path(tempfile.mkdtemp(prefix="reelstream-test-pg-"))
    await asyncio.to_thread(fallback_dir.chmod, 0o755)
    fallback = await embedded.start_postgres(fallback_dir)
    try:
        yield fallback.url
    finally:
        await fallback.stop()
        shutil.rmtree(fallback_dir, ignore_errors=True)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def new_database(pg_server: str) -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """Make a fresh, empty database ``reelstream_test_<hex>`` (dropped at the end of the session).

    A whole stack needs one of its own: its sweeps drive on every unfinished generation Postgres holds,
    so a database shared with earlier tests would hand it their leftovers.
    """
    created: list[str] = []

    async def make() -> str:
        name = f"reelstream_test_{uuid.uuid4().hex[:12]}"
        admin = await asyncpg.connect(pg_server, timeout=10.0)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        created.append(name)
        return _with_database(pg_server, name)

    try:
        yield make
    finally:
        admin = await asyncpg.connect(pg_server, timeout=10.0)
        try:
            for name in created:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def database_url(new_database: Callable[[], Awaitable[str]]) -> str:
    """URL of a database created for this session (and dropped after it), shared by its tests."""
    return await new_database()


@pytest_asyncio.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A small pool on the session's database, migrated."""
    await db.migrate(database_url)
    created = await db.create_pool(database_url, max_size=4)
    yield created
    await created.close()


@pytest_asyncio.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[Producer]:
    """The project's CloudEvents producer on the session broker."""
    started = Producer(kafka_bootstrap)
    await started.start()
    yield started
    await started.stop()


# --------------------------------------------------------------------------------------------------
# Redis


async def _redis_answers(url: str) -> bool:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0)
    try:
        return bool(await client.ping())
    except (OSError, aioredis.RedisError):
        return False
    finally:
        await client.aclose()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def redis_url(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """URL of an empty Redis database for this session."""
    import redis.asyncio as aioredis

    proc = None
    url = f"{LOCAL_REDIS}/{REDIS_DB}"
    if not await _redis_answers(url):
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("no Redis on 127.0.0.1:6379 and no redis-server binary")
        port = embedded.free_port()
        argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
        log_path = tmp_path_factory.mktemp("redis") / "redis.log"
        proc = embedded.spawn_child(argv, name="redis", log_path=log_path)
        url = f"redis://127.0.0.1:{port}/{REDIS_DB}"
        for _ in range(200):
            if proc.poll() is not None or await _redis_answers(url):
                break
            await asyncio.sleep(0.025)
        if proc.poll() is not None or not await _redis_answers(url):
            await embedded.stop_child(proc, stop_signal=signal.SIGTERM, grace=5.0, name="redis")
            pytest.fail(f"redis-server did not start; see {log_path}")
    client = aioredis.Redis.from_url(url)
    await client.flushdb()
    try:
        yield url
    finally:
        await client.flushdb()
        await client.aclose()
        if proc is not None:
            await embedded.stop_child(proc, stop_signal=signal.SIGTERM, grace=5.0, name="redis")


# --------------------------------------------------------------------------------------------------
# S3

_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """Endpoint URL of a moto S3 server; AWS credentials in the environment are dummies meanwhile.

    They are overwritten rather than defaulted: code under test that forgot the endpoint must fail
    against the real AWS, not sign requests with a developer's real keys.
    """
    from moto.server import ThreadedMotoServer

    saved = {key: os.environ.get(key) for key in [*_AWS_ENV, "AWS_SESSION_TOKEN", "AWS_PROFILE"]}
    os.environ.update(_AWS_ENV)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)
    port = embedded.free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
