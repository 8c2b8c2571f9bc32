"""The accept path's shortcuts keep every promise: shared inserts, a pool without per-release reset.

``POST /api/v1/generations`` without an ``Idempotency-Key`` writes its row through a
:class:`gateway.batching.GroupCommit` (one ``INSERT`` for the rows of concurrent creates); these tests
pin what that must never change: every 202 names a row that exists with the ``created_at`` it was
answered with, one bad row fails only its own request, and a request that goes away still leaves its row
(the reconciler drives it on). No timing is asserted anywhere.
"""

import asyncio
import functools
import io
import json
import logging
import random
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from gateway_harness import Gateway, GatewayFactory, Tap

from gateway import database
from gateway.app import GatewayDeps, run_gateway
from gateway.batching import BurstLog, GroupCommit
from gateway.body import parse_and_validate, parse_json, validate
from gateway.errors import ApiError
from gateway.generations import ROWS, NewRow, insert_rows, order_log
from gateway.memory import RecentGenerations
from reelstream import logs
from reelstream.embedded import free_port
from reelstream.kafka import Producer, murmur2, partition_for
from reelstream.settings import Settings
from reelstream.storage import LocalStorage
from schemas import topics
from schemas.api import GenerationRequest


def _new_id() -> str:
    return "gen_" + uuid.uuid4().hex


async def test_concurrent_creates_share_inserts_and_every_202_has_its_row(
    make_gateway: GatewayFactory, fresh_pool: asyncpg.Pool, tap: Any
) -> None:
    gw = await make_gateway(pool=fresh_pool, rate_limit_per_minute=100_000)
    requested: Tap = await tap(topics.GENERATION_REQUESTED)
    bodies = [{"prompt": f"Concurrent order {i}", "duration_seconds": 5 + i % 3} for i in range(40)]
    responses = await asyncio.gather(*(gw.client.post("/api/v1/generations", json=b) for b in bodies))
    assert [r.status for r in responses] == [202] * len(bodies)
    created = [await r.json() for r in responses]

    writer = gw.client.app[ROWS]
    assert writer.items == len(bodies)
    assert writer.batches < len(bodies)  # at least some rows shared an INSERT

    rows = {
        r["id"]: r
        for r in await fresh_pool.fetch(
            "SELECT id, status, prompt, duration_seconds, created_at FROM generations"
        )
    }
    for body, answer in zip(bodies, created, strict=True):
        row = rows[answer["generation_id"]]
        assert (row["status"], row["prompt"], row["duration_seconds"]) == (
            "queued",
            body["prompt"],
            body["duration_seconds"],
        )
        assert row["created_at"] == datetime.fromisoformat(answer["created_at"])
        record = await requested.wait_for(lambda r, gid=answer["generation_id"]: r.event.subject == gid)
        assert datetime.fromisoformat(record.event.data["requested_at"]) == row["created_at"]


async def test_brand_and_options_are_stored_as_json(
    make_gateway: GatewayFactory, fresh_pool: asyncpg.Pool
) -> None:
    gw = await make_gateway(pool=fresh_pool)
    body = {
        "prompt": "Lemonade",
        "brand": {"name": "Acme", "colors": ["#0A84FF"], "guidelines": {"do": ["smile"]}},
        "options": {"seed": 42, "negative_prompt": "rain"},
    }
    gid = await gw.create(**body)
    row = await fresh_pool.fetchrow("SELECT brand, options FROM generations WHERE id = $1", gid)
    request = GenerationRequest.model_validate(body)
    assert row is not None
    assert row["brand"] == request.brand.model_dump(mode="json") if request.brand else None
    assert row["options"] == request.options.model_dump(mode="json")
    detail = await (await gw.client.get(f"/api/v1/generations/{gid}")).json()
    assert detail["brand"]["name"] == "Acme" and detail["options"]["seed"] == 42


async def test_a_bad_row_fails_alone(gw: Gateway) -> None:
    """A row Postgres refuses (here: an id that exists) fails its own insert, not its batch's."""
    writer = GroupCommit(functools.partial(insert_rows, gw.deps), name="test", max_in_flight=1)
    request = GenerationRequest(prompt="Batch neighbour")
    taken = await gw.create("Already here")
    ids = [_new_id(), _new_id(), taken, _new_id(), _new_id()]
    outcomes = await asyncio.gather(
        *(writer.submit(NewRow(gid, request)) for gid in ids), return_exceptions=True
    )
    assert isinstance(outcomes[2], asyncpg.UniqueViolationError)
    good = [gid for gid, outcome in zip(ids, outcomes, strict=True) if isinstance(outcome, datetime)]
    assert len(good) == 4
    stored = await gw.pool.fetchval("SELECT count(*) FROM generations WHERE id = ANY($1)", good)
    assert stored == 4
    assert writer.items == 4


async def test_a_request_that_goes_away_still_leaves_its_row(gw: Gateway) -> None:
    writer = GroupCommit(functools.partial(insert_rows, gw.deps), name="test")
    gid = _new_id()
    task = asyncio.create_task(writer.submit(NewRow(gid, GenerationRequest(prompt="Gone client"))))
    await asyncio.sleep(0)  # queued and its insert started
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await writer.drain()
    assert await gw.pool.fetchval("SELECT status FROM generations WHERE id = $1", gid) == "queued"


async def test_pool_releases_roll_back_open_transactions(database_url: str, tmp_path: Path) -> None:
    """The gateway pool skips asyncpg's session reset, but a connection never comes back mid-transaction."""
    settings = Settings(database_url=database_url, data_dir=tmp_path, gateway_db_pool_max_size=1)
    pool = await database.open_pool(settings)
    try:
        marker = f"rollback-{uuid.uuid4().hex}"
        async with pool.acquire() as conn:
            await conn.execute("BEGIN")
            await conn.execute("CREATE TEMP TABLE IF NOT EXISTS t_rollback (v text)")
            await conn.execute("INSERT INTO t_rollback VALUES ($1)", marker)
        async with pool.acquire() as conn:  # the same (only) connection
            assert not conn.is_in_transaction()
            exists = await conn.fetchval("SELECT to_regclass('pg_temp.t_rollback') IS NOT NULL")
            assert exists is False  # the uncommitted CREATE was rolled back with everything else
    finally:
        await pool.close()


async def test_served_gateway_logs_each_order_but_no_access_line_per_request(
    gw_pool: asyncpg.Pool,
    gw_producer: Producer,
    gw_bootstrap: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Under load an access line per request cost a tenth of the CPU; each order's own line stays."""
    deps = GatewayDeps(
        settings=Settings(data_dir=tmp_path, api_keys=None),
        pool=gw_pool,
        producer=gw_producer,
        kafka_bootstrap=gw_bootstrap,
        storage=LocalStorage(tmp_path / "storage"),
        provider=None,
        webhook_secret="whsec_dGVzdC1zZWNyZXQtdGVzdC1zZWNyZXQ=",
    )
    port = free_port()
    ready, stop = asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(run_gateway(deps, host="127.0.0.1", port=port, ready=ready, stop=stop))
    try:
        await asyncio.wait_for(ready.wait(), 30)
        with caplog.at_level(logging.DEBUG):
            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{port}/api/v1/generations"
                async with session.post(url, json={"prompt": "Logged once"}) as resp:
                    assert resp.status == 202
                    gid = (await resp.json())["generation_id"]
    finally:
        stop.set()
        await asyncio.wait_for(server, 15)
    assert not [r for r in caplog.records if r.name == "aiohttp.access"]
    assert any(r.name == "gateway.generations" and gid in r.getMessage() for r in caplog.records)
    assert any(
        r.name == "gateway.errors" and "/api/v1/generations 202" in r.getMessage() for r in caplog.records
    )


def test_remembered_orders_read_back_as_accepted() -> None:
    """The memory keeps each order as JSON; what it reads back is the very request that was accepted."""
    memory = RecentGenerations(8)
    request = GenerationRequest.model_validate(
        {
            "prompt": "  Remembered  ",
            "duration_seconds": 20,
            "aspect_ratio": "1:1",
            "brand": {"name": "Acme", "colors": ["#0A84FF"], "guidelines": {"dont": ["rain"]}},
            "options": {"seed": 7, "include_cta": False},
        }
    )
    gid, at = _new_id(), datetime.now(UTC)
    memory.accepted(gid, request, at, owner=None)
    assert memory.has_request(gid) and memory.waiting_for_row(gid)
    detail = memory.detail(gid, caller=None, keys_required=False)
    assert detail is not None
    assert (detail.prompt, detail.duration_seconds, detail.aspect_ratio) == ("Remembered", 20, "1:1")
    assert (detail.brand, detail.options, detail.created_at) == (request.brand, request.options, at)


async def test_order_lines_come_at_once_when_quiet_and_one_per_burst_under_load(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every accepted order is named with its request id: at once when alone, then a line per burst."""
    lines = order_log()
    lines.max_items = 3
    with caplog.at_level(logging.INFO, logger="gateway.generations"):
        lines.add("gen_a", "r1")
        assert [r.getMessage() for r in caplog.records] == ["generation gen_a requested (request r1)"]
        lines.add("gen_b", "r2")
        lines.add("gen_c", "r3")
        assert len(caplog.records) == 1  # inside the burst: waiting for the tick
        await asyncio.sleep(0.1)
        assert caplog.records[-1].getMessage() == (
            "generations requested: gen_b (request r2), gen_c (request r3)"
        )
        await asyncio.sleep(0.1)  # the burst is over: quiet again
        for n in range(5):
            lines.add(f"gen_{n}", f"q{n}")
        assert [r.getMessage() for r in caplog.records[-2:]] == [
            "generation gen_0 requested (request q0)",  # at once
            # a full line
            "generations requested: gen_1 (request q1), gen_2 (request q2), gen_3 (request q3)",
        ]
        lines.flush()  # shutdown: nothing is left unwritten
        assert caplog.records[-1].getMessage() == "generation gen_4 requested (request q4)"
        await asyncio.sleep(0.1)
        lines.add("gen_d", "r4")  # quiet again: at once
        assert caplog.records[-1].getMessage() == "generation gen_d requested (request r4)"
        lines.flush()
    messages = " ".join(r.getMessage() for r in caplog.records)
    for gid in ("gen_a", "gen_b", "gen_c", "gen_0", "gen_1", "gen_2", "gen_3", "gen_4", "gen_d"):
        assert messages.count(gid + " ") == 1


async def test_a_burst_line_carries_no_single_requests_log_context() -> None:
    """A line naming many orders must not look like one order's line (``generation_id`` in JSON logs)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("test.burst")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    lines = BurstLog(logger, one="%s alone", many="many: ", item="%s", delay=0.02)

    async def request(gid: str) -> None:
        logs.bind(generation_id=gid)
        lines.add(gid)

    try:
        for gid in ("gen_first", "gen_second", "gen_third"):
            await asyncio.create_task(request(gid))
        await asyncio.sleep(0.1)
    finally:
        logger.removeHandler(handler)
    first, burst = (json.loads(line) for line in out.getvalue().splitlines())
    assert (first["message"], first["generation_id"]) == ("gen_first alone", "gen_first")
    assert burst["message"] == "many: gen_second, gen_third" and "generation_id" not in burst


@pytest.mark.parametrize(
    "raw",
    [
        b'{"prompt": "x", "duration_seconds": 15.0, "brand": {"name": "Acme", "colors": ["#0A84FF"]}}',
        b'{"prompt": "x", "prompt": "y"}',  # the last one wins, as json.loads has it
        b'\xef\xbb\xbf{"prompt": "x"}',  # a byte order mark: only json.loads reads it
        b'{"prompt": "x\\u00e9"}',
        b'{"prompt": "x\\ud800"}',  # a lone surrogate
        b'{"prompt": "x", "options": {"max_cost_usd": NaN}}',
        b'{"prompt": "x", "options": {"max_cost_usd": 1e400}}',
        b'{"prompt": "x"} trailing',
        b"",
        b"[1, 2]",
        b'{"prompt": "x", "duration_seconds": "15"}',
        b'{"prompt": "x", "duration_seconds": true}',
        b'{"prompt": "x\\u0000"}',
        b"{" * 10_000,
    ],
)
def test_bodies_read_in_one_pass_are_read_as_json_loads_and_validate_read_them(raw: bytes) -> None:
    """The one-pass parse accepts exactly what parsing then validating accepts, with the same result,
    and every refusal keeps its status, code and details."""

    def outcome(read: Any) -> Any:
        try:
            return read().model_dump()
        except ApiError as exc:
            return (exc.status, exc.code, exc.message, exc.details)

    assert outcome(lambda: parse_and_validate(GenerationRequest, raw)) == outcome(
        lambda: validate(GenerationRequest, parse_json(raw))
    )


def test_the_producers_partitioner_puts_every_key_where_aiokafka_and_java_clients_do() -> None:
    """The faster murmur2 is Kafka's: every key of every length lands on the same partition as before."""
    from aiokafka.partitioner import DefaultPartitioner
    from aiokafka.partitioner import murmur2 as reference

    rng = random.Random(14)
    keys = [rng.randbytes(n) for n in range(64) for _ in range(50)]
    keys += [f"gen_{uuid.UUID(int=rng.getrandbits(128)).hex}".encode() for _ in range(500)]
    for key in keys:
        assert murmur2(key) == reference(key), key
        for count in (1, 4, 7):
            partitions = list(range(count))
            expected = DefaultPartitioner()(key, partitions, partitions)
            assert partition_for(key, partitions, partitions) == expected
    # Kafka's own test vectors (org.apache.kafka.common.utils.UtilsTest#testMurmur2)
    assert murmur2(b"21") == -973932308 & 0xFFFFFFFF
    assert murmur2(b"abc") == 479470107
    assert partition_for(None, [0, 1, 2], [2]) == 2
