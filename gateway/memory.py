"""What this gateway remembers of recent generations, to answer reads while Postgres is unreachable.

Orders keep being accepted while the database is down (the request goes to ``generation.requested``
and intake writes the row later), so a client that just got its 202 must be able to read its
generation back. The gateway knows the requests it accepted itself, the ones it sees on
``generation.requested`` (accepted by any instance: a load balancer may send the read elsewhere) and
the last status of each on ``generation.status`` (which it reads for the WebSockets anyway). That is
enough for a valid detail, with nulls where it knows nothing. A status without its request is not:
such an id is answered like one never seen.

Bounded: a least-recently-used map of ``gateway_memory_size`` ids. Postgres stays the source of truth;
this is only ever read when Postgres cannot answer (or does not have the row yet).
"""

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from aiohttp import web

from schemas.api import TERMINAL, GenerationDetail, GenerationRequest, Progress, status_rank
from schemas.events import GenerationRequested, GenerationStatusChanged


@dataclass
class Known:
    """One generation as far as this process knows it.

    The request is kept as its JSON (a fifth of the model's memory: 4,096 remembered orders took 15 MB
    as models) and parsed again only when a read needs it, which is only while Postgres cannot answer.
    """

    request_json: bytes | None = None
    created_at: datetime | None = None
    #: Fingerprint of the API key that created it (``gateway.auth.owner_of``); None when keyless.
    owner: str | None = None
    status: GenerationStatusChanged | None = None

    @property
    def request(self) -> GenerationRequest | None:
        if self.request_json is None:
            return None
        return GenerationRequest.model_validate_json(self.request_json)

    def remember(self, request: GenerationRequest) -> None:
        self.request_json = request.model_dump_json().encode()


def _moves_forward(old: GenerationStatusChanged | None, new: GenerationStatusChanged) -> bool:
    """Statuses only move forward (events of different stages may arrive out of order)."""
    if old is None:
        return True
    if old.status in TERMINAL:
        return False
    if status_rank(new.status) != status_rank(old.status):
        return status_rank(new.status) > status_rank(old.status)
    return new.progress.percent >= old.progress.percent


class RecentGenerations:
    """An LRU of :class:`Known` by generation id; every update makes an id the most recent."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Known] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def _entry(self, generation_id: str) -> Known:
        known = self._items.get(generation_id)
        if known is None:
            known = self._items[generation_id] = Known()
        self._items.move_to_end(generation_id)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return known

    def accepted(
        self, generation_id: str, request: GenerationRequest, created_at: datetime, owner: str | None
    ) -> None:
        """A request this process answered 202 for."""
        if self.capacity <= 0:
            return
        known = self._entry(generation_id)
        known.remember(request)
        known.created_at, known.owner = created_at, owner

    def has_request(self, generation_id: str) -> bool:
        """Whether the request of ``generation_id`` is known already (say, this process accepted it)."""
        known = self._items.get(generation_id)
        return known is not None and known.request_json is not None

    def requested(self, event: GenerationRequested) -> None:
        """A request seen on ``generation.requested`` (ours or another instance's)."""
        if self.capacity <= 0:
            return
        known = self._entry(event.generation_id)
        if known.request_json is None:
            known.remember(event.request)
            known.created_at, known.owner = event.requested_at, event.owner

    def status_seen(self, event: GenerationStatusChanged) -> None:
        if self.capacity <= 0:
            return
        known = self._entry(event.generation_id)
        if _moves_forward(known.status, event):
            known.status = event

    def waiting_for_row(self, generation_id: str) -> bool:
        """Accepted but not yet moved on by any stage: Postgres may simply not have its row yet."""
        known = self._items.get(generation_id)
        return known is not None and known.request_json is not None and known.status is None

    def detail(
        self, generation_id: str, *, caller: str | None, keys_required: bool
    ) -> GenerationDetail | None:
        """The detail from memory, or None when the request is unknown or may not be shown to ``caller``.

        With API keys configured only the key that created it may read it (the request on the topic
        carries its owner's fingerprint); one without an owner is not shown rather than shown to the
        wrong client.
        """
        known = self._items.get(generation_id)
        if known is None or known.request_json is None or known.created_at is None:
            return None
        if keys_required and (known.owner is None or known.owner != caller):
            return None
        self._items.move_to_end(generation_id)
        req, last = known.request, known.status
        assert req is not None
        return GenerationDetail(
            generation_id=generation_id,
            status=last.status if last else "queued",
            prompt=req.prompt,
            duration_seconds=req.duration_seconds,
            aspect_ratio=req.aspect_ratio,
            brand=req.brand,
            options=req.options,
            created_at=known.created_at,
            updated_at=last.at if last else known.created_at,
            progress=last.progress if last else Progress(stage="queued", percent=0),
        )


RECENT = web.AppKey("reelstream_recent_generations", RecentGenerations)
