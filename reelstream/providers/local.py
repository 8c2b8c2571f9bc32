"""The local video provider: renders clips with FFmpeg and calls back like Replicate does.

Each prediction renders off the event loop (an FFmpeg subprocess) with bounded concurrency, writes its
output under ``{data dir}/provider/``, which the gateway serves at ``/provider/outputs/``, then POSTs a
Replicate-shaped prediction webhook signed with the Standard Webhooks scheme. Everything downstream of
``create`` is therefore the production path: signature check, topic, streaming copy into storage.

Like a Replicate prediction, a local one outlives a restart of the process that created it: the request
is kept under ``{data dir}/provider/requests/`` until its outcome is delivered, and a prediction that a
shutdown interrupted is rendered again when it is next asked about (``get``) or created. Shutting down
(``close``) therefore abandons renders and webhook retries at once instead of finishing them.
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
from reelstream.providers import ProviderUnavailable
from reelstream.webhooks import sign
from schemas.events import ClipSpec, Prediction

log = logging.getLogger(__name__)

_WEBHOOK_ATTEMPTS = 8

#: The renderer's own shapes (Wan's 480p family, plus a square): like a model, it renders at its native
#: size and the finishing step scales and crops to the delivery size, which keeps local renders cheap.
NATIVE_SIZES: dict[str, tuple[int, int]] = {"16:9": (832, 480), "9:16": (480, 832), "1:1": (480, 480)}


def native(spec: ClipSpec) -> ClipSpec:
    """``spec`` at the renderer's native size for its aspect ratio."""
    width, height = NATIVE_SIZES.get(spec.aspect_ratio, (spec.width, spec.height))
    return spec.model_copy(update={"width": width, "height": height})


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
        #: Predictions cancelled by request (they report ``canceled``), unlike those a shutdown interrupts.
        self._canceled: set[str] = set()
        self._closing = False

    def _output(self, prediction_id: str) -> Path:
        return self.output_dir / f"{prediction_id}.mp4"

    def _output_url(self, prediction_id: str) -> str:
        return f"{self.public_url}/provider/outputs/{prediction_id}.mp4"

    def _request(self, prediction_id: str) -> Path:
        return self.output_dir / "requests" / f"{prediction_id}.json"

    async def create(
        self, spec: ClipSpec, *, webhook_url: str, marker: str, since: datetime | None = None
    ) -> str:
        # Idempotent per marker by construction: the id is derived from it, so ``since`` changes nothing.
        prediction_id = prediction_id_for(marker)
        async with metrics.provider_call(self.name, "create"):
            if prediction_id not in self._tasks:
                await asyncio.to_thread(self._save_request, prediction_id, spec, webhook_url)
                self._start(prediction_id, spec, webhook_url)
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
        request = await asyncio.to_thread(self._load_request, prediction_id)
        if request is None:
            return Prediction(id=prediction_id, status="failed", error="unknown prediction")
        log.info("resuming local prediction %s, interrupted by a restart", prediction_id)
        self._start(prediction_id, *request)
        return self._state[prediction_id]

    async def cancel(self, prediction_id: str) -> None:
        async with metrics.provider_call(self.name, "cancel"):
            task = self._tasks.get(prediction_id)
            if task is not None and not task.done():
                self._canceled.add(prediction_id)
                task.cancel()
            await asyncio.to_thread(self._request(prediction_id).unlink, missing_ok=True)  # never resumed

    async def close(self) -> None:
        """Abandon every render and webhook delivery now; what was interrupted resumes after a restart."""
        self._closing = True
        for task in self._tasks.values():
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()))

    def _start(self, prediction_id: str, spec: ClipSpec, webhook_url: str) -> None:
        if self._closing:
            raise ProviderUnavailable("the local renderer is shutting down")
        self._state[prediction_id] = Prediction(id=prediction_id, status="starting")
        self._tasks[prediction_id] = asyncio.create_task(self._run(prediction_id, spec, webhook_url))

    async def _run(self, prediction_id: str, spec: ClipSpec, webhook_url: str) -> None:
        started = time.monotonic()
        try:
            async with self._semaphore:
                self._state[prediction_id] = Prediction(id=prediction_id, status="processing")
                await asyncio.to_thread(self.output_dir.mkdir, parents=True, exist_ok=True)
                await media.render_clip(native(spec), self._output(prediction_id))
            result = Prediction(
                id=prediction_id,
                status="succeeded",
                output=self._output_url(prediction_id),
                metrics={"predict_time": round(time.monotonic() - started, 3)},
            )
            metrics.CLIPS_RENDERED.labels("succeeded").inc()
        except asyncio.CancelledError:
            if self._closing or prediction_id not in self._canceled:
                raise  # a shutdown: nothing to report, the request stays for the next start
            self._uncancel()
            result = Prediction(id=prediction_id, status="canceled")
            metrics.CLIPS_RENDERED.labels("canceled").inc()
        except Exception as exc:
            log.exception("local render of %s failed", prediction_id)
            result = Prediction(id=prediction_id, status="failed", error=str(exc)[:500])
            metrics.CLIPS_RENDERED.labels("failed").inc()
        self._state[prediction_id] = result
        if await self._deliver(webhook_url, result):
            await asyncio.to_thread(self._request(prediction_id).unlink, missing_ok=True)

    @staticmethod
    def _uncancel() -> None:
        """Take back the cancellation this task handled, so later timeouts inside it still work."""
        task = asyncio.current_task()
        assert task is not None
        task.uncancel()

    def _save_request(self, prediction_id: str, spec: ClipSpec, webhook_url: str) -> None:
        path = self._request(prediction_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"spec": spec.model_dump(mode="json"), "webhook_url": webhook_url}))
        tmp.replace(path)

    def _load_request(self, prediction_id: str) -> tuple[ClipSpec, str] | None:
        try:
            saved = json.loads(self._request(prediction_id).read_text())
            return ClipSpec.model_validate(saved["spec"]), str(saved["webhook_url"])
        except (OSError, ValueError, KeyError):
            return None

    async def _deliver(self, url: str, prediction: Prediction) -> bool:
        """POST the webhook like Replicate: retried with backoff for about a minute; True once delivered.

        A shutdown cancels this (``close``) rather than letting it retry against a gateway that is gone.
        """
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
                        return True
                    log.warning("webhook %s answered %d (attempt %d)", url, resp.status, attempt)
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("webhook %s failed (attempt %d): %r", url, attempt, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
        log.error("gave up delivering webhook for %s", prediction.id)
        return False


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
