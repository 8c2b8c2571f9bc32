"""The CloudEvents 1.0 envelope (structured JSON mode) that every topic carries."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer


class CloudEvent(BaseModel):
    """One event on a topic. ``data`` is one of the models in :mod:`schemas.events`."""

    model_config = ConfigDict(extra="allow")

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(min_length=1)
    source: str = Field(min_length=1)
    type: str = Field(min_length=1)
    time: datetime
    subject: str = Field(min_length=1, description="The generation id; also the Kafka key.")
    datacontenttype: Literal["application/json"] = "application/json"
    data: dict[str, Any]
    #: W3C trace context of the span that made this event (CloudEvents distributed-tracing extension,
    #: a top-level lowercase attribute): consumers continue the trace from it. Absent outside a trace.
    #: Not validated beyond its length: a malformed value is ignored by the tracer, never a dead letter.
    traceparent: str | None = Field(default=None, max_length=256)

    @model_serializer(mode="wrap")
    def _absent_not_null(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """An event outside any trace has no ``traceparent`` attribute at all (CloudEvents has no null
        attributes), on the wire and wherever the envelope is stored."""
        data: dict[str, Any] = handler(self)
        if data.get("traceparent") is None:
            data.pop("traceparent", None)
        return data
