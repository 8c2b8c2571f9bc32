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
from pathlib import Path
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from reelstream.settings import Settings

TOLERANCE_SECONDS = 300


class InvalidWebhook(Exception):
    """Missing, malformed, forged or stale signature."""


def new_secret() -> str:
    """A fresh Standard Webhooks secret (``whsec_`` + base64 of 32 random bytes)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_file(path: Path) -> str:
    """The secret stored at ``path``, created once (mode 0600 from the first byte) if it is not there.

    The file is written under a temporary name opened with ``O_CREAT | O_EXCL`` and mode 0600, so there
    is no moment at which another user could read it (a chmod after writing leaves such a window); it
    is then hard-linked into place, which is atomic and refuses to overwrite, so concurrent first starts
    agree on one secret.
    """
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(new_secret())
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()


def local_secret(settings: Settings) -> str:
    """The secret of the local provider: from settings, else created once under the data dir.

    Never a constant baked into the code: anyone who knew it could forge completions on a public gateway.
    """
    if settings.replicate_webhook_secret is not None and settings.replicate_api_token is None:
        return settings.replicate_webhook_secret.get_secret_value()
    return secret_file(settings.data_dir / "webhook_secret")


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
