"""Log formatting, set up once per process: text for people, or one JSON object per line for machines.

``REELSTREAM_LOG_FORMAT=json`` makes every line ``{"time", "level", "logger", "message", ...}`` plus
``generation_id``, ``stage``, ``event_id`` and ``prediction_id`` where known, so one
``grep gen_...`` (or a query in a log store) follows a job through every process. Those come from
context variables: the stage runtime sets them per event, the gateway per request and webhook; each
asyncio task has its own copy, so concurrent events never mix them up. ``trace_id`` is added when a trace
is current, to jump from a log line to its trace.

Nothing secret reaches a log line: :func:`redact` removes API keys, tokens and webhook secrets from the
message (query strings included) in both formats.

A line is formatted where it is logged (the job's ids are the calling task's context variables) and
written to stderr by a thread of its own (:class:`logging.handlers.QueueListener`): under ``serve``
stderr is a pipe the supervisor reads, and an event loop must never wait for a pipe to drain.
"""

import atexit
import json
import logging
import logging.handlers
import queue
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

generation_id: ContextVar[str | None] = ContextVar("generation_id", default=None)
stage: ContextVar[str | None] = ContextVar("stage", default=None)
event_id: ContextVar[str | None] = ContextVar("event_id", default=None)
prediction_id: ContextVar[str | None] = ContextVar("prediction_id", default=None)

_FIELDS = {
    "generation_id": generation_id,
    "stage": stage,
    "event_id": event_id,
    "prediction_id": prediction_id,
}

#: ``api_key=...``, ``token: ...``, ``Authorization: Bearer ...``, and secrets by their shape
#: (``whsec_...`` signing secrets, ``r8_...`` Replicate tokens, ``sk-...`` OpenAI keys).
_SECRETS = re.compile(
    r"(?i)((?:api[_-]?key|token|secret|password|authorization)[\"']?\s*[=:]\s*[\"']?(?:bearer\s+)?)"
    r"[^\s&\"',;]+"
    r"|\bwhsec_[A-Za-z0-9+/=]+|\br8_[A-Za-z0-9]+|\bsk-[A-Za-z0-9_-]{8,}"
)


def redact(text: str) -> str:
    """``text`` with every credential it carries replaced by ``[redacted]``."""
    return _SECRETS.sub(lambda m: (m.group(1) or "") + "[redacted]", text)


def context_fields() -> dict[str, str]:
    """The job identifiers known where the caller runs (the log line's context)."""
    return {name: value for name, var in _FIELDS.items() if (value := var.get()) is not None}


def bind(**fields: str | None) -> None:
    """Set job identifiers for the rest of the current task (``bind(generation_id=..., stage=...)``)."""
    for name, value in fields.items():
        _FIELDS[name].set(value)


def _trace_id() -> str | None:
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (RFC 3339, UTC), ``level``, ``logger``, ``message``, the job's
    identifiers, ``trace_id`` when traced, and ``exception`` with the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        line.update(context_fields())
        trace_id = _trace_id()
        if trace_id is not None:
            line["trace_id"] = trace_id
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The familiar ``time LEVEL logger: message``, with the generation appended where known."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = redact(super().format(record))
        known = generation_id.get()
        if known is not None and known not in text:
            text += f" [{known}]"
        return text


Format = Literal["json", "text"]


#: The thread writing this process's log lines (one per process; replaced when set up again).
_writer: logging.handlers.QueueListener | None = None


def setup(level: str = "INFO", log_format: Format | None = None) -> None:
    """Configure the root logger once for this process (stderr). ``None``: text.

    Lines are queued and written by a thread; what is queued when the process exits is written then.
    """
    global _writer
    if _writer is not None:
        _writer.stop()
    lines: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    out = logging.StreamHandler(sys.stderr)
    out.setFormatter(logging.Formatter("%(message)s"))  # formatted already, by the queueing handler
    _writer = logging.handlers.QueueListener(lines, out)
    _writer.start()
    handler = logging.handlers.QueueHandler(lines)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    # One line per HTTP request the provider and LLM clients make: our own line says what each was for.
    logging.getLogger("httpx").setLevel(logging.WARNING)


@atexit.register
def _flush() -> None:
    if _writer is not None:
        _writer.stop()
