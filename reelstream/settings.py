"""Every setting is an environment variable ``REELSTREAM_*``; unset means the embedded default."""

import json
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REELSTREAM_", extra="ignore")

    data_dir: Path = Path(".reelstream")
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    public_url: str | None = None

    kafka_bootstrap: str | None = None
    database_url: str | None = None
    redis_url: str | None = None

    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o-mini"

    replicate_api_token: SecretStr | None = None
    replicate_base_url: str | None = None
    replicate_model: str = "wan-video/wan-2.2-t2v-fast"
    replicate_webhook_secret: SecretStr | None = None
    #: Bound on one Replicate call; a create with no answer by then is looked up before it is retried.
    replicate_timeout_seconds: float = Field(default=30.0, gt=0)
    prediction_poll_seconds: float = Field(default=60.0, gt=0)
    #: A generation that is not terminal and has made no progress for this long is driven on again from
    #: Postgres (reelstream/reconcile.py); every non-terminal one is, once, when the intake stage starts.
    reconcile_seconds: float = Field(default=120.0, gt=0)
    #: A generation with no progress at all for this long (re-drives and polls included) is failed
    #: (code ``internal``) rather than re-driven forever: every order reaches an end. An hour, because
    #: that is how long Replicate keeps outputs; past it nothing could be finished anyway.
    give_up_seconds: float = Field(default=3600.0, gt=0)
    #: Days ``processed_events``, ``webhook_deliveries`` and ``submissions`` rows are kept
    #: (reelstream/retention.py). They are what makes a repeated event, webhook or submission a no-op, so
    #: this must be longer than anything can come back: a broker redelivery, Replicate's webhook retries
    #: (a minute), a dead letter redriven or a topic replayed days later. Past it a repeat is handled as
    #: new, and only the stages' forward-only status checks stand between it and a second side effect.
    retention_days: float = Field(default=7.0, ge=1.0)

    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    storage_allow_private_urls: bool = False
    max_download_bytes: int = 512 * 1024 * 1024

    api_keys: str | None = None
    rate_limit_per_minute: int = 120
    #: USD per second of provider compute, by model (JSON object), over ``reelstream.estimates``' defaults.
    model_prices: dict[str, float] = Field(default_factory=dict)
    #: ``whsec_...`` secret that signs outbound callbacks; unset: ``{data dir}/callback_secret``.
    callback_secret: SecretStr | None = None
    #: How often undelivered callbacks are looked for (a due retry waits at most this much longer).
    callback_poll_seconds: float = Field(default=2.0, gt=0)
    #: How long a callback keeps being retried before it is given up.
    callback_retry_hours: float = Field(default=24.0, gt=0)
    #: The first retry's wait; each next one doubles it (at most an hour).
    callback_retry_base_seconds: float = Field(default=5.0, gt=0)

    #: Wan renders 81 frames at 16 fps: one clip covers at most ~5 s.
    clip_seconds: float = 5.0
    clip_concurrency: int = Field(default=4, ge=1)
    clip_attempts: int = Field(default=2, ge=1)
    render_concurrency: int = Field(default=2, ge=1)
    stage_concurrency: int = Field(default=16, ge=1)
    #: Niceness ``serve`` adds to each stage process: under a burst the gateway answers first, and the
    #: stages catch up (their work is queued in Kafka, not lost). 0 on a machine of its own.
    stage_nice: int = Field(default=10, ge=0, le=19)
    #: How long a stage keeps retrying an event that fails transiently (a dependency down) before it
    #: dead-letters it and fails its generation. Long enough to ride out a restart of Postgres, the
    #: broker or S3; well inside the hour Replicate keeps its outputs.
    transient_retry_seconds: float = Field(default=300.0, gt=0)

    #: The gateway's own Postgres pool, apart from the stages' so a burst of stage work never starves the
    #: API, webhooks and cancel. Small: gateway queries are short, and every connection costs the server.
    gateway_db_pool_min_size: int = Field(default=1, ge=0)
    gateway_db_pool_max_size: int = Field(default=10, ge=1)
    #: How long a request waits for a pool connection (a new one included) before answering 503: a
    #: saturated or unreachable database must be said quickly, not as a hang and a 500 after 60 s.
    gateway_db_acquire_timeout_seconds: float = Field(default=2.0, gt=0)
    #: Bound on one gateway statement, on the client (a silent network) and on the server
    #: (``statement_timeout``): API reads are milliseconds; anything near this is an outage.
    gateway_db_statement_timeout_seconds: float = Field(default=5.0, gt=0)
    #: ``Retry-After`` of a 503 ``unavailable`` caused by the database.
    gateway_retry_after_seconds: int = Field(default=5, ge=1)
    #: Generations the gateway remembers (LRU) to answer reads while Postgres is unreachable.
    gateway_memory_size: int = Field(default=4096, ge=0)
    #: WebSockets one gateway keeps open at most; past it a new one is answered 503 before the upgrade.
    gateway_max_websockets: int = Field(default=10_000, ge=1)
    #: How long a request body may take to arrive (a trickling client is answered 408).
    gateway_body_timeout_seconds: float = Field(default=30.0, gt=0)

    kafka_session_timeout_ms: int = 6000
    kafka_heartbeat_interval_ms: int = 1000
    #: How long the broker may hold a stage's empty fetch (see ``RuntimeConfig.fetch_max_wait_ms``).
    kafka_fetch_max_wait_ms: int = Field(default=100, ge=1, le=10_000)
    log_level: str = "INFO"
    #: ``json``: one JSON object per log line with the job's ids (reelstream/logs.py); unset: text.
    log_format: Literal["json", "text"] | None = None
    #: Where a stage process serves its ``/metrics`` (the gateway serves it on its own HTTP port). 0 turns
    #: it off. ``reelstream serve`` gives each of its stage processes a free port of its own (stack.json).
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    #: ``0.0.0.0`` in a container, so Prometheus reaches it from outside.
    metrics_host: str = "127.0.0.1"

    @field_validator(
        "public_url",
        "kafka_bootstrap",
        "database_url",
        "redis_url",
        "openai_api_key",
        "openai_base_url",
        "replicate_api_token",
        "replicate_base_url",
        "replicate_webhook_secret",
        "s3_bucket",
        "s3_endpoint_url",
        "api_keys",
        "callback_secret",
        "log_format",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """``VAR=`` (as compose writes ``${VAR:-}``) means unset, never an empty token or URL."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def gateway_url(self) -> str:
        return self.public_url or f"http://{self.http_host}:{self.http_port}"

    @property
    def api_key_set(self) -> frozenset[str]:
        return frozenset(k.strip() for k in (self.api_keys or "").split(",") if k.strip())

    def with_stack(self) -> "Settings":
        """Fill unset addresses from ``{data dir}/stack.json``, written by a running embedded stack."""
        path = self.data_dir / "stack.json"
        if not path.exists():
            return self
        stack = json.loads(path.read_text())
        updates: dict[str, object] = {}
        if self.kafka_bootstrap is None and stack.get("kafka_bootstrap"):
            updates["kafka_bootstrap"] = stack["kafka_bootstrap"]
        if self.database_url is None and stack.get("database_url"):
            updates["database_url"] = stack["database_url"]
        if self.public_url is None and stack.get("gateway_url"):
            updates["public_url"] = stack["gateway_url"]
        return self.model_copy(update=updates)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
