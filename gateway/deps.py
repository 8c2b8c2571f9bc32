"""What the gateway is built from, passed in by whoever runs it (the CLI, the embedded stack, tests)."""

from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from reelstream.kafka import Producer
from reelstream.providers import VideoProvider
from reelstream.settings import Settings
from reelstream.storage import Storage
from reelstream.webhooks import SecretSource


@dataclass
class GatewayDeps:
    """Every outside dependency of the gateway; nothing in ``gateway`` opens its own pools or producers.

    ``pool`` is the gateway's own (``gateway.database.open_pool``), never the stages': a burst of stage
    work must not starve the API.

    ``provider`` is only used to cancel outstanding predictions (None: cancel only marks the clips).
    ``webhook_secret`` is the Standard Webhooks secret provider webhooks are verified with (fixed, or
    fetched from the provider when first needed). ``redis`` caches prediction mappings (optional).
    """

    settings: Settings
    pool: asyncpg.Pool
    producer: Producer
    kafka_bootstrap: str
    storage: Storage
    provider: VideoProvider | None
    webhook_secret: str | SecretSource
    redis: aioredis.Redis | None = None


DEPS = web.AppKey("reelstream_deps", GatewayDeps)


def get_deps(request: web.Request) -> GatewayDeps:
    return request.app[DEPS]
