"""Outbound callbacks: the end of a generation POSTed, signed, to ``options.callback_url``.

Postgres drives them, never memory: the ``callbacks`` row is written in the transaction that ends the
generation (:func:`reelstream.status.record_callback`), and a sweep (run by the intake stage) delivers
what is due: claim (lease the row, count the attempt, commit), call with no transaction or connection
held, record the answer. Any answer but 2xx is retried with exponential backoff for
``callback_retry_hours`` under the same ``webhook-id``, so a receiver can deduplicate; a restart only
delays a callback (a lease held by a process that died expires). The body is fixed at the first try.

Signed with Standard Webhooks (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``) using
``REELSTREAM_CALLBACK_SECRET``, or a secret generated once into the data dir (``reelstream
callback-secret`` prints it). The URL is checked at order time (:func:`url_problem`) and again by the
SSRF guard at every send, redirects not followed: DNS may have changed since.
"""

import asyncio
import ipaddress
import json
import logging
import socket
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg

from reelstream import storage
from reelstream.detail import load_detail
from reelstream.runtime import Sweep, Sweeper
from reelstream.settings import Settings
from reelstream.webhooks import secret_file, sign

log = logging.getLogger(__name__)

#: Rows claimed per round; a round delivers them concurrently.
BATCH = 16
#: How long a claimed row is left alone by other replicas (longer than a send can take).
LEASE_SECONDS = 60.0
SEND_TIMEOUT = aiohttp.ClientTimeout(total=15, sock_connect=5)
#: The longest wait between two tries.
MAX_BACKOFF_SECONDS = 3600.0


def callback_secret(settings: Settings) -> str:
    """``REELSTREAM_CALLBACK_SECRET``, else the one generated once into the data dir (mode 0600)."""
    if settings.callback_secret is not None:
        return settings.callback_secret.get_secret_value()
    return secret_file(settings.data_dir / "callback_secret")


def backoff(attempts: int, settings: Settings) -> float:
    """Seconds before try ``attempts + 1``: doubling from ``callback_retry_base_seconds``, at most an hour."""
    return float(min(MAX_BACKOFF_SECONDS, settings.callback_retry_base_seconds * 2 ** max(0, attempts - 1)))


async def url_problem(url: str, *, allow_private: bool) -> str | None:
    """Why ``url`` cannot be a callback URL (None: it can), decided when the order comes in.

    ``https`` to anywhere public; ``http`` only to a private address and only when private URLs are
    allowed (a receiver on the same network, or a test). A private address without that setting is
    refused here when it is written as one; a name is resolved, and checked again at every send.
    """
    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        return "must be an http(s) URL"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    try:
        literal: str | None = str(ipaddress.ip_address(host))
    except ValueError:
        literal = None
    if parts.scheme == "https" and (allow_private or literal is None or storage.public_address(literal)):
        return None
    if parts.scheme == "http" and not allow_private:
        return "must be https"
    addresses = [literal] if literal is not None else await _resolve(host)
    if not addresses:
        return f"{host!r} does not resolve"
    if parts.scheme == "https":
        return "must be a public address (private ones are not allowed here)"
    if any(storage.public_address(a) for a in addresses):
        return "must be https (http is allowed only to a private address)"
    return None


async def _resolve(host: str) -> list[str]:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return [str(info[4][0]) for info in infos]


# -- delivery --------------------------------------------------------------------------------------------


async def _claim(pool: asyncpg.Pool, limit: int) -> list[asyncpg.Record]:
    """Lease up to ``limit`` due callbacks and count their attempt; committed before anything is sent."""
    rows: list[asyncpg.Record] = await pool.fetch(
        "UPDATE callbacks c SET leased_until = now() + make_interval(secs => $2), attempts = c.attempts + 1"
        " FROM (SELECT webhook_id FROM callbacks"
        "       WHERE delivered_at IS NULL AND gave_up_at IS NULL AND next_at <= now()"
        "         AND (leased_until IS NULL OR leased_until < now())"
        "       ORDER BY next_at LIMIT $1 FOR UPDATE SKIP LOCKED) due"
        " WHERE c.webhook_id = due.webhook_id"
        " RETURNING c.webhook_id, c.generation_id, c.event, c.url, c.payload, c.attempts, c.created_at",
        limit,
        LEASE_SECONDS,
    )
    return rows


async def _payload(pool: asyncpg.Pool, row: asyncpg.Record, settings: Settings) -> bytes | None:
    """The body of this callback: fixed at the first try (every retry sends the same message)."""
    if row["payload"] is not None:
        return json.dumps(row["payload"], separators=(",", ":")).encode()
    async with pool.acquire() as conn:
        detail = await load_detail(conn, row["generation_id"], settings=settings)
        if detail is None:
            return None  # the generation was deleted: nothing to tell
        body = {"type": row["event"], "generation": detail.model_dump(mode="json")}
        stored = await conn.fetchval(
            "UPDATE callbacks SET payload = COALESCE(payload, $2::jsonb) WHERE webhook_id = $1"
            " RETURNING payload",
            row["webhook_id"],
            body,  # the pool's jsonb codec encodes it
        )
    return json.dumps(stored, separators=(",", ":")).encode()


async def _send(
    url: str, body: bytes, headers: dict[str, str], *, allow_private: bool
) -> tuple[int | None, str]:
    """POST once through the SSRF guard, redirects not followed: (status or None, error text)."""
    try:
        await storage.check_url(url, allow_private=allow_private)
        connector = aiohttp.TCPConnector(resolver=None if allow_private else storage.PublicOnlyResolver())
        async with (
            aiohttp.ClientSession(timeout=SEND_TIMEOUT, connector=connector) as session,
            session.post(url, data=body, headers=headers, allow_redirects=False) as resp,
        ):
            await resp.read()
            return resp.status, "" if 200 <= resp.status < 300 else f"answered {resp.status}"
    except storage.StorageError as exc:
        return None, str(exc)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return None, f"{type(exc).__name__}: {exc}"[:300]


async def _record(
    pool: asyncpg.Pool, row: asyncpg.Record, status: int | None, error: str, settings: Settings
) -> None:
    if status is not None and 200 <= status < 300:
        await pool.execute(
            "UPDATE callbacks SET delivered_at = now(), last_status = $2, last_error = NULL,"
            " leased_until = NULL WHERE webhook_id = $1",
            row["webhook_id"],
            status,
        )
        log.info("callback %s of %s delivered (%d)", row["webhook_id"], row["generation_id"], status)
        return
    wait = backoff(row["attempts"], settings)
    deadline = timedelta(hours=settings.callback_retry_hours)
    gave_up = await pool.fetchval(
        "UPDATE callbacks SET last_status = $2, last_error = $3, leased_until = NULL,"
        " next_at = now() + make_interval(secs => $4),"
        " gave_up_at = CASE WHEN now() + make_interval(secs => $4) > created_at + $5::interval"
        "                   THEN now() END"
        " WHERE webhook_id = $1 RETURNING gave_up_at IS NOT NULL",
        row["webhook_id"],
        status,
        error,
        wait,
        deadline,
    )
    log.warning(
        "callback %s of %s, try %d: %s; %s",
        row["webhook_id"],
        row["generation_id"],
        row["attempts"],
        error,
        "given up" if gave_up else f"next try in {wait:g}s",
    )


async def deliver(pool: asyncpg.Pool, row: asyncpg.Record, settings: Settings) -> None:
    """One try of one claimed callback: body, signature, POST, record. No connection held while sending."""
    body = await _payload(pool, row, settings)
    if body is None:
        await pool.execute("UPDATE callbacks SET gave_up_at = now() WHERE webhook_id = $1", row["webhook_id"])
        return
    headers = sign(callback_secret(settings), body, webhook_id=row["webhook_id"])
    headers["user-agent"] = "reelstream-callbacks"
    status, error = await _send(row["url"], body, headers, allow_private=settings.storage_allow_private_urls)
    await _record(pool, row, status, error, settings)


async def deliver_due(sweeper: Sweeper) -> None:
    """Deliver every callback that is due, a batch at a time, until none is left."""
    settings: Settings = sweeper.deps.settings
    while True:
        rows = await _claim(sweeper.pool, BATCH)
        results = await asyncio.gather(
            *(deliver(sweeper.pool, row, settings) for row in rows), return_exceptions=True
        )
        for row, result in zip(rows, results, strict=True):
            if isinstance(result, Exception):  # its lease runs out and the next round tries again
                log.warning("callback %s: %s", row["webhook_id"], type(result).__name__)
            elif isinstance(result, BaseException):
                raise result
        if len(rows) < BATCH:
            return


def _every(deps: Any) -> float:
    return float(deps.settings.callback_poll_seconds)


sweep = Sweep(name="callbacks", run=deliver_due, every=_every, at_start=deliver_due)
