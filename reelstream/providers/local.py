"""The local video provider: renders clips with FFmpeg and calls back like Replicate does.

Each prediction renders off the event loop (an FFmpeg subprocess) with bounded concurrency, writes its
output under ``{data dir}/provider/``, which the gateway serves at ``/provider/outputs/``, then POSTs a
Replicate-shaped prediction webhook signed with the Standard Webhooks scheme. Everything downstream of
``create`` is therefore the production path: signature check, topic, streaming copy into storage.
"""

import asyncio
import hashlib
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from reelstream import media, metrics
from reelstream.webhooks import sign
from schemas.events import ClipSpec, Prediction

log = logging.getLogger(__name__)

_WEBHOOK_ATTEMPTS = 8


def prediction_id_for(marker: str) -> str:
    """Deterministic per submission marker: a repeated create for the same attempt is the same prediction."""
    return "lp_" + hashlib.sha256(marker.encode()).hexdigest()[:24]


class LocalVideoProvider:
    name = "local"

    def __init__(self, *, output_dir: Path, public_url: str, secret: str, concurrency: int = 2) -> None:
        self.output_dir = output_dir
        self.public_url = public_url.rstrip("/")
        self.secret = secret
        self._semaphore = asyncio.Semaphore(concurrency)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._state: dict[str, Prediction] = {}

    def _output(self, prediction_id: str) -> Path:
        return self.output_dir / f"{prediction_id}.mp4"

    def _output_url(self, prediction_id: str) -> str:
        return f"{self.public_url}/provider/outputs/{prediction_id}.mp4"

    async def create(
        self, spec: ClipSpec, *, webhook_url: str, marker: str, since: datetime | None = None
    ) -> str:
        # Idempotent per marker by construction: the id is derived from it, so ``since`` changes nothing.
        prediction_id = prediction_id_for(marker)
        if prediction_id not in self._tasks:
            self._state[prediction_id] = Prediction(id=prediction_id, status="starting")
            task = asyncio.create_task(self._run(prediction_id, spec, webhook_url))
            self._tasks[prediction_id] = task
        return prediction_id

    async def find(self, marker: str, since: datetime) -> str | None:
        """A render this process started for ``marker``, or one whose output is on disk."""
        prediction_id = prediction_id_for(marker)
        if prediction_id in self._tasks or await asyncio.to_thread(self._output(prediction_id).exists):
            return prediction_id
        return None

    async def get(self, prediction_id: str) -> Prediction:
        if prediction_id in self._state:
            return self._state[prediction_id]
        if self._output(prediction_id).exists():
            return Prediction(id=prediction_id, status="succeeded", output=self._output_url(prediction_id))
        return Prediction(id=prediction_id, status="failed", error="unknown prediction")

    async def cancel(self, prediction_id: str) -> None:
        task = self._tasks.get(prediction_id)
        if task is not None and not task.done():
            task.cancel()

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()))

    async def _run(self, prediction_id: str, spec: ClipSpec, webhook_url: str) -> None:
        started = time.monotonic()
        try:
            async with self._semaphore:
                self._state[prediction_id] = Prediction(id=prediction_id, status="processing")
                self.output_dir.mkdir(parents=True, exist_ok=True)
                await media.render_clip(spec, self._output(prediction_id))
            result = Prediction(
                id=prediction_id,
                status="succeeded",
                output=self._output_url(prediction_id),
                metrics={"predict_time": round(time.monotonic() - started, 3)},
            )
            metrics.CLIPS_RENDERED.labels("succeeded").inc()
        except asyncio.CancelledError:
            result = Prediction(id=prediction_id, status="canceled")
            metrics.CLIPS_RENDERED.labels("canceled").inc()
            self._state[prediction_id] = result
            # Deliver the cancellation without being cancelled ourselves: shield the POST.
            await asyncio.shield(self._deliver(webhook_url, result))
            raise
        except Exception as exc:
            log.exception("local render of %s failed", prediction_id)
            result = Prediction(id=prediction_id, status="failed", error=str(exc)[:500])
            metrics.CLIPS_RENDERED.labels("failed").inc()
        self._state[prediction_id] = result
        await self._deliver(webhook_url, result)

    async def _deliver(self, url: str, prediction: Prediction) -> None:
        """POST the webhook like Replicate: retried with backoff for about a minute."""
        body = json.dumps(_replicate_body(prediction)).encode()
        delay = 0.25
        # One id per message, kept across retries (Standard Webhooks): the receiver dedupes on it.
        webhook_id = f"msg_{prediction.id}_{prediction.status}"
        for attempt in range(1, _WEBHOOK_ATTEMPTS + 1):
            headers = sign(self.secret, body, webhook_id=webhook_id)
            try:
                timeout = aiohttp.ClientTimeout(total=15)
                async with (
                    aiohttp.ClientSession(timeout=timeout) as session,
                    session.post(url, data=body, headers=headers) as resp,
                ):
                    if resp.status < 300:
                        return
                    log.warning("webhook %s answered %d (attempt %d)", url, resp.status, attempt)
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("webhook %s failed (attempt %d): %r", url, attempt, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
        log.error("gave up delivering webhook for %s", prediction.id)


def _replicate_body(prediction: Prediction) -> dict[str, Any]:
    stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return {
        "id": prediction.id,
        "model": "reelstream/local-ffmpeg",
        "version": "local",
        "status": prediction.status,
        "output": prediction.output,
        "error": prediction.error,
        "metrics": prediction.metrics or {},
        "created_at": stamp,
        "completed_at": stamp,
        "urls": {},
    }
