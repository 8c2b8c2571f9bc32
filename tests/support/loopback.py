"""Serving a test's aiohttp app on 127.0.0.1, on a port the OS picks (no races for a "free" port)."""

from typing import Any

from aiohttp import web


async def serve(app: web.Application, **runner_options: Any) -> tuple[web.AppRunner, int]:
    """Start ``app``; returns its runner (the caller's to ``cleanup()``) and the port it listens on."""
    runner = web.AppRunner(app, **{"access_log": None, **runner_options})
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port: int = runner.addresses[0][1]
    return runner, port
