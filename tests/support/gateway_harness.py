"""Helpers for the gateway tests: a topic tap, the provider double, the running-gateway handle.

Kept out of ``conftest.py`` so test modules can import them by a name no other package uses.
"""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaConnectionError
from pydantic import BaseModel

from gateway.app import GatewayDeps
from reelstream import kafka
from reelstream.events import decode, make_event
from reelstream.storage import LocalStorage
from schemas.envelope import CloudEvent
from schemas.events import ClipSpec, Prediction


class FailingProducer(kafka.Producer):
    """A producer whose broker is gone: every send fails like a lost connection."""

    def __init__(self) -> None:
        self.attempts = 0

    async def send_many(self, items: Any) -> None:
        self.attempts += 1
        raise KafkaConnectionError("broker unreachable (test)")


@dataclass
class Record:
    key: bytes | None
    event: CloudEvent


class Tap:
    """Reads a topic from 'now' on, without a group: what got published after the tap was opened."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
        self.seen: list[Record] = []

    async def start(self) -> None:
        await self.consumer.start()
        partitions = self.consumer.partitions_for_topic(self.topic)
        assert partitions, f"topic {self.topic} does not exist"
        tps = [TopicPartition(self.topic, p) for p in partitions]
        self.consumer.assign(tps)
        await self.consumer.seek_to_end(*tps)
        for tp in tps:
            await self.consumer.position(tp)

    async def _poll(self, timeout_ms: int) -> None:
        batch = await self.consumer.getmany(timeout_ms=timeout_ms)
        for records in batch.values():
            self.seen.extend(Record(r.key, decode(r.value)) for r in records)

    async def wait_for(self, predicate: Callable[[Record], bool], within: float = 15.0) -> Record:
        deadline = asyncio.get_running_loop().time() + within
        while True:
            for record in self.seen:
                if predicate(record):
                    return record
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"nothing matching on {self.topic} within {within}s; saw {self.seen}")
            await self._poll(200)

    async def collect(self, predicate: Callable[[Record], bool], seconds: float) -> list[Record]:
        """Everything matching that arrives within ``seconds`` (for 'published exactly once')."""
        deadline = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < deadline:
            await self._poll(200)
        return [r for r in self.seen if predicate(r)]

    async def stop(self) -> None:
        await self.consumer.stop()


async def publish(producer: kafka.Producer, topic: str, data: BaseModel, subject: str) -> None:
    await producer.send(topic, make_event(topic, data, source="/tests/gateway", subject=subject))


# -- the provider double ------------------------------------------------------------------------------


class RecordingProvider:
    """Implements the VideoProvider protocol; records cancels (the only call the gateway makes)."""

    name = "recording"

    def __init__(self, *, fail_cancel: bool = False) -> None:
        self.canceled: list[str] = []
        self.fail_cancel = fail_cancel

    async def create(self, spec: ClipSpec, *, webhook_url: str, marker: str) -> str:
        raise NotImplementedError

    async def get(self, prediction_id: str) -> Prediction:
        raise NotImplementedError

    async def cancel(self, prediction_id: str) -> None:
        self.canceled.append(prediction_id)
        if self.fail_cancel:
            raise RuntimeError("provider down (test)")

    async def close(self) -> None:
        return None


@dataclass
class Gateway:
    client: TestClient[web.Request, web.Application]
    deps: GatewayDeps
    provider: RecordingProvider
    pool: asyncpg.Pool
    storage: LocalStorage
    secret: str

    async def create(self, prompt: str = "A sunny ad for lemonade", **fields: Any) -> str:
        resp = await self.client.post("/api/v1/generations", json={"prompt": prompt, **fields})
        assert resp.status == 202, await resp.text()
        generation_id: str = (await resp.json())["generation_id"]
        return generation_id


GatewayFactory = Callable[..., Awaitable[Gateway]]
