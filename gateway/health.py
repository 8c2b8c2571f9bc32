"""Liveness, readiness and Prometheus metrics.

``/healthz`` says the process is alive (restart me if not); ``/readyz`` says it can do its job right
now (route traffic to me), which needs both Postgres and the broker. Readiness probes can come in
floods from load balancers, so the answer is cached for a second and computed by one probe at a time.
"""

import asyncio
import contextlib
import time
from dataclasses import dataclass

from aiohttp import web
from aiokafka.admin import AIOKafkaAdminClient

from gateway.deps import GatewayDeps, get_deps
from reelstream import metrics

routes = web.RouteTableDef()

CHECK_TIMEOUT_SECONDS = 2.0
CACHE_SECONDS = 1.0


@dataclass
class Readiness:
    checked_at: float = float("-inf")
    checks: dict[str, str] | None = None
    lock: asyncio.Lock | None = None


READINESS = web.AppKey("reelstream_readiness", Readiness)


async def _check_database(deps: GatewayDeps) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            async with deps.pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok"


async def _check_kafka(deps: GatewayDeps) -> str:
    """A metadata request from a short-lived admin client: proves a broker answers right now."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=deps.kafka_bootstrap, request_timeout_ms=int(CHECK_TIMEOUT_SECONDS * 1000)
    )
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            await admin.start()
            await admin.list_topics()
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    return "ok"


async def readiness(app: web.Application, deps: GatewayDeps) -> dict[str, str]:
    state = app[READINESS]
    if state.lock is None:
        state.lock = asyncio.Lock()
    async with state.lock:
        if state.checks is None or time.monotonic() - state.checked_at > CACHE_SECONDS:
            database, kafka = await asyncio.gather(_check_database(deps), _check_kafka(deps))
            state.checks = {"database": database, "kafka": kafka}
            state.checked_at = time.monotonic()
        return dict(state.checks)


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    checks = await readiness(request.app, get_deps(request))
    ready = all(v == "ok" for v in checks.values())
    if ready:
        return web.json_response({"status": "ok", "checks": checks})
    failing = ", ".join(name for name, value in checks.items() if value != "ok")
    # Also the contract's error envelope, so clients that branch on ``error.code`` work here too.
    return web.json_response(
        {
            "status": "unavailable",
            "checks": checks,
            "error": {"code": "unavailable", "message": f"not ready: {failing} not answering"},
        },
        status=503,
    )


@routes.get("/metrics")
async def metrics_text(request: web.Request) -> web.Response:
    body, content_type = metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": content_type})
