"""The CloudEvents 1.0 envelope (structured JSON mode) that every topic carries."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


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
