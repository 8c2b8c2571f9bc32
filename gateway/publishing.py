"""Publishing the gateway's events: CloudEvents from ``/reelstream/gateway``, bounded in time.

A request handler must answer even when the broker is gone, so every publish has a deadline and
any broker failure surfaces as :class:`PublishFailed`, which handlers turn into 503 ``unavailable``.
"""

import asyncio
from collections.abc import Sequence

from aiokafka.errors import KafkaError
from pydantic import BaseModel

from reelstream.events import make_event
from reelstream.kafka import Producer
from schemas.envelope import CloudEvent

SOURCE = "/reelstream/gateway"
#: Longer than a healthy acks=all round trip by orders of magnitude, short enough for an HTTP client.
PUBLISH_TIMEOUT_SECONDS = 10.0


class PublishFailed(Exception):
    """The broker did not acknowledge in time (or refused)."""


def gateway_event(topic: str, data: BaseModel, *, subject: str, event_id: str | None = None) -> CloudEvent:
    return make_event(topic, data, source=SOURCE, subject=subject, event_id=event_id)


async def publish(
    producer: Producer, events: Sequence[tuple[str, CloudEvent]], *, within: float = PUBLISH_TIMEOUT_SECONDS
) -> None:
    """Send and wait for every acknowledgement, or raise :class:`PublishFailed`."""
    try:
        async with asyncio.timeout(within):
            await producer.send_many(events)
    except (KafkaError, OSError, TimeoutError) as exc:
        raise PublishFailed(f"{type(exc).__name__}: {exc}") from exc
