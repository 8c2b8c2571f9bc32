"""Kafka plumbing shared by every process: topic creation and an acks=all producer of CloudEvents."""

import asyncio
import logging
import random
import struct
from collections.abc import Iterable, Sequence

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


_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 of ``data`` (the Java client's ``Utils.murmur2``), as aiokafka's own computes it.

    aiokafka's pure-Python version assembles every 4-byte word from single bytes and masks after each
    step; this reads the words in one ``struct`` call and masks only where the value can overflow:
    the same hash (``tests/reelstream``), a third of the CPU, on every event the producer sends.
    """
    length = len(data)
    h = 0x9747B28C ^ length
    words = length // 4
    for k in struct.unpack_from(f"<{words}I", data):
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length & 3
    if tail:
        base = length & ~3
        if tail >= 3:
            h ^= data[base + 2] << 16
        if tail >= 2:
            h ^= data[base + 1] << 8
        h ^= data[base]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_for(key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]) -> int:
    """aiokafka's default partitioner with :func:`murmur2`: a key lands where any Kafka client puts it."""
    if key is None:
        return random.choice(available or all_partitions)
    return all_partitions[(murmur2(key) & 0x7FFFFFFF) % len(all_partitions)]


class Producer:
    """CloudEvents keyed by generation id, acknowledged by all in-sync replicas before ``send`` returns."""

    def __init__(self, bootstrap: str) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=False,  # tansu does not support InitProducerId
            linger_ms=2,
            request_timeout_ms=15000,
            partitioner=partition_for,
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
