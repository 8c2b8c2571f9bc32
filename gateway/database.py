"""The gateway's Postgres: its own pool, bounded waits, and one way of saying "the database is down".

The gateway has a pool of its own (never the stages'), so a burst of stage work cannot starve the API,
webhooks and cancel. Every request takes its connection through :func:`connection`, which bounds the
wait for it; the pool bounds every statement, on the client and on the server. Whatever goes wrong
with the database inside that block (no connection in time, refused, reset, closed, a statement
timeout) leaves it as :class:`DatabaseUnavailable`, which ``gateway.errors`` answers with 503
``unavailable`` and ``Retry-After``: clients get a fast, retryable answer, never a hang or a 500.
"""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from gateway.deps import GatewayDeps
from reelstream import db
from reelstream.settings import Settings

log = logging.getLogger(__name__)

#: What a database outage looks like from asyncpg: network errors and timeouts (inside a
#: :func:`connection` block nothing else can raise those), lost or refused connections, a server
#: that is shutting down, starting or full, and statements canceled by ``statement_timeout``.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,  # query canceled (statement_timeout), admin shutdown, starting up
    asyncpg.TooManyConnectionsError,
)
#: The same, minus what could also come from elsewhere (files, sockets, timeouts of other calls): what
#: the error middleware may classify on its own, for database work done outside :func:`connection`.
UNAMBIGUOUS_OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.TooManyConnectionsError,
)


class DatabaseUnavailable(Exception):
    """Postgres could not serve this request in time; the message names the cause, never a secret."""


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means "the database is unavailable" (answered 503, not 500)."""
    return isinstance(exc, (DatabaseUnavailable, *UNAMBIGUOUS_OUTAGE_ERRORS))


def describe(exc: BaseException) -> str:
    """The error's type only: asyncpg messages can quote statements or the server's address."""
    return type(exc).__name__


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset of a released connection: nothing beyond asyncpg's own rollback.

    asyncpg's default reset (``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``) costs a
    round trip on every release, for session state the gateway never creates: it takes no advisory
    locks, opens no cursor outside a transaction, listens to nothing and sets nothing. A transaction
    left open is still rolled back by the pool before this runs.
    """


async def open_pool(settings: Settings) -> asyncpg.Pool:
    """The gateway's pool: sized and bounded by the ``gateway_db_*`` settings.

    ``command_timeout`` stops a statement on a silent network; the server-side ``statement_timeout``
    stops it on a stuck server, so it never holds locks for a client that has gone.
    """
    assert settings.database_url, "database_url must be resolved before opening the pool"
    statement = settings.gateway_db_statement_timeout_seconds
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=min(settings.gateway_db_pool_min_size, settings.gateway_db_pool_max_size),
        max_size=settings.gateway_db_pool_max_size,
        init=db._init_connection,
        command_timeout=statement,
        timeout=statement,  # connecting; acquire() bounds it further for a waiting request
        server_settings={"statement_timeout": str(int(statement * 1000))},
        reset=_keep_session,
    )
    assert pool is not None
    return pool


@asynccontextmanager
async def connection(deps: GatewayDeps) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection, waited for at most ``gateway_db_acquire_timeout_seconds``.

    A database failure inside the block becomes :class:`DatabaseUnavailable`; other errors (unique
    violations, our own ApiErrors) pass through unchanged.
    """
    try:
        async with deps.pool.acquire(timeout=deps.settings.gateway_db_acquire_timeout_seconds) as conn:
            try:
                yield conn
            except (TimeoutError, OSError):
                # A statement that timed out on the client (a silent network) leaves the connection in
                # an unknown state: drop it now rather than wait for a graceful reset that would hang too.
                conn.terminate()
                raise
    except OUTAGE_ERRORS as exc:
        raise DatabaseUnavailable(describe(exc)) from exc
