"""prediction_mapping: Redis answers when it can, Postgres always does."""

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis

from reelstream import db, mapping


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    await db.migrate(database_url)
    pool = await db.create_pool(database_url, min_size=1, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = mapping.connect(redis_url)
    assert client is not None
    try:
        yield client
    finally:
        await client.aclose()


async def recorded_prediction(pool: asyncpg.Pool) -> tuple[str, mapping.ClipRef]:
    generation_id = f"gen_{uuid.uuid4().hex}"
    prediction_id = f"p{uuid.uuid4().hex[:20]}"
    await pool.execute(
        "INSERT INTO generations (id, prompt, duration_seconds, aspect_ratio, options)"
        " VALUES ($1, 'p', 5, '16:9', '{}')",
        generation_id,
    )
    await pool.execute(
        "INSERT INTO predictions (prediction_id, generation_id, clip_id, attempt, provider)"
        " VALUES ($1, $2, 'clip_01', 2, 'replicate')",
        prediction_id,
        generation_id,
    )
    return prediction_id, mapping.ClipRef(generation_id, "clip_01", 2)


async def test_remembered_mapping_is_read_from_redis_with_a_ttl(
    pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    ref = mapping.ClipRef(f"gen_{uuid.uuid4().hex}", "clip_00", 1)
    await mapping.remember(redis, "pred_only_in_redis", ref)
    ttl = await redis.ttl("prediction_mapping:pred_only_in_redis")
    assert 0 < ttl <= mapping.TTL_SECONDS
    # Not in Postgres at all: only the cache can have answered.
    assert await mapping.lookup(redis, pool, "pred_only_in_redis") == ref


async def test_a_miss_is_answered_by_postgres_and_cached(pool: asyncpg.Pool, redis: aioredis.Redis) -> None:
    prediction_id, ref = await recorded_prediction(pool)
    assert await redis.get(f"prediction_mapping:{prediction_id}") is None
    assert await mapping.lookup(redis, pool, prediction_id) == ref
    assert await redis.get(f"prediction_mapping:{prediction_id}") is not None


async def test_without_redis_or_with_redis_down_postgres_answers(pool: asyncpg.Pool) -> None:
    prediction_id, ref = await recorded_prediction(pool)
    assert await mapping.lookup(None, pool, prediction_id) == ref
    dead = mapping.connect("redis://127.0.0.1:1/0")
    assert dead is not None
    try:
        await mapping.remember(dead, prediction_id, ref)  # logged, not raised
        assert await mapping.lookup(dead, pool, prediction_id) == ref
    finally:
        await dead.aclose()


async def test_unknown_prediction_is_none(pool: asyncpg.Pool, redis: aioredis.Redis) -> None:
    assert await mapping.lookup(redis, pool, "never_created") is None
