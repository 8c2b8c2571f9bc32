"""Video providers: where clips are generated. Replicate in production, a local FFmpeg renderer by default.

Both answer through the same signed webhook, so everything downstream of ``create`` is one code path.
"""

import re
from datetime import datetime
from typing import Protocol

from reelstream.events import derive_id
from schemas import topics
from schemas.events import ClipSpec, Prediction

_MARKER_RE = re.compile(r"^(gen_[0-9a-f]{32})\.(clip_[0-9]{2,3})\.([0-9]{1,3})\Z")


class ProviderError(Exception):
    """The provider refused the request for good (bad input, unknown model)."""


class ProviderUnavailable(Exception):
    """The provider could not be reached or throttled us: retry later."""


def marker(generation_id: str, clip_id: str, attempt: int) -> str:
    """Our own tag for one submission, carried in the webhook URL: it survives a lost create response."""
    return f"{generation_id}.{clip_id}.{attempt}"


def parse_marker(value: str) -> tuple[str, str, int] | None:
    match = _MARKER_RE.fullmatch(value)
    if match is None:
        return None
    return match.group(1), match.group(2), int(match.group(3))


def outcome_event_id(prediction: Prediction) -> str:
    """The ``clip.completed`` id of a prediction's outcome, whether a webhook or a poll brought it.

    The same outcome of the same prediction is one fact, however many deliveries carry it: consumers
    deduplicate on this id.
    """
    return derive_id(prediction.id, topics.CLIP_COMPLETED, prediction.status)


def webhook_url(public_url: str, mark: str) -> str:
    return f"{public_url.rstrip('/')}/api/v1/webhooks/replicate?marker={mark}"


class VideoProvider(Protocol):
    name: str

    async def create(
        self, spec: ClipSpec, *, webhook_url: str, marker: str, since: datetime | None = None
    ) -> str:
        """Start a prediction; returns its id.

        ``since`` says an earlier try of this very submission (same ``marker``, recorded as an intent at
        ``since``) may have reached the provider before we crashed or lost the answer: look for its
        prediction, made at ``since`` or later, before paying for another.
        """
        ...

    async def find(self, marker: str, since: datetime) -> str | None:
        """The prediction a create for ``marker`` made at ``since`` or later, if any (never by input)."""
        ...

    async def get(self, prediction_id: str) -> Prediction: ...

    async def cancel(self, prediction_id: str) -> None: ...

    async def close(self) -> None: ...
