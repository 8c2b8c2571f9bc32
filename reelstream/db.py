"""Postgres: the connection pool and the ordered, recorded SQL migrations.

Parameterised SQL only: every value reaches Postgres as a bind parameter, never in the query text.
"""

import json
import logging
from contextvars import ContextVar
from importlib import resources
from typing import Any

import asyncpg
from asyncpg.connection import LoggedQuery

from reelstream import metrics

log = logging.getLogger(__name__)

#: Serialises concurrent ``migrate`` calls across processes (any constant works; this one spells "reel").
_MIGRATION_LOCK = 0x7265656C


#: Who is talking to Postgres on this task: a stage's name while it handles an event (set by the
#: runtime), so ``reelstream_db_queries_total{caller}`` counts each stage's round trips per event.
caller: ContextVar[str] = ContextVar("db_caller", default="other")


def _count_round_trip(_: LoggedQuery) -> None:
    metrics.DB_QUERIES.labels(caller.get()).inc()


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(typ, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    conn.add_query_logger(_count_round_trip)


async def keep_session(conn: asyncpg.Connection) -> None:
    """A pool's reset of a released connection: nothing beyond asyncpg's own rollback.

    asyncpg's default reset (``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``) costs a
    round trip on every release (a third of a stage's round trips), for session state reelstream never
    creates on pooled connections: no advisory locks (migrations take theirs on a connection of their
    own), no cursors outside a transaction, no LISTEN, no SET. A transaction left open is still rolled
    back by the pool before this runs.
    """


async def create_pool(url: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """A pool whose json/jsonb columns read and write Python objects."""
    pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        command_timeout=60,
        reset=keep_session,
    )
    assert pool is not None
    return pool


def migrations() -> list[tuple[str, str]]:
    """(version, SQL) of every migration shipped in the package, in order."""
    files = resources.files("reelstream") / "migrations"
    found = sorted(
        (entry.name.removesuffix(".sql"), entry.read_text())
        for entry in files.iterdir()
        if entry.name.endswith(".sql")
    )
    return found


async def migrate(url_or_conn: str | asyncpg.Connection) -> list[str]:
    """Apply the migrations not yet recorded in ``schema_migrations``; returns the versions applied."""
    conn = await asyncpg.connect(url_or_conn) if isinstance(url_or_conn, str) else url_or_conn
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, sql in migrations():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
                log.info("applied migration %s", version)
                applied.append(version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    finally:
        if isinstance(url_or_conn, str):
            await conn.close()
    return applied


Record = dict[str, Any]
