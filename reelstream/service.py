"""Wiring: build the shared dependencies from settings and run stages until told to stop.

``reelstream stage NAME`` runs one stage through :func:`run_stages`; ``reelstream serve`` runs that
command once per stage, and ``reelstream gateway`` beside them, as child processes of one supervisor
(:func:`processes` says which; :mod:`reelstream.supervisor` runs them). :func:`run_everything` runs the
same in one process, for the end-to-end tests. A stage behaves the same wherever it runs.
"""

import asyncio
import importlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from reelstream import db, kafka, logs, mapping, metrics
from reelstream.providers import VideoProvider
from reelstream.providers.local import LocalVideoProvider
from reelstream.runtime import RuntimeConfig, Stage, StageRunner
from reelstream.settings import Settings
from reelstream.storage import LocalStorage, Storage
from reelstream.supervisor import ChildSpec
from reelstream.webhooks import SecretSource, local_secret

log = logging.getLogger(__name__)

STAGE_NAMES = ("intake", "analysis", "planning", "prompting", "clips", "completion")


@dataclass
class Deps:
    """What handlers reach through ``ctx.deps``: settings and the outbound services."""

    settings: Settings
    storage: Storage
    provider: VideoProvider
    redis: aioredis.Redis | None = None
    #: A small pool of its own for single statements that must commit even if the handler's transaction
    #: rolls back. Never the handlers' pool: a handler waiting on the pool it holds a connection of could
    #: deadlock once every connection is held.
    autonomous: asyncpg.Pool | None = None


def load_stage(name: str) -> Stage:
    """Stages are found by name, so the plumbing never imports a stage statically."""
    if name not in STAGE_NAMES:
        raise ValueError(f"unknown stage {name!r}; choose from {', '.join(STAGE_NAMES)}")
    module = importlib.import_module(f"stages.{name}.stage")
    stage: Stage = module.stage
    return stage


def build_storage(settings: Settings) -> Storage:
    """S3 when a bucket is configured, else a folder under the data dir.

    Private/loopback URLs are fetched only when allowed by the setting or when the local provider is in
    use (no Replicate token): its outputs are served from 127.0.0.1.
    """
    allow_private = settings.storage_allow_private_urls or settings.replicate_api_token is None
    if settings.s3_bucket:
        from reelstream.s3 import S3Storage  # here: aiobotocore costs every process ~0.25 s to import

        return S3Storage(
            settings.s3_bucket,
            settings.s3_endpoint_url,
            max_bytes=settings.max_download_bytes,
            allow_private=allow_private,
        )
    return LocalStorage(
        settings.data_dir / "storage", max_bytes=settings.max_download_bytes, allow_private=allow_private
    )


def webhook_secret(settings: Settings, provider: VideoProvider) -> str | SecretSource:
    """What provider webhooks are verified with.

    The local provider's secret lives in the data dir. For Replicate: the configured secret, else the
    account's, fetched from Replicate's API when the first webhook needs it (so the gateway starts even
    while Replicate is unreachable).
    """
    if settings.replicate_api_token is None:
        return local_secret(settings)
    if settings.replicate_webhook_secret is not None:
        return settings.replicate_webhook_secret.get_secret_value()
    from reelstream.providers.replicate import ReplicateVideoProvider

    if isinstance(provider, ReplicateVideoProvider):
        return SecretSource(provider.webhook_secret)
    raise RuntimeError("no webhook secret: set REELSTREAM_REPLICATE_WEBHOOK_SECRET")


def build_provider(settings: Settings) -> VideoProvider:
    """Replicate when a token is set, else the local FFmpeg renderer."""
    if settings.replicate_api_token is not None:
        from reelstream.providers.replicate import ReplicateVideoProvider  # here: only when it is used

        return ReplicateVideoProvider(
            api_token=settings.replicate_api_token.get_secret_value(),
            base_url=settings.replicate_base_url,
            model=settings.replicate_model,
            timeout=settings.replicate_timeout_seconds,
        )
    return LocalVideoProvider(
        output_dir=settings.data_dir / "provider",
        public_url=settings.gateway_url,
        secret=local_secret(settings),
        concurrency=settings.render_concurrency,
    )


#: Seconds a stopping stage gives its in-flight events before abandoning them uncommitted (the next start
#: takes them up again). ``serve`` must exit within 10 s of SIGTERM: the gateway drains alongside (5 s
#: at most), then the provider, the broker and Postgres stop in well under a second.
SHUTDOWN_GRACE_SECONDS = 4.0


def runtime_config(settings: Settings, bootstrap: str) -> RuntimeConfig:
    return RuntimeConfig(
        bootstrap=bootstrap,
        concurrency=settings.stage_concurrency,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        shutdown_grace=SHUTDOWN_GRACE_SECONDS,
        transient_budget=settings.transient_retry_seconds,
    )


async def open_pool(settings: Settings) -> asyncpg.Pool:
    assert settings.database_url, "database_url must be resolved before opening the pool"
    await db.migrate(settings.database_url)
    return await db.create_pool(settings.database_url)


async def run_stages(
    names: list[str] | tuple[str, ...],
    settings: Settings,
    *,
    pool: asyncpg.Pool,
    producer: kafka.Producer,
    deps: Deps,
    stop: asyncio.Event,
    on_ready: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run the named stages side by side until ``stop`` is set; each is its own consumer group."""
    assert settings.kafka_bootstrap
    config = runtime_config(settings, settings.kafka_bootstrap)
    runners = [StageRunner(load_stage(n), pool, producer, config, deps) for n in names]
    tasks = [asyncio.create_task(r.run(), name=f"stage-{r.stage.name}") for r in runners]

    async def _stopper() -> None:
        await stop.wait()
        for r in runners:
            r.stop()

    stopper = asyncio.create_task(_stopper())
    if on_ready is not None:
        await _await_ready(runners, tasks)
        await on_ready()
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                stop.set()
                raise task.exception()  # type: ignore[misc]
        await asyncio.gather(*tasks)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        stopper.cancel()


async def _await_ready(runners: list[StageRunner], tasks: list[asyncio.Task[None]]) -> None:
    """Wait until every runner has its partitions, or fail fast if one of them died starting."""

    async def _all_ready() -> None:
        await asyncio.gather(*(r.ready.wait() for r in runners))

    all_ready: asyncio.Task[None] = asyncio.create_task(_all_ready())
    try:
        await asyncio.wait([all_ready, *tasks], timeout=120, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        all_ready.cancel()


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def serve_metrics(
    port: int, stack: AsyncExitStack, host: str = "127.0.0.1", *, or_any_port: bool = False
) -> str:
    """A stage process's own ``/metrics`` (and ``/healthz``) on ``host:port``; returns its URL.

    Port 0 is a free port the system picks (how ``serve`` starts its stages: a port chosen beforehand
    could be taken by then). ``or_any_port``: when ``port`` is taken (the default port, with several
    stages on one machine), listen on a free port instead and log it, rather than fail. Decided by
    binding, not by a check beforehand: stages started together would all see the port free.
    """

    async def metrics_view(_: web.Request) -> web.Response:
        body, content_type = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        if not or_any_port:
            raise
        await web.TCPSite(runner, host, 0).start()
        log.warning("metrics port %d is taken (%s); serving /metrics on port %d", port, exc.strerror,
                    runner.addresses[0][1])  # fmt: skip
    bound = runner.addresses[0][1]
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{bound}/metrics"
    log.info("metrics on %s", url)
    return url


def log_setup(level: str, log_format: "logs.Format | None" = None) -> None:
    """This process's logging: ``log_format`` from ``REELSTREAM_LOG_FORMAT`` (reelstream/logs.py)."""
    logs.setup(level, log_format)


async def run_gateway_task(
    settings: Settings,
    pool: asyncpg.Pool,
    producer: kafka.Producer,
    deps: Deps,
    ready: asyncio.Event,
    stop: asyncio.Event,
) -> None:
    """Serve the gateway until ``stop``; found by name like the stages, so plumbing never imports it.

    The gateway gets a Postgres pool of its own (sized and bounded by the ``gateway_db_*`` settings)
    rather than ``pool``, the stages': a burst of stage work must never starve the API, webhooks and
    cancel. ``pool`` is kept in the signature for the callers; the gateway does not use it.
    """
    gateway_app = importlib.import_module("gateway.app")
    gateway_database = importlib.import_module("gateway.database")
    assert settings.kafka_bootstrap
    own_pool: asyncpg.Pool = await gateway_database.open_pool(settings)
    try:
        gateway_deps = gateway_app.GatewayDeps(
            settings=settings,
            pool=own_pool,
            producer=producer,
            kafka_bootstrap=settings.kafka_bootstrap,
            storage=deps.storage,
            provider=deps.provider,
            webhook_secret=webhook_secret(settings, deps.provider),
            redis=deps.redis,
        )
        await gateway_app.run_gateway(
            gateway_deps, host=settings.http_host, port=settings.http_port, ready=ready, stop=stop
        )
    finally:
        await own_pool.close()


async def prepare(settings: Settings) -> None:
    """Create the topics and apply the migrations once, before the processes that use them start.

    Every process does both again at start-up (``infrastructure``); done first, the seven children of
    ``serve`` find the work done instead of queueing on the migration lock.
    """
    assert settings.kafka_bootstrap and settings.database_url
    await kafka.ensure_topics(settings.kafka_bootstrap, kafka.all_topics())
    await db.migrate(settings.database_url)


def local_gateway_url(settings: Settings) -> str:
    """Where the gateway answers on this machine (``gateway_url`` may be a public address in front of it)."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]"}.get(
        settings.http_host, settings.http_host
    )
    return f"http://{host}:{settings.http_port}"


def processes(settings: Settings) -> tuple[list[ChildSpec], dict[str, str]]:
    """The gateway and every stage as ``reelstream`` commands for ``serve``'s supervisor, and each
    process's ``/metrics`` URL (for ``stack.json``).

    The commands are the ones docker-compose runs. Each child gets the resolved addresses in its
    environment rather than reading ``stack.json``, so a file left by another run can never send it
    elsewhere; ``REELSTREAM_PUBLIC_URL`` too, where the local renderer posts its webhooks. The interpreter
    is ours, run with ``-P`` so the working directory cannot shadow a package.
    """
    assert settings.kafka_bootstrap and settings.database_url
    env = {
        **os.environ,
        "REELSTREAM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "REELSTREAM_DATABASE_URL": settings.database_url,
        "REELSTREAM_DATA_DIR": str(settings.data_dir),
        "REELSTREAM_HTTP_HOST": settings.http_host,
        "REELSTREAM_HTTP_PORT": str(settings.http_port),
        "REELSTREAM_PUBLIC_URL": settings.gateway_url,
        "REELSTREAM_LOG_LEVEL": settings.log_level,
        "REELSTREAM_LOG_FORMAT": settings.log_format or "text",
        "PYTHONUNBUFFERED": "1",
    }
    command = [sys.executable, "-P", "-m", "reelstream.cli"]
    children = [ChildSpec("gateway", [*command, "gateway"], env)]
    metrics = {"gateway": f"{local_gateway_url(settings)}/metrics"}
    for name in STAGE_NAMES:
        # Port 0: each stage binds a free port itself and names its URL in its ready line
        # (stage_metrics_urls), which serve then writes into stack.json.
        argv = [*command, "stage", name, "--metrics-port", "0"]
        children.append(ChildSpec(name, argv, env, nice=settings.stage_nice))
    return children, metrics


def stage_metrics_urls(ready_lines: Mapping[str, str]) -> dict[str, str]:
    """Each stage's metrics URL from its ``ready: stage NAME, metrics URL`` line."""
    found: dict[str, str] = {}
    for name, line in ready_lines.items():
        _, marker, url = line.partition(" metrics ")
        if marker and url.strip():
            found[name] = url.strip()
    return found


async def run_everything(
    settings: Settings,
    *,
    pool: asyncpg.Pool,
    producer: kafka.Producer,
    deps: Deps,
    stop: asyncio.Event,
    on_ready: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """The gateway and every stage in this process until ``stop`` (the end-to-end tests' stack).

    ``on_ready`` runs once the gateway answers and every stage has its partitions; a gateway that dies
    starting (say, its port is taken) fails this call instead of leaving it waiting.
    """
    gateway_ready = asyncio.Event()
    gateway = asyncio.create_task(run_gateway_task(settings, pool, producer, deps, gateway_ready, stop))

    async def all_ready() -> None:
        ready = asyncio.create_task(gateway_ready.wait())
        await asyncio.wait([ready, gateway], return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if gateway.done():
            gateway.result()  # raises what stopped it, if anything did
            stop.set()  # it returned: we were stopped while starting
            return
        if on_ready is not None:
            await on_ready()

    try:
        await run_stages(
            STAGE_NAMES, settings, pool=pool, producer=producer, deps=deps, stop=stop, on_ready=all_ready
        )
    finally:
        stop.set()
        await gateway


@asynccontextmanager
async def infrastructure(
    settings: Settings,
) -> AsyncIterator[tuple[asyncpg.Pool, kafka.Producer, Deps]]:
    """Topics, migrated pool, producer and handler dependencies: what every long-running command needs."""
    assert settings.kafka_bootstrap
    await kafka.ensure_topics(settings.kafka_bootstrap, kafka.all_topics())
    async with AsyncExitStack() as stack:
        pool = await open_pool(settings)
        stack.push_async_callback(pool.close)
        producer = kafka.Producer(settings.kafka_bootstrap)
        await producer.start()
        stack.push_async_callback(producer.stop)
        assert settings.database_url
        autonomous = await db.create_pool(settings.database_url, min_size=1, max_size=2)
        stack.push_async_callback(autonomous.close)
        deps = Deps(
            settings,
            build_storage(settings),
            build_provider(settings),
            mapping.connect(settings.redis_url),
            autonomous,
        )
        stack.push_async_callback(deps.provider.close)
        if deps.redis is not None:
            stack.push_async_callback(deps.redis.aclose)
        if settings.s3_bucket:
            from reelstream.s3 import S3Storage

            assert isinstance(deps.storage, S3Storage)
            stack.push_async_callback(deps.storage.close)
        yield pool, producer, deps
