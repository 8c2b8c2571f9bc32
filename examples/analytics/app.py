"""A downstream consumer of reelstream's topics: generation analytics in tumbling windows (faust-streaming).

It reads ``generation.status`` (every status change of every generation) and ``generation.completed``
(the finished videos), and keeps, in windowed tables:

* generations per minute by outcome (``completed``, ``failed``, ``canceled``);
* time to complete, p50 and p95 per day: from a generation's first status change (its analysis
  starting, moments after the order) to ``completed``;
* estimated cost per day: clips x the model's price per clip (``ANALYTICS_USD_PER_CLIP``);
* seconds of finished video per day.

Everything about one generation is read from ``generation.status`` alone: a topic is ordered per key
(the generation id), so when ``completed`` arrives every earlier status of that generation has been
seen, also when the app reads the topics from the beginning. Across topics there is no such order.

``GET /stats/`` on faust's web server shows them as JSON. Run it beside a stack::

    faust -A examples.analytics.app worker -l info --web-port 6066

Settings (environment): ``ANALYTICS_KAFKA_BOOTSTRAP`` (default: ``REELSTREAM_KAFKA_BOOTSTRAP``, else
``.reelstream/stack.json``'s broker), ``ANALYTICS_DATA_DIR`` (faust's state, default ``.analytics``),
``ANALYTICS_USD_PER_CLIP`` (default 0.05, wan-2.2-t2v-fast).

Every event is a CloudEvent (``schemas.envelope.CloudEvent``) whose ``data`` is the topic's model in
``schemas/``; the Kafka key is the generation id. Topics are delivered at least once: the app
de-duplicates by generation (a generation ends once, whatever repeats). Counts by outcome are
re-keyed through an internal topic (``reelstream-analytics-outcomes``), so each table is keyed by what
it counts and any number of workers can share the work.
"""

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import faust

from schemas import topics
from schemas.envelope import CloudEvent
from schemas.events import GenerationCompleted, GenerationStatusChanged


def _bootstrap() -> str:
    found = os.environ.get("ANALYTICS_KAFKA_BOOTSTRAP") or os.environ.get("REELSTREAM_KAFKA_BOOTSTRAP")
    if not found:
        stack = Path(os.environ.get("REELSTREAM_DATA_DIR", ".reelstream")) / "stack.json"
        found = json.loads(stack.read_text())["kafka_bootstrap"] if stack.exists() else "localhost:9092"
    return found


PARTITIONS = 4  # reelstream's topics have 4; a table's changelog must match its source topic's count
USD_PER_CLIP = float(os.environ.get("ANALYTICS_USD_PER_CLIP", "0.05"))
TERMINAL = ("completed", "failed", "canceled")

app = faust.App(
    "reelstream-analytics",
    broker=f"kafka://{_bootstrap()}",
    datadir=os.environ.get("ANALYTICS_DATA_DIR", ".analytics"),
    topic_partitions=PARTITIONS,
    # A 6 s session joins the group in ~3 s (faust's 60 s default waits a long time on some brokers).
    broker_session_timeout=6.0,
    broker_heartbeat_interval=1.0,
    processing_guarantee="at_least_once",
    web_enabled=True,
)


class Ended(faust.Record, serializer="json"):
    """One generation's end, re-keyed by its outcome for the windowed tables."""

    generation_id: str
    outcome: str
    seconds: float | None  # order to completion; None when unknown or not completed
    clips: int


statuses = app.topic(topics.GENERATION_STATUS, value_serializer="raw", partitions=PARTITIONS)
completed = app.topic(topics.GENERATION_COMPLETED, value_serializer="raw", partitions=PARTITIONS)
ends = app.topic("reelstream-analytics-outcomes", value_type=Ended, partitions=PARTITIONS, internal=True)

#: Per generation (keyed like the source topics): its first status change, its clips, whether it ended.
first_at = app.Table("first-at", default=float, partitions=PARTITIONS)
clips_of = app.Table("clips-of", default=int, partitions=PARTITIONS)
ended = app.Table("ended", default=str, partitions=PARTITIONS)

#: Per outcome, in windows of their own.
per_minute = app.Table("per-minute", default=int, partitions=PARTITIONS).tumbling(
    timedelta(minutes=1), expires=timedelta(days=1)
)
durations = app.Table("durations", default=list, partitions=PARTITIONS).tumbling(
    timedelta(days=1), expires=timedelta(days=30)
)
cost = app.Table("cost", default=float, partitions=PARTITIONS).tumbling(
    timedelta(days=1), expires=timedelta(days=30)
)
video_seconds = app.Table("video-seconds", default=float, partitions=PARTITIONS).tumbling(
    timedelta(days=1), expires=timedelta(days=30)
)


def _event(raw: bytes) -> CloudEvent | None:
    try:
        return CloudEvent.model_validate_json(raw)
    except ValueError:
        return None  # not ours to judge: a downstream consumer skips what it cannot read


async def _end(generation_id: str, outcome: str, at: datetime) -> None:
    """Record a generation's end once, and send it on to the per-outcome tables."""
    if ended[generation_id]:
        return
    ended[generation_id] = outcome
    started = first_at[generation_id]
    seconds = at.timestamp() - started if outcome == "completed" and started else None
    record = Ended(
        generation_id=generation_id, outcome=outcome, seconds=seconds, clips=clips_of[generation_id]
    )
    await ends.send(key=outcome, value=record)


@app.agent(statuses)
async def on_status(stream: Any) -> None:
    async for raw in stream:
        event = _event(raw)
        if event is None:
            continue
        change = GenerationStatusChanged.model_validate(event.data)
        if not first_at[event.subject]:
            first_at[event.subject] = change.at.timestamp()
        if change.progress.clips_total:
            clips_of[event.subject] = change.progress.clips_total
        if change.status in TERMINAL:
            await _end(event.subject, change.status, change.at)


@app.agent(completed)
async def on_completed(stream: Any) -> None:
    """Seconds of finished video per day; a repeated event (same id) is counted once."""
    async for raw in stream:
        event = _event(raw)
        if event is None or ended[f"video:{event.id}"]:
            continue
        ended[f"video:{event.id}"] = "counted"
        completion = GenerationCompleted.model_validate(event.data)
        video_seconds["video"] += completion.video.duration_seconds


@app.agent(ends)
async def on_end(stream: Any) -> None:
    async for end in stream:
        per_minute[end.outcome] += 1
        if end.seconds is not None:
            durations[end.outcome] = [*durations[end.outcome].current(), end.seconds]
        cost[end.outcome] += end.clips * USD_PER_CLIP


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank percentile (q in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100), at least the first
    return ordered[int(rank) - 1]


def _windows(table: Any) -> dict[str, dict[str, Any]]:
    """``{window start (RFC 3339): {key: value}}`` of a windowed table, oldest first."""
    found: dict[str, dict[str, Any]] = {}
    for (key, (start, _end)), value in sorted(table.table.items(), key=lambda item: item[0][1][0]):
        found.setdefault(datetime.fromtimestamp(start, UTC).isoformat(), {})[key] = value
    return found


@app.page("/stats/")
async def stats(web: Any, request: Any) -> Any:
    days = _windows(durations)
    return web.json(
        {
            "generations_per_minute": _windows(per_minute),
            "time_to_complete_seconds": {
                day: {
                    "p50": percentile(v.get("completed", []), 50),
                    "p95": percentile(v.get("completed", []), 95),
                }
                for day, v in days.items()
            },
            "cost_usd_per_day": {day: round(sum(v.values()), 6) for day, v in _windows(cost).items()},
            "video_seconds_per_day": {day: v["video"] for day, v in _windows(video_seconds).items()},
        }
    )


if __name__ == "__main__":
    app.main()
