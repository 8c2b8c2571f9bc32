"""Event payloads: the ``data`` of the CloudEvent on each topic.

Each event carries what the next stage needs, so a stage can be replayed from its topic alone;
Postgres holds the same facts for the API.
"""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from schemas import topics
from schemas.api import (
    Analysis,
    AspectRatio,
    ErrorInfo,
    GenerationRequest,
    GenerationStatus,
    Progress,
    Scene,
    SceneKind,
    Video,
)


class Event(BaseModel):
    """Base of every payload: the generation it is about (also the Kafka key)."""

    generation_id: str


class GenerationRequested(Event):
    request: GenerationRequest
    requested_at: datetime
    #: Fingerprint (sha256) of the API key that ordered it, never the key; None when keys are off.
    owner: str | None = None


class GenerationAccepted(Event):
    request: GenerationRequest


class GenerationAnalyzed(Event):
    request: GenerationRequest
    analysis: Analysis


class ClipPlan(BaseModel):
    clip_id: str
    scene_id: str
    scene_kind: SceneKind
    index: int
    start_seconds: float
    duration_seconds: float


class GenerationPlanned(Event):
    request: GenerationRequest
    analysis: Analysis
    scenes: list[Scene]
    clips: list[ClipPlan]


class ClipSpec(BaseModel):
    """Everything a video provider needs to render one clip."""

    clip_id: str
    scene_id: str
    scene_kind: SceneKind
    index: int
    duration_seconds: float
    aspect_ratio: AspectRatio
    width: int
    height: int
    prompt: str
    negative_prompt: str
    caption: str
    colors: list[str]
    seed: int | None = None


class GenerationPrompted(Event):
    request: GenerationRequest
    clips: list[ClipSpec]


class ClipSubmitted(Event):
    clip_id: str
    prediction_id: str
    attempt: int


class Prediction(BaseModel):
    """The parts of a Replicate prediction (webhook body or poll) that the pipeline reads.

    Parsed from raw JSON: the replicate client's own model rejects the ``aborted`` status.
    """

    id: str
    status: Literal["starting", "processing", "succeeded", "failed", "canceled", "aborted"]
    output: Any = None
    error: Any = None
    metrics: dict[str, Any] | None = None

    @property
    def output_url(self) -> str | None:
        out = self.output
        if isinstance(out, list):
            out = out[-1] if out else None
        return out if isinstance(out, str) else None

    @property
    def terminal(self) -> bool:
        return self.status in ("succeeded", "failed", "canceled", "aborted")


class ClipCompleted(Event):
    clip_id: str
    attempt: int
    prediction: Prediction
    webhook_id: str | None = None


class GenerationCompleted(Event):
    video: Video


class GenerationFailed(Event):
    error: ErrorInfo


class GenerationStatusChanged(Event):
    """``generation.status``: the WebSocket's ``status`` message without ``type``."""

    status: GenerationStatus
    progress: Progress
    at: datetime


#: topic → payload model, used to validate what a consumer reads.
PAYLOADS: dict[str, type[Event]] = {
    topics.GENERATION_REQUESTED: GenerationRequested,
    topics.GENERATION_ACCEPTED: GenerationAccepted,
    topics.GENERATION_ANALYZED: GenerationAnalyzed,
    topics.GENERATION_PLANNED: GenerationPlanned,
    topics.GENERATION_PROMPTED: GenerationPrompted,
    topics.CLIP_SUBMITTED: ClipSubmitted,
    topics.CLIP_COMPLETED: ClipCompleted,
    topics.GENERATION_COMPLETED: GenerationCompleted,
    topics.GENERATION_FAILED: GenerationFailed,
    topics.GENERATION_STATUS: GenerationStatusChanged,
}
