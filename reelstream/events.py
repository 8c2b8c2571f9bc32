"""CloudEvents on Kafka: building, encoding and decoding envelopes, and deterministic event ids."""

import json
import uuid
from datetime import UTC, datetime

from pydantic import BaseModel

from reelstream.tracing import current_traceparent
from schemas.envelope import CloudEvent
from schemas.topics import event_type

_NAMESPACE = uuid.UUID("6f1c3a52-2d2b-4d8e-9a57-7265656c7374")


def new_id() -> str:
    return str(uuid.uuid4())


def derive_id(parent_id: str, *parts: str) -> str:
    """An id that depends only on its inputs, so a redelivered event re-emits the very same ids."""
    return str(uuid.uuid5(_NAMESPACE, "/".join((parent_id, *parts))))


def now() -> datetime:
    return datetime.now(UTC)


def make_event(
    topic: str, data: BaseModel, *, source: str, subject: str, event_id: str | None = None
) -> CloudEvent:
    return CloudEvent(
        id=event_id or new_id(),
        source=source,
        type=event_type(topic),
        time=now(),
        subject=subject,
        data=data.model_dump(mode="json"),
        traceparent=current_traceparent(),
    )


def encode(event: CloudEvent) -> bytes:
    return event.model_dump_json().encode()


def decode(raw: bytes | None) -> CloudEvent:
    """Parse an envelope; raises ValueError (or pydantic's ValidationError) on anything else."""
    if raw is None:
        raise ValueError("message has no value")
    return CloudEvent.model_validate(json.loads(raw))
