"""Standard Webhooks signing and verification, exactly as Replicate signs its prediction webhooks.

The local provider signs with :func:`sign` and the gateway verifies with :func:`verify`, so the demo and
the tests travel the same path as production.
"""

import asyncio
import base64
import json
import os
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from reelstream.settings import Settings

TOLERANCE_SECONDS = 300


class InvalidWebhook(Exception):
    """Missing, malformed, forged or stale signature."""


def local_secret(settings: Settings) -> str:
    """The secret of the local provider: from settings, else created once under the data dir.

    Never a constant baked into the code: anyone who knew it could forge completions on a public gateway.
    """
    if settings.replicate_webhook_secret is not None and settings.replicate_api_token is None:
        return settings.replicate_webhook_secret.get_secret_value()
    path = settings.data_dir / "webhook_secret"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    tmp = path.with_name(f".webhook_secret.{secrets.token_hex(6)}")
    tmp.write_text(secret)
    tmp.chmod(0o600)
    try:
        os.link(tmp, path)  # atomic and refuses to overwrite: concurrent first starts agree on one secret
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_text().strip()


class SecretSource:
    """A secret fetched when first needed and kept; a failed fetch is tried again on the next call."""

    def __init__(self, fetch: Callable[[], Awaitable[str]]) -> None:
        self._fetch = fetch
        self._value: str | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> str:
        async with self._lock:
            if self._value is None:
                self._value = await self._fetch()
            return self._value


def sign(secret: str, body: bytes, *, webhook_id: str, at: datetime | None = None) -> dict[str, str]:
    """Headers for a delivery of ``body``: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``."""
    at = at or datetime.now(UTC)
    signature = Webhook(secret).sign(webhook_id, at, body.decode())
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


def verify(secret: str, body: bytes, headers: dict[str, str]) -> Any:
    """Check signature and the 5-minute timestamp tolerance before anything is parsed; returns the JSON."""
    try:
        Webhook(secret).verify(body, headers, json_parse=False)
    except (WebhookVerificationError, ValueError) as exc:
        raise InvalidWebhook(str(exc) or "invalid signature") from exc
    try:
        return json.loads(body)
    except ValueError as exc:
        raise InvalidWebhook("body is not JSON") from exc
