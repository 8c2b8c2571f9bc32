"""Settings from the environment, and the provider and webhook secret they select."""

from pathlib import Path

import pytest

from reelstream import service
from reelstream.providers.local import LocalVideoProvider
from reelstream.providers.replicate import ReplicateVideoProvider
from reelstream.settings import Settings
from reelstream.webhooks import SecretSource


def test_empty_variables_mean_unset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # docker-compose's ${VAR:-} writes empty strings: they must not become an empty token.
    for name in (
        "REPLICATE_API_TOKEN",
        "OPENAI_API_KEY",
        "S3_BUCKET",
        "REDIS_URL",
        "REPLICATE_WEBHOOK_SECRET",
    ):
        monkeypatch.setenv(f"REELSTREAM_{name}", "")
    settings = Settings(data_dir=tmp_path)
    assert settings.replicate_api_token is None
    assert settings.openai_api_key is None
    assert settings.s3_bucket is None and settings.redis_url is None
    assert isinstance(service.build_provider(settings), LocalVideoProvider)


async def test_local_provider_secret_is_generated_once_per_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    provider = service.build_provider(settings)
    first = service.webhook_secret(settings, provider)
    assert isinstance(first, str) and first.startswith("whsec_")
    assert service.webhook_secret(settings, provider) == first
    assert service.webhook_secret(Settings(data_dir=tmp_path / "other"), provider) != first
    await provider.close()


async def test_replicate_token_selects_replicate_and_its_secret(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, replicate_api_token="r8_x", replicate_base_url="http://127.0.0.1:9"
    )
    provider = service.build_provider(settings)
    assert isinstance(provider, ReplicateVideoProvider)
    assert provider.model == "wan-video/wan-2.2-t2v-fast"
    # No secret configured: fetched from the account when first needed.
    assert isinstance(service.webhook_secret(settings, provider), SecretSource)
    configured = Settings(
        data_dir=tmp_path, replicate_api_token="r8_x", replicate_webhook_secret="whsec_Y29uZmlndXJlZA=="
    )
    assert service.webhook_secret(configured, provider) == "whsec_Y29uZmlndXJlZA=="
    await provider.close()


async def test_secret_source_fetches_once_and_retries_after_a_failure() -> None:
    calls = 0

    async def fetch() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("Replicate is down")
        return "whsec_ZmV0Y2hlZA=="

    source = SecretSource(fetch)
    with pytest.raises(ConnectionError):
        await source.get()
    assert await source.get() == "whsec_ZmV0Y2hlZA=="
    assert await source.get() == "whsec_ZmV0Y2hlZA=="
    assert calls == 2
