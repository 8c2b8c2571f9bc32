"""Topic names, in one place. Every message is keyed by generation id."""

from typing import Final

GENERATION_REQUESTED: Final = "generation.requested"
GENERATION_ACCEPTED: Final = "generation.accepted"
GENERATION_ANALYZED: Final = "generation.analyzed"
GENERATION_PLANNED: Final = "generation.planned"
GENERATION_PROMPTED: Final = "generation.prompted"
CLIP_SUBMITTED: Final = "clip.submitted"
CLIP_COMPLETED: Final = "clip.completed"
GENERATION_COMPLETED: Final = "generation.completed"
GENERATION_FAILED: Final = "generation.failed"
GENERATION_STATUS: Final = "generation.status"

ALL: Final = (
    GENERATION_REQUESTED,
    GENERATION_ACCEPTED,
    GENERATION_ANALYZED,
    GENERATION_PLANNED,
    GENERATION_PROMPTED,
    CLIP_SUBMITTED,
    CLIP_COMPLETED,
    GENERATION_COMPLETED,
    GENERATION_FAILED,
    GENERATION_STATUS,
)


def dlq(topic: str) -> str:
    """Where poison messages of ``topic`` go, with the error and the original bytes."""
    return f"{topic}.dlq"


def event_type(topic: str) -> str:
    """The CloudEvents ``type`` of an event on ``topic``."""
    return f"reelstream.{topic}"
