"""Clips by Wan models on Replicate, through the official ``replicate`` client.

What the client does not do for us, and why it matters here:

* It never retries a POST. A throttled create (429) waits as long as ``Retry-After`` says, then tries
  again; the wait is capped (``max_wait``, 20 s): past the cap the stage runtime retries the event with
  its own backoff (no transaction is held meanwhile either way).
* It sends creates with no timeout at all. We bound them, and a create whose answer never came may
  still have started a paid prediction: before trying again we list the predictions made since the
  submission's intent was recorded (every page back to that moment) and adopt the one whose webhook
  URL carries our marker. Never one whose input merely looks equal: the planner is deterministic, so
  another generation's prediction can have the very same input.
* Its ``Prediction`` model rejects the ``aborted`` status, so reads (get, list, cancel) parse raw JSON
  into our own :class:`schemas.events.Prediction`.
"""

import asyncio
import logging
import random
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from replicate.client import Client as ReplicateClient
from replicate.exceptions import ReplicateError

from reelstream import metrics
from reelstream.providers import ProviderError, ProviderUnavailable
from reelstream.providers.wan import build_input, input_properties
from schemas.events import ClipSpec, Prediction

log = logging.getLogger(__name__)

#: Clock skew allowed between our intent's timestamp and Replicate's ``created_at``.
_CLOCK_SKEW = timedelta(minutes=2)


class Throttled(Exception):
    def __init__(self, retry_after: float | None) -> None:
        super().__init__(f"throttled by Replicate (retry after {retry_after}s)")
        self.retry_after = retry_after


async def _raise_throttled(response: httpx.Response) -> None:
    """An httpx response hook: turns a 429 into :class:`Throttled` carrying ``Retry-After``.

    ``ReplicateError`` keeps the status but drops the headers, and the header is what says how long.
    """
    if response.status_code == 429:
        raise Throttled(_retry_after(response.headers.get("retry-after")))


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


class ReplicateVideoProvider:
    name = "replicate"

    def __init__(
        self,
        *,
        api_token: str,
        model: str,
        base_url: str | None = None,
        timeout: float = 30.0,
        create_attempts: int = 4,
        max_wait: float = 20.0,
    ) -> None:
        owner, _, model_name = model.partition("/")
        if not owner or not model_name or "/" in model_name or ":" in model_name:
            raise ValueError(f"REELSTREAM_REPLICATE_MODEL must be owner/name, got {model!r}")
        self.model = model
        self.timeout = timeout
        self.create_attempts = create_attempts
        self.max_wait = max_wait
        self._client = ReplicateClient(
            api_token=api_token,
            base_url=base_url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            event_hooks={"response": [_raise_throttled]},
        )
        self._schema: tuple[dict[str, dict[str, Any]], list[str]] | None = None
        self._schema_lock = asyncio.Lock()
        #: Markers whose last create ended without an answer: look before creating again.
        self._uncertain: set[str] = set()

    # -- the model's inputs ----------------------------------------------------------------------

    async def _inputs(self) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """The model's input schema, read once per process (``GET /v1/models/{owner}/{name}``)."""
        async with self._schema_lock:
            if self._schema is None:
                body = await self._get_json(f"/v1/models/{self.model}")
                schema = (body.get("latest_version") or {}).get("openapi_schema")
                if not isinstance(schema, dict):
                    raise ProviderError(f"{self.model} has no published version with an input schema")
                self._schema = input_properties(schema)
            return self._schema

    async def build_input(self, spec: ClipSpec) -> dict[str, Any]:
        properties, required = await self._inputs()
        return build_input(spec, properties, required)

    # -- VideoProvider ---------------------------------------------------------------------------

    async def create(
        self, spec: ClipSpec, *, webhook_url: str, marker: str, since: datetime | None = None
    ) -> str:
        async with metrics.provider_call(self.name, "create", count=False):  # _count says how it went
            return await self._create(spec, webhook_url=webhook_url, marker=marker, since=since)

    async def _create(self, spec: ClipSpec, *, webhook_url: str, marker: str, since: datetime | None) -> str:
        if since is not None:
            self._uncertain.add(marker)
        since = since or datetime.now(UTC)
        inputs = await self.build_input(spec)
        delay = 1.0
        waited = 0.0
        for attempt in range(1, self.create_attempts + 1):
            if marker in self._uncertain:
                found = await self.find(marker, since)
                if found is not None:
                    log.info("%s: adopted prediction %s from a create whose answer was lost", marker, found)
                    _count("adopted")
                    self._uncertain.discard(marker)
                    return found
            try:
                prediction = await asyncio.wait_for(
                    self._client.predictions.async_create(
                        model=self.model,
                        input=inputs,
                        webhook=webhook_url,
                        webhook_events_filter=["completed"],
                    ),
                    self.timeout,
                )
            except Throttled as exc:
                _count("throttled")
                pause = min(exc.retry_after if exc.retry_after is not None else delay, self.max_wait - waited)
                if pause <= 0 or attempt == self.create_attempts:
                    raise ProviderUnavailable(str(exc)) from None
                log.warning("%s: throttled, waiting %.1fs (attempt %d)", marker, pause, attempt)
                await asyncio.sleep(pause)
                waited += pause
                continue  # Retry-After was the wait: no extra backoff
            except ReplicateError as exc:
                if exc.status is not None and 400 <= exc.status < 500:
                    _count("rejected")
                    self._uncertain.discard(marker)
                    raise ProviderError(f"{exc.status}: {exc.detail or exc.title}") from None
                self._uncertain.add(marker)  # a 5xx may come after the prediction was made
                _count("server_error")
                log.warning("%s: create answered %s (attempt %d)", marker, exc.status, attempt)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                log.warning("%s: Replicate unreachable (attempt %d): %r", marker, attempt, exc)
                _count("unreachable")
            except (TimeoutError, httpx.HTTPError) as exc:
                self._uncertain.add(marker)
                _count("unknown")
                log.warning("%s: create outcome unknown (attempt %d): %r", marker, attempt, exc)
            else:
                self._uncertain.discard(marker)
                _count("created")
                return prediction.id
            pause = delay * random.uniform(0.5, 1.0)
            await asyncio.sleep(pause)
            delay = min(delay * 2, 10.0)
        raise ProviderUnavailable(f"could not create a prediction for {marker}")

    async def get(self, prediction_id: str) -> Prediction:
        async with metrics.provider_call(self.name, "get"):
            return Prediction.model_validate(await self._get_json(f"/v1/predictions/{prediction_id}"))

    async def cancel(self, prediction_id: str) -> None:
        try:
            async with metrics.provider_call(self.name, "cancel"):
                await self._request("POST", f"/v1/predictions/{prediction_id}/cancel")
        except ProviderError as exc:  # already finished or unknown: nothing left to stop
            log.info("cancel of %s: %s", prediction_id, exc)

    async def close(self) -> None:
        client = self._client._async_client
        await client.aclose()

    async def webhook_secret(self) -> str:
        """Replicate's signing secret for this account (``GET /v1/webhooks/default/secret``)."""
        secret = await self._client.webhooks.default.async_secret()
        return str(secret.key)

    # -- lost creates ----------------------------------------------------------------------------

    async def find(self, marker: str, since: datetime) -> str | None:
        """The prediction a lost create made, if any: ours carry the marker in their webhook URL.

        The listing is newest first; every page is read back to ``since`` (the intent's time, less
        some clock skew), however busy the account.
        """
        oldest = since - _CLOCK_SKEW
        url = "/v1/predictions"
        while url:
            page = await self._get_json(url)
            for item in page.get("results") or []:
                webhook = item.get("webhook")
                if isinstance(webhook, str) and webhook.endswith(f"marker={marker}"):
                    return str(item["id"])
                if _created(item) < oldest:
                    return None  # everything after this is older still
            url = page.get("next") or ""
        return None

    # -- raw JSON --------------------------------------------------------------------------------

    async def _request(self, method: str, path: str) -> httpx.Response:
        """The client's own transport (auth, base URL, GET retries), without its Prediction model."""
        try:
            return await self._client._async_request(method, path)
        except Throttled as exc:
            raise ProviderUnavailable(str(exc)) from None
        except ReplicateError as exc:
            if exc.status is not None and exc.status >= 500:
                raise ProviderUnavailable(f"{exc.status}: {exc.detail or exc.title}") from None
            raise ProviderError(f"{exc.status}: {exc.detail or exc.title}") from None
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(f"Replicate unreachable: {exc!r}") from None

    async def _get_json(self, path: str) -> dict[str, Any]:
        response = await self._request("GET", path)
        body = response.json()
        if not isinstance(body, dict):
            raise ProviderUnavailable(f"unexpected answer from {path}")
        return body


def _count(outcome: str) -> None:
    metrics.PROVIDER_CALLS.labels("replicate", "create", outcome).inc()


def _created(item: dict[str, Any]) -> datetime:
    try:
        return datetime.fromisoformat(str(item.get("created_at")).replace("Z", "+00:00"))
    except ValueError:
        return datetime.now(UTC)
