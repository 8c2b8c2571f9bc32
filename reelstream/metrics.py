"""Prometheus metrics, every one named ``reelstream_*``; each process serves its own ``/metrics``."""

from prometheus_client import Counter, Gauge, Histogram

EVENTS_HANDLED = Counter(
    "reelstream_events_handled_total", "Events handled by a stage", ["stage", "topic", "outcome"]
)
HANDLER_SECONDS = Histogram(
    "reelstream_handler_seconds", "Time to handle one event, retries included", ["stage"]
)
RETRIES = Counter("reelstream_transient_retries_total", "Transient failures retried", ["stage"])
DEAD_LETTERED = Counter("reelstream_dead_lettered_total", "Messages sent to a DLQ", ["stage", "topic"])
HTTP_REQUESTS = Counter("reelstream_http_requests_total", "Gateway requests", ["method", "route", "status"])
WEBSOCKETS = Gauge("reelstream_websocket_connections", "Open WebSocket connections")
WEBHOOKS = Counter("reelstream_webhooks_total", "Provider webhooks received", ["outcome"])
GENERATIONS = Counter("reelstream_generations_total", "Generations that ended", ["status"])
CLIPS_RENDERED = Counter(
    "reelstream_clips_rendered_total", "Clips rendered by the local provider", ["outcome"]
)
PREDICTIONS_POLLED = Counter(
    "reelstream_predictions_polled_total",
    "Predictions asked after because their webhook was late, by what the poll found",
    ["outcome"],
)
PROVIDER_CALLS = Counter(
    "reelstream_provider_calls_total", "Calls to the video provider", ["provider", "call", "outcome"]
)
RECONCILER_ACTIONS = Counter(
    "reelstream_reconciler_actions_total",
    "What the sweeps that drive work on from Postgres did, by action (requested, last_step, prompted,"
    " outcome, nothing: the reconciler; clips_driven, predictions_canceled: the clips stage)",
    ["action"],
)
RETENTION_DELETED = Counter(
    "reelstream_retention_deleted_total", "Rows deleted by retention, past their window", ["table"]
)
DB_QUERIES = Counter(
    "reelstream_db_queries_total",
    "Round trips to Postgres (BEGIN and COMMIT included), by the stage handling an event, else other",
    ["caller"],
)
