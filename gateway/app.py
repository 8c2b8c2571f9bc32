"""Assembling the gateway: routes, middlewares, lifecycle; and serving it until told to stop.

Middleware order, outermost first: ``telemetry`` (the request's trace span and log context),
``observe`` (request id, metrics, so it sees the final status),
``errors`` (every failure becomes the contract's JSON), ``auth`` (so its 401/429 are rendered by
``errors`` too).
"""

import asyncio
import logging
from pathlib import Path

from aiohttp import web

from gateway import estimates, generations, health, openapi, session, videos, webhooks, ws
from gateway.auth import LIMITER, RateLimiter, RedactingAccessLogger, auth_middleware
from gateway.deps import DEPS, GatewayDeps
from gateway.errors import error_middleware, observe_middleware
from gateway.health import READINESS, Readiness
from gateway.memory import RECENT, RecentGenerations
from gateway.telemetry import telemetry_middleware

__all__ = ["GatewayDeps", "create_app", "run_gateway"]

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
#: aiohttp's own cap on buffered bodies; our handlers cap lower per route (64 KiB, webhooks 1 MiB).
CLIENT_MAX_SIZE = 1024 * 1024 + 1
SHUTDOWN_TIMEOUT_SECONDS = 5.0

routes = web.RouteTableDef()


#: The page's files by the name in its URL: an allow-list, so no request names a file of its choosing.
STATIC_FILES = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}


@routes.get("/")
async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(
        STATIC_DIR / "index.html",
        headers={"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-cache"},
    )


@routes.get("/static/{name}")
async def static_file(request: web.Request) -> web.FileResponse:
    """The web page's script and style sheet (no build step: the files as they are in the repository)."""
    name = request.match_info["name"]
    content_type = STATIC_FILES.get(name)
    if content_type is None:
        raise web.HTTPNotFound()
    return web.FileResponse(
        STATIC_DIR / name, headers={"Content-Type": content_type, "Cache-Control": "no-cache"}
    )


async def flush_logs(app: web.Application) -> None:
    """The log lines still waiting for their burst to end (:class:`gateway.batching.BurstLog`)."""
    app[generations.ORDER_LOG].flush()
    app[webhooks.OUTCOME_LOG].flush()


def create_app(deps: GatewayDeps) -> web.Application:
    """The aiohttp application; the status hub starts and stops with it (``cleanup_ctx``)."""
    app = web.Application(
        middlewares=[telemetry_middleware, observe_middleware, error_middleware, auth_middleware],
        client_max_size=CLIENT_MAX_SIZE,
    )
    app[DEPS] = deps
    app[LIMITER] = RateLimiter(deps.settings.rate_limit_per_minute, deps.redis)
    app[READINESS] = Readiness()
    app[RECENT] = RecentGenerations(deps.settings.gateway_memory_size)
    app[generations.ROWS] = generations.row_writer(deps)
    app[generations.ORDER_LOG] = generations.order_log()
    app[webhooks.OUTCOME_LOG] = webhooks.outcome_log()
    app[webhooks.CANCELS] = {}
    app[webhooks.DELIVERIES] = webhooks.delivery_writer(deps)
    app[ws.SOCKETS] = {}
    for table in (
        generations.routes,
        estimates.routes,
        videos.routes,
        webhooks.routes,
        ws.routes,
        health.routes,
        openapi.routes,
        session.routes,
        routes,
    ):
        app.add_routes(table)
    app.cleanup_ctx.append(ws.hub_context)
    app.on_shutdown.append(ws.close_sockets)
    app.on_cleanup.append(webhooks.stop_cancels)
    app.on_cleanup.append(flush_logs)
    return app


async def run_gateway(
    deps: GatewayDeps,
    *,
    host: str,
    port: int,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event,
) -> None:
    """Serve on ``host:port`` until ``stop`` is set; ``ready`` is set once requests are accepted.

    Signals are the caller's business (``handle_signals=False``): the embedded stack stops many
    components on one SIGTERM.
    """
    # No aiohttp access log: formatting and writing a line per request was a tenth of the accept path's
    # CPU under load; ``observe_middleware`` logs every request at DEBUG (method, path, status, time).
    # Whoever turns it on gets the redacting format (no ``?api_key=`` value, no key header).
    runner = web.AppRunner(
        create_app(deps),
        handle_signals=False,
        shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS,
        access_log=None,
        access_log_class=RedactingAccessLogger,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        log.info("gateway listening on %s", ", ".join(f"http://{a[0]}:{a[1]}" for a in runner.addresses))
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        await runner.cleanup()
