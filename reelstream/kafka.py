"""Kafka plumbing shared by every process: topic creation and an acks=all producer of CloudEvents."""

import asyncio
import logging
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from reelstream import metrics
from reelstream.events import encode
from schemas import topics
from schemas.envelope import CloudEvent

log = logging.getLogger(__name__)

DEFAULT_PARTITIONS = 4
#: Kafka's TOPIC_ALREADY_EXISTS; tansu reports it in ``topic_errors`` instead of raising.
_ALREADY_EXISTS = 36


def all_topics() -> list[str]:
    """Every pipeline topic and its dead-letter topic."""
    return [*topics.ALL, *(topics.dlq(t) for t in topics.ALL)]


async def ensure_topics(
    bootstrap: str, names: Iterable[str], *, partitions: int = DEFAULT_PARTITIONS
) -> None:
    """Create the topics that do not exist yet; safe to call from every process at every start."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in dict.fromkeys(names) if n not in existing]
        if not missing:
            return
        response = await admin.create_topics(
            [NewTopic(name=n, num_partitions=partitions, replication_factor=1) for n in missing]
        )
        for name, code, *_ in getattr(response, "topic_errors", []):
            if code not in (0, _ALREADY_EXISTS):
                raise RuntimeError(f"could not create topic {name}: error code {code}")
        log.info("created topics %s", ", ".join(missing))
    finally:
        await admin.close()


class Producer:
    """CloudEvents keyed by generation id, acknowledged by all in-sync replicas before ``send`` returns."""

    def __init__(self, bootstrap: str) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=False,  # tansu does not support InitProducerId
            linger_ms=2,
            request_timeout_ms=15000,
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def send(self, topic: str, event: CloudEvent) -> None:
        await self._producer.send_and_wait(topic, encode(event), key=event.subject.encode())
        metrics.EVENTS_EMITTED.labels(topic).inc()

    async def send_many(self, items: Iterable[tuple[str, CloudEvent]]) -> None:
        """Send in parallel and wait for every acknowledgement."""
        sent = list(items)
        futures = [
            await self._producer.send(topic, encode(ev), key=ev.subject.encode()) for topic, ev in sent
        ]
        if len(futures) == 1:
            await futures[0]  # the common case: no gather around one future
        elif futures:
            await asyncio.gather(*futures)
        for topic, _ in sent:
            metrics.EVENTS_EMITTED.labels(topic).inc()

    async def send_raw(
        self, topic: str, value: bytes | None, *, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        await self._producer.send_and_wait(topic, value, key=key, headers=headers)
        metrics.EVENTS_EMITTED.labels(topic).inc()
