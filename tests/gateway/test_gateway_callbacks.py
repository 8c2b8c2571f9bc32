"""Outbound callbacks, end to end: a real receiver on a local port verifies every delivery with the
standardwebhooks library; deliveries are driven from Postgres by the real runtime's sweep, stopped and
started again in between, as a restart would."""

import asyncio
import base64
import json
import secrets
import types
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from aiohttp import web
from gateway_harness import Gateway, GatewayFactory
from standardwebhooks.webhooks import Webhook

from reelstream import callbacks, embedded, kafka, status
from reelstream.runtime import RuntimeConfig, Stage, StageRunner
from reelstream.settings import Settings
from schemas.api import ErrorInfo
from stages.intake.stage import stage as intake_stage

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
FAST = {
    "storage_allow_private_urls": True,
    "callback_secret": SECRET,
    "callback_retry_base_seconds": 0.3,
    "callback_poll_seconds": 0.2,
    "rate_limit_per_minute": 1000,
}


@dataclass
class Receiver:
    """Answers 500 to the first ``failures`` deliveries, then 204; keeps every verified delivery."""

    failures: int
    url: str = ""
    deliveries: list[tuple[dict[str, str], bytes, Any]] = field(default_factory=list)
    forged: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            Webhook(SECRET).verify(body, headers)
            payload = json.loads(body)
        except Exception:
            self.forged += 1
            return web.Response(status=401)
        self.deliveries.append((headers, body, payload))
        return web.Response(status=500 if len(self.deliveries) <= self.failures else 204)


@pytest_asyncio.fixture(loop_scope="session")
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver(failures=2)
    app = web.Application()
    app.router.add_post("/hook", found.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = embedded.free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    found.url = f"http://127.0.0.1:{port}/hook"
    yield found
    await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="session")
async def sweep_topic(gw_bootstrap: str) -> str:
    """A topic of the sweep host's own: its consumer group must not join any real stage's."""
    topic = f"callbacks-host-{uuid.uuid4().hex[:8]}"
    await kafka.ensure_topics(gw_bootstrap, [topic])
    return topic


def _host(
    pool: asyncpg.Pool, producer: kafka.Producer, bootstrap: str, topic: str, settings: Settings
) -> StageRunner:
    """The runtime running the callbacks sweep, as the intake stage runs it (own group, own topic)."""

    async def nothing(_: Any) -> None:
        return None

    stage = Stage(name=f"test-{topic}", topics=[topic], handler=nothing, sweeps=[callbacks.sweep])
    config = RuntimeConfig(bootstrap=bootstrap, session_timeout_ms=2000, heartbeat_interval_ms=500)
    return StageRunner(stage, pool, producer, config, types.SimpleNamespace(settings=settings))


async def _until(predicate: Any, within: float = 30.0) -> None:
    """Poll ``predicate`` (a database row or the receiver's list: nothing to wait on as an event)."""
    async with asyncio.timeout(within):
        while not await predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


def test_the_intake_stage_runs_the_callbacks_sweep() -> None:
    assert callbacks.sweep in intake_stage.sweeps


async def test_a_callback_is_signed_retried_under_one_id_and_delivered_once_across_a_restart(
    make_gateway: GatewayFactory,
    fresh_pool: asyncpg.Pool,
    gw_producer: kafka.Producer,
    gw_bootstrap: str,
    sweep_topic: str,
    receiver: Receiver,
) -> None:
    gw = await make_gateway(pool=fresh_pool, **FAST)
    gid = await gw.create(options={"callback_url": receiver.url})
    assert (await gw.client.post(f"/api/v1/generations/{gid}/cancel")).status == 202
    detail = await (await gw.client.get(f"/api/v1/generations/{gid}")).json()
    assert detail["callbacks"] == [
        {"event": "generation.canceled", "attempts": 0, "last_status": None, "delivered_at": None}
    ]

    settings = gw.deps.settings
    first = _host(fresh_pool, gw_producer, gw_bootstrap, sweep_topic, settings)
    task = asyncio.create_task(first.run())

    async def tried_once() -> bool:
        return len(receiver.deliveries) >= 1

    await _until(tried_once)
    first.stop()  # the restart: whatever was in memory is gone
    await task
    row = await fresh_pool.fetchrow("SELECT attempts, last_status, delivered_at FROM callbacks")
    assert row["last_status"] == 500 and row["delivered_at"] is None

    second = _host(fresh_pool, gw_producer, gw_bootstrap, sweep_topic, settings)
    task = asyncio.create_task(second.run())

    async def delivered() -> bool:
        return await fresh_pool.fetchval("SELECT delivered_at IS NOT NULL FROM callbacks") is True

    try:
        await _until(delivered)
        await asyncio.sleep(1.0)  # several more sweep rounds: nothing is sent again
    finally:
        second.stop()
        await task

    assert receiver.forged == 0
    assert len(receiver.deliveries) == 3  # 500, 500, then 204
    ids = {headers["webhook-id"] for headers, _, _ in receiver.deliveries}
    assert len(ids) == 1
    bodies = {body for _, body, _ in receiver.deliveries}
    assert len(bodies) == 1  # every retry is the same message
    payload = receiver.deliveries[-1][2]
    assert payload["type"] == "generation.canceled"
    assert payload["generation"]["generation_id"] == gid and payload["generation"]["status"] == "canceled"
    detail = await (await gw.client.get(f"/api/v1/generations/{gid}")).json()
    [shown] = detail["callbacks"]
    assert shown["attempts"] == 3 and shown["last_status"] == 204 and shown["delivered_at"] is not None


async def test_a_failed_ending_records_its_callback_and_one_without_a_url_none(gw: Gateway) -> None:
    wanted = await gw.create(options={"callback_url": "https://hooks.example.com/reel"})
    unwanted = await gw.create()
    async with gw.pool.acquire() as conn, conn.transaction():
        for gid in (wanted, unwanted):
            await status.end_failed(conn, gid, ErrorInfo(code="internal", message="test", stage="test"))
    rows = await gw.pool.fetch(
        "SELECT generation_id, event, url FROM callbacks WHERE generation_id = ANY($1::text[])",
        [wanted, unwanted],
    )
    assert [(r["generation_id"], r["event"], r["url"]) for r in rows] == [
        (wanted, "generation.failed", "https://hooks.example.com/reel")
    ]


@pytest.mark.parametrize(
    ("url", "allow_private", "accepted"),
    [
        ("https://hooks.example.com/reel", False, True),
        ("http://hooks.example.com/reel", False, False),  # plain http to the internet: never
        ("http://127.0.0.1:9/hook", False, False),
        ("https://10.0.0.7/hook", False, False),
        ("https://[::ffff:100.64.0.1]/hook", False, False),
        ("http://127.0.0.1:9/hook", True, True),  # http to a private address, when allowed
        ("http://8.8.8.8/hook", True, False),  # ... but not to a public one
        ("https://user:pw@hooks.example.com/", False, False),
        ("ftp://hooks.example.com/", False, False),
    ],
)
async def test_the_callback_url_is_checked_at_post(
    make_gateway: GatewayFactory, url: str, allow_private: bool, accepted: bool
) -> None:
    gw = await make_gateway(storage_allow_private_urls=allow_private, rate_limit_per_minute=1000)
    resp = await gw.client.post("/api/v1/generations", json={"prompt": "x", "options": {"callback_url": url}})
    if accepted:
        assert resp.status == 202, await resp.text()
    else:
        assert resp.status == 422
        assert [d["field"] for d in (await resp.json())["error"]["details"]] == ["options.callback_url"]


async def test_the_ssrf_guard_stands_at_send_time_too(gw: Gateway, receiver: Receiver) -> None:
    """A row whose URL became private (DNS changed, settings changed) is refused, not sent."""
    gid = await gw.create()
    await gw.pool.execute(
        "INSERT INTO callbacks (webhook_id, generation_id, event, url)"
        " VALUES ($1, $2, 'generation.failed', $3)",
        f"msg_{gid[4:]}_ssrf",
        gid,
        receiver.url,
    )
    before = len(receiver.deliveries)
    [row] = [r for r in await callbacks._claim(gw.pool, 100) if r["generation_id"] == gid]
    await callbacks.deliver(
        gw.pool, row, Settings(callback_secret=SECRET, data_dir=gw.deps.settings.data_dir)
    )
    found = await gw.pool.fetchrow(
        "SELECT attempts, last_error, delivered_at FROM callbacks WHERE generation_id = $1", gid
    )
    assert found["delivered_at"] is None and "non-public" in found["last_error"]
    assert len(receiver.deliveries) == before
