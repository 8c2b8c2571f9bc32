"""How many generations are in each unfinished status right now, from Postgres (the truth).

A gauge (``reelstream_generations_in_progress{status}``) refreshed by a sweep of the intake stage: a
queue building up in one status (say ``generating``) shows on the dashboard before anyone complains.
Every intake replica sets the same numbers; the dashboard takes their ``max``.
"""

from typing import Any

from reelstream import metrics
from reelstream.runtime import Sweep, Sweeper
from schemas.api import STATUS_ORDER, TERMINAL

#: Seconds between counts: one indexed query, cheap next to the default 15 s Prometheus scrape.
EVERY_SECONDS = 15.0

_UNFINISHED = [s for s in STATUS_ORDER if s not in TERMINAL]


async def count(sweeper: Sweeper) -> None:
    """Set the gauge for every unfinished status (0 where there is none)."""
    rows = await sweeper.pool.fetch(
        "SELECT status, count(*) AS n FROM generations WHERE status = ANY($1::text[]) GROUP BY status",
        _UNFINISHED,
    )
    found = {row["status"]: row["n"] for row in rows}
    for status in _UNFINISHED:
        metrics.GENERATIONS_IN_PROGRESS.labels(status).set(found.get(status, 0))


def _every(_: Any) -> float:
    return EVERY_SECONDS


sweep = Sweep(name="census", run=count, every=_every, at_start=count)
