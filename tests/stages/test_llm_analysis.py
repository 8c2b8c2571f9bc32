"""The OpenAI analyzer against a fake OpenAI server (real client) and real Postgres (the cache)."""

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from fake_openai import VALID_RESULT, FakeOpenAI

from reelstream import db
from reelstream.settings import Settings
from schemas.api import GenerationRequest
from stages.analysis import llm

SECRET = "sk-test-secret-do-not-leak"


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = await FakeOpenAI().start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    await db.migrate(database_url)
    pool = await db.create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as connection:
            yield connection
    finally:
        await pool.close()


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llm, "BASE_DELAY", 0.01)
    monkeypatch.setattr(llm, "MAX_DELAY", 0.05)


def settings_for(fake: FakeOpenAI, tmp_path: Path, *, key: str | None = SECRET) -> Settings:
    return Settings(
        data_dir=tmp_path,
        openai_api_key=key,
        openai_base_url=fake.base_url,
        openai_model="gpt-fake-1",
    )


def request(**body: Any) -> GenerationRequest:
    # A unique prompt per test: the cache lives in the session's database.
    prompt = f"A night-time ad for Acme running shoes, neon city streets ({uuid.uuid4().hex[:8]})"
    return GenerationRequest.model_validate(
        {"prompt": prompt, "brand": {"name": "Acme", "colors": ["#0A84FF"]}, **body}
    )


async def test_success_uses_the_model(fake: FakeOpenAI, conn: asyncpg.Connection, tmp_path: Path) -> None:
    analysis = await llm.analyze(request(), settings_for(fake, tmp_path), conn)
    assert analysis.source == "openai"
    assert analysis.fallback_reason is None
    assert analysis.tone == VALID_RESULT["tone"]
    assert analysis.brand is not None and analysis.brand.palette == ["#0A84FF"]
    assert len(fake.requests) == 1
    sent = fake.requests[0]
    assert sent["model"] == "gpt-fake-1"
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["messages"][0]["role"] == "system"
    user = json.loads(sent["messages"][1]["content"])
    assert user["prompt"].startswith("A night-time ad")
    assert user["brand"]["name"] == "Acme"


async def test_invalid_json_falls_back_offline(
    fake: FakeOpenAI, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    fake.push_content('{"tone": "energetic", "style": ')
    analysis = await llm.analyze(request(), settings_for(fake, tmp_path), conn)
    assert analysis.source == "offline"
    assert analysis.fallback_reason is not None
    assert analysis.fallback_reason.startswith("model output failed validation")
    assert len(fake.requests) == 1  # bad output is not retried


async def test_schema_violation_falls_back_offline(
    fake: FakeOpenAI, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    fake.push_content(json.dumps({**VALID_RESULT, "pacing": "glacial"}))
    analysis = await llm.analyze(request(), settings_for(fake, tmp_path), conn)
    assert analysis.source == "offline"
    assert analysis.fallback_reason is not None
    assert "validation" in analysis.fallback_reason and "pacing" in analysis.fallback_reason


async def test_rate_limit_then_success(fake: FakeOpenAI, conn: asyncpg.Connection, tmp_path: Path) -> None:
    fake.push_error(429, headers={"retry-after": "0"})
    analysis = await llm.analyze(request(), settings_for(fake, tmp_path), conn)
    assert analysis.source == "openai"
    assert len(fake.requests) == 2


async def test_outage_exhausts_retries_and_falls_back(
    fake: FakeOpenAI, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    fake.push_error(500, times=4)
    fake.push(200)  # would succeed: it must not be reached
    req = request()
    analysis = await llm.analyze(req, settings_for(fake, tmp_path), conn)
    assert analysis.source == "offline"
    assert analysis.fallback_reason is not None
    assert "unavailable" in analysis.fallback_reason
    assert SECRET not in analysis.fallback_reason
    assert len(fake.requests) == llm.MAX_ATTEMPTS == 4
    # Fallbacks are not cached: the next call (provider back) gets the model's answer.
    again = await llm.analyze(req, settings_for(fake, tmp_path), conn)
    assert again.source == "openai"
    assert len(fake.requests) == 5


async def test_client_error_falls_back_without_retry(
    fake: FakeOpenAI, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    fake.push(401, {"error": {"message": f"Incorrect API key provided: {SECRET}", "type": "x"}})
    analysis = await llm.analyze(request(), settings_for(fake, tmp_path), conn)
    assert analysis.source == "offline"
    assert analysis.fallback_reason is not None
    assert "401" in analysis.fallback_reason
    assert SECRET not in analysis.fallback_reason
    assert len(fake.requests) == 1


async def test_refusal_falls_back_offline(fake: FakeOpenAI, conn: asyncpg.Connection, tmp_path: Path) -> None:
    fake.push_refusal()
    analysis = await llm.analyze(request(), settings_for(fake, tmp_path), conn)
    assert analysis.source == "offline"
    assert analysis.fallback_reason is not None
    assert "refused" in analysis.fallback_reason


async def test_same_input_hits_the_cache(fake: FakeOpenAI, conn: asyncpg.Connection, tmp_path: Path) -> None:
    req = request()
    settings = settings_for(fake, tmp_path)
    first = await llm.analyze(req, settings, conn)
    second = await llm.analyze(req, settings, conn)
    assert first.source == second.source == "openai"
    assert second == first
    assert len(fake.requests) == 1
    # Another model is another cache entry.
    other = settings.model_copy(update={"openai_model": "gpt-fake-2"})
    await llm.analyze(req, other, conn)
    assert len(fake.requests) == 2
    count = await conn.fetchval(
        "SELECT count(*) FROM analysis_cache WHERE cache_key = ANY($1::text[])",
        [llm.cache_key(req, "gpt-fake-1"), llm.cache_key(req, "gpt-fake-2")],
    )
    assert count == 2


async def test_no_key_is_offline_without_a_request(
    fake: FakeOpenAI, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    analysis = await llm.analyze(request(), settings_for(fake, tmp_path, key=None), conn)
    assert analysis.source == "offline"
    assert analysis.fallback_reason is None
    assert fake.requests == []


async def test_client_is_built_once_per_key_and_url(fake: FakeOpenAI) -> None:
    assert llm.client_for("k", fake.base_url) is llm.client_for("k", fake.base_url)
    assert llm.client_for("k", fake.base_url) is not llm.client_for("k2", fake.base_url)


async def test_clients_cta_text_wins(fake: FakeOpenAI, conn: asyncpg.Connection, tmp_path: Path) -> None:
    analysis = await llm.analyze(
        request(options={"cta_text": "Run with us"}), settings_for(fake, tmp_path), conn
    )
    assert analysis.source == "openai"
    assert analysis.call_to_action.text == "Run with us"
    assert json.loads(fake.requests[0]["messages"][1]["content"])["cta_text"] == "Run with us"
