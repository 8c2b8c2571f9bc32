"""A video provider double for fault tests: fails chosen (clip, attempt) submissions, renders the rest.

A failure is delivered the way Replicate delivers it — a signed ``failed`` prediction webhook to the
gateway — so the stages meet the same path as in production.
"""

import asyncio
import json
from datetime import datetime

import aiohttp

from reelstream.providers import VideoProvider
from reelstream.webhooks import sign
from schemas.events import ClipSpec, Prediction


class FlakyProvider:
    name = "flaky"

    def __init__(self, inner: VideoProvider, secret: str, fail: set[tuple[str, int]]) -> None:
        self.inner = inner
        self.secret = secret
        self.fail = fail
        self.created: list[tuple[str, int]] = []
        #: How many earlier predictions were still running when each create was called.
        self.running_at_create: list[int] = []
        self._ids: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def create(
        self, spec: ClipSpec, *, webhook_url: str, marker: str, since: datetime | None = None
    ) -> str:
        attempt = int(marker.rsplit(".", 1)[1])
        self.created.append((spec.clip_id, attempt))
        states = [await self.inner.get(pid) for pid in self._ids]
        self.running_at_create.append(sum(not p.terminal for p in states))
        if (spec.clip_id, attempt) not in self.fail:
            prediction_id = await self.inner.create(spec, webhook_url=webhook_url, marker=marker, since=since)
            self._ids.append(prediction_id)
            return prediction_id
        prediction_id = f"fl_{spec.clip_id}_{attempt}_{marker[4:12]}"
        task = asyncio.create_task(self._deliver_failure(webhook_url, prediction_id))
        self._tasks.add(task)
        return prediction_id

    async def _deliver_failure(self, url: str, prediction_id: str) -> None:
        await asyncio.sleep(0.2)
        body = json.dumps(
            {
                "id": prediction_id,
                "status": "failed",
                "output": None,
                "error": "CUDA out of memory (simulated)",
            }
        ).encode()
        headers = sign(self.secret, body, webhook_id=f"msg_{prediction_id}")
        async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers) as resp:
            assert resp.status < 300, await resp.text()

    async def find(self, marker: str, since: datetime) -> str | None:
        return await self.inner.find(marker, since)

    async def get(self, prediction_id: str) -> Prediction:
        return await self.inner.get(prediction_id)

    async def cancel(self, prediction_id: str) -> None:
        await self.inner.cancel(prediction_id)

    async def close(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)
