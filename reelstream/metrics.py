"""Prometheus metrics, every one named ``reelstream_*``; each process serves its own ``/metrics``.

Everything lives in :data:`REGISTRY`, the project's own registry, never prometheus-client's default one:
that one carries ``python_*``, ``process_*`` and ``gc`` series, and the contract says every metric is
ours. The process's CPU, memory and file descriptors are re-exported under the prefix
(``reelstream_process_*``) because an operator wants them beside the pipeline's.

A process serves what *it* did: a stage process its events, a gateway its requests and webhooks. The
scraper (Prometheus) tells processes apart by target; the dashboard sums across them.
"""

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(namespace="reelstream", registry=REGISTRY)

#: Seconds buckets from a fast handler (milliseconds) to a slow assembly or render (minutes).
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
#: A whole generation: seconds (the local renderer) to an hour (Replicate under load).
_GENERATION_SECONDS = (5, 10, 20, 30, 60, 120, 180, 300, 600, 900, 1800, 3600)

EVENTS_HANDLED = Counter(
    "reelstream_events_handled_total",
    "Events consumed by a stage, by outcome (handled, duplicate, dead_lettered)",
    ["stage", "topic", "outcome"],
    registry=REGISTRY,
)
EVENTS_EMITTED = Counter(
    "reelstream_events_emitted_total",
    "Events this process published (acknowledged by the broker), by topic",
    ["topic"],
    registry=REGISTRY,
)
HANDLER_SECONDS = Histogram(
    "reelstream_handler_seconds",
    "Time to handle one event, retries included",
    ["stage"],
    buckets=_SECONDS,
    registry=REGISTRY,
)
ERRORS = Counter(
    "reelstream_errors_total",
    "Failures while handling an event, by kind: transient (retried), error (retried a few times),"
    " permanent, undecodable",
    ["stage", "kind"],
    registry=REGISTRY,
)
RETRIES = Counter(
    "reelstream_transient_retries_total", "Transient failures retried", ["stage"], registry=REGISTRY
)
DEAD_LETTERED = Counter(
    "reelstream_dead_lettered_total", "Messages sent to a DLQ", ["stage", "topic"], registry=REGISTRY
)
TRANSITIONS = Counter(
    "reelstream_transitions_total",
    "Crossfades between finished clips, by when they were made: as soon as both clips were finished"
    " (early) or by the join after the last clip (at_join).",
    ["when"],
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "reelstream_consumer_lag",
    "Messages on a partition not yet committed by the stage (high watermark minus committed offset)",
    ["stage", "topic", "partition"],
    registry=REGISTRY,
)
HTTP_REQUESTS = Counter(
    "reelstream_http_requests_total", "Gateway requests", ["method", "route", "status"], registry=REGISTRY
)
HTTP_SECONDS = Histogram(
    "reelstream_http_request_seconds",
    "Gateway request latency by route template and status",
    ["method", "route", "status"],
    buckets=_SECONDS,
    registry=REGISTRY,
)
WEBSOCKETS = Gauge("reelstream_websocket_connections", "Open WebSocket connections", registry=REGISTRY)
WEBHOOKS = Counter(
    "reelstream_webhooks_total",
    "Provider webhooks received, by outcome (accepted, duplicate, ignored; rejected: unauthorized,"
    " invalid, unknown; unavailable)",
    ["outcome"],
    registry=REGISTRY,
)
GENERATIONS = Counter(
    "reelstream_generations_total", "Generations that ended, by status", ["status"], registry=REGISTRY
)
GENERATIONS_IN_PROGRESS = Gauge(
    "reelstream_generations_in_progress",
    "Generations in each unfinished status now, counted in Postgres by the intake stage (census.py)",
    ["status"],
    registry=REGISTRY,
)
GENERATION_SECONDS = Histogram(
    "reelstream_generation_duration_seconds",
    "From the order (created_at) to its end, by the status it ended in",
    ["status"],
    buckets=_GENERATION_SECONDS,
    registry=REGISTRY,
)
CLIPS_RENDERED = Counter(
    "reelstream_clips_rendered_total",
    "Clips rendered by the local provider",
    ["outcome"],
    registry=REGISTRY,
)
PREDICTIONS_POLLED = Counter(
    "reelstream_predictions_polled_total",
    "Predictions asked after because their webhook was late, by what the poll found",
    ["outcome"],
    registry=REGISTRY,
)
PROVIDER_CALLS = Counter(
    "reelstream_provider_calls_total",
    "Calls to the video provider",
    ["provider", "call", "outcome"],
    registry=REGISTRY,
)
PROVIDER_SECONDS = Histogram(
    "reelstream_provider_call_seconds",
    "Latency of one call to the video provider (create, get, cancel, find)",
    ["provider", "call"],
    buckets=_SECONDS,
    registry=REGISTRY,
)
PREDICTIONS = Counter(
    "reelstream_predictions_total",
    "Terminal prediction outcomes recorded, by provider and status",
    ["provider", "status"],
    registry=REGISTRY,
)
PREDICTION_SECONDS = Counter(
    "reelstream_prediction_compute_seconds_total",
    "Compute seconds providers reported for finished predictions (``metrics.predict_time``)",
    ["provider"],
    registry=REGISTRY,
)
PREDICTION_COST = Counter(
    "reelstream_prediction_cost_usd_total",
    "Estimated spend on finished predictions, at the configured model's price per clip",
    ["provider"],
    registry=REGISTRY,
)
RECONCILER_ACTIONS = Counter(
    "reelstream_reconciler_actions_total",
    "What the sweeps that drive work on from Postgres did, by action (requested, last_step, prompted,"
    " outcome, nothing: the reconciler; clips_driven, predictions_canceled: the clips stage)",
    ["action"],
    registry=REGISTRY,
)
RETENTION_DELETED = Counter(
    "reelstream_retention_deleted_total",
    "Rows deleted by retention, past their window",
    ["table"],
    registry=REGISTRY,
)
DB_QUERIES = Counter(
    "reelstream_db_queries_total",
    "Round trips to Postgres (BEGIN and COMMIT included), by the stage handling an event, else other",
    ["caller"],
    registry=REGISTRY,
)

# Series that exist from the start at 0, so a dashboard shows "none yet" rather than "no data".
for _status in ("completed", "failed", "canceled"):
    GENERATIONS.labels(_status)


def exposition() -> tuple[bytes, str]:
    """The body and content type of a ``/metrics`` answer: this process's series, ours only."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


@asynccontextmanager
async def provider_call(provider: str, call: str, *, count: bool = True) -> AsyncIterator[None]:
    """Time and count one call to the video provider, and trace it as a span of its own.

    Failures are counted (outcome ``error``) and re-raised unchanged. ``count=False`` where the caller
    counts the outcome in more detail itself (Replicate's create: created, throttled, adopted, ...).
    """
    from reelstream import tracing  # here: tracing imports nothing of ours but keeps this module light

    started = time.monotonic()
    outcome = "ok"
    with tracing.span(f"provider {call}", attributes={"provider": provider, "call": call}):
        try:
            yield
        except BaseException:
            outcome = "error"
            raise
        finally:
            PROVIDER_SECONDS.labels(provider, call).observe(time.monotonic() - started)
            if count:
                PROVIDER_CALLS.labels(provider, call, outcome).inc()


def prediction_finished(provider: str, status: str, predict_time: object, usd_per_second: float) -> None:
    """Count a terminal prediction once: its compute seconds, and what they cost at the model's price."""
    PREDICTIONS.labels(provider, status).inc()
    seconds = predict_time if isinstance(predict_time, int | float) and predict_time > 0 else 0.0
    PREDICTION_SECONDS.labels(provider).inc(float(seconds))
    PREDICTION_COST.labels(provider).inc(float(seconds) * usd_per_second)
