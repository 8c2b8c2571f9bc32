"""prediction id → (generation, clip, attempt): which clip a webhook is about.

Postgres (the ``predictions`` table, written with the submission) is the record; Redis
(``prediction_mapping:<id>``, with a TTL) is a cache in front of it, so a busy gateway answers webhooks
without a database round trip. Redis is optional and never trusted to be there: any failure or miss
falls through to Postgres, so any gateway or worker resolves any webhook, Redis or not.
"""

import json
import logging
from typing import NamedTuple

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

#: Replicate keeps a prediction for an hour and retries its webhook for about a minute; a day is plenty.
TTL_SECONDS = 24 * 3600


class ClipRef(NamedTuple):
    generation_id: str
    clip_id: str
    attempt: int


def _key(prediction_id: str) -> str:
    return f"prediction_mapping:{prediction_id}"


async def remember(redis: aioredis.Redis | None, prediction_id: str, ref: ClipRef) -> None:
    """Cache the mapping; a Redis outage only costs the gateway a database lookup later."""
    if redis is None:
        return
    try:
        await redis.set(_key(prediction_id), json.dumps(ref._asdict()), ex=TTL_SECONDS)
    except (RedisError, OSError) as exc:
        log.warning("could not cache prediction %s in Redis: %r", prediction_id, exc)


async def lookup(
    redis: aioredis.Redis | None, pool: asyncpg.Pool | asyncpg.Connection, prediction_id: str
) -> ClipRef | None:
    """The clip of ``prediction_id``, or None; ``pool`` may be a connection the caller already holds."""
    if redis is not None:
        try:
            cached = await redis.get(_key(prediction_id))
        except (RedisError, OSError) as exc:
            log.warning("Redis lookup of prediction %s failed, asking Postgres: %r", prediction_id, exc)
            cached = None
        if cached:
            try:
                return ClipRef(**json.loads(cached))
            except (TypeError, ValueError):
                log.warning("ignoring a malformed cache entry for prediction %s", prediction_id)
    row = await pool.fetchrow(
        "SELECT generation_id, clip_id, attempt FROM predictions WHERE prediction_id = $1", prediction_id
    )
    if row is None:
        return None
    ref = ClipRef(row["generation_id"], row["clip_id"], row["attempt"])
    await remember(redis, prediction_id, ref)
    return ref


def connect(url: str | None) -> aioredis.Redis | None:
    """A client for ``url`` (None without one); connections are made lazily, so Redis may start later."""
    if not url:
        return None
    return aioredis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
