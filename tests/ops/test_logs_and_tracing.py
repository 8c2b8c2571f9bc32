"""The log formats and the trace plumbing on their own (fast; a whole run: test_observability.py)."""

import asyncio
import io
import json
import logging

from reelstream import logs, tracing
from reelstream.events import encode, make_event
from schemas import topics
from schemas.api import ErrorInfo
from schemas.envelope import CloudEvent
from schemas.events import GenerationFailed


def _capture(log_format: logs.Format) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter() if log_format == "json" else logs.TextFormatter())
    logger = logging.getLogger(f"test.ops.{log_format}")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, out


def test_json_lines_carry_the_job_ids_of_their_own_task_only() -> None:
    logger, out = _capture("json")

    async def step(generation_id: str, stage: str) -> None:
        logs.bind(generation_id=generation_id, stage=stage, event_id=f"ev-{stage}")
        await asyncio.sleep(0)
        logger.info("handled %s", stage)

    async def main() -> None:
        await asyncio.gather(step("gen_a", "analysis"), step("gen_b", "planning"))
        logger.info("outside")

    asyncio.run(main())
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(x.get("generation_id"), x.get("stage"), x.get("event_id")) for x in lines] == [
        ("gen_a", "analysis", "ev-analysis"),
        ("gen_b", "planning", "ev-planning"),
        (None, None, None),
    ]
    assert {"time", "level", "logger", "message"} <= set(lines[0])
    assert lines[0]["message"] == "handled analysis"


def test_no_secret_reaches_a_line_in_either_format() -> None:
    secrets = ["key-123456", "r8_AbCdEf123456", "whsec_c2VjcmV0c2VjcmV0", "sk-proj-abcdefgh1234"]
    for log_format in ("json", "text"):
        logger, out = _capture(log_format)  # type: ignore[arg-type]
        logger.info("GET /ws/generations/gen_x?api_key=%s&x=1", secrets[0])
        logger.info("replicate token: %s, secret %s", secrets[1], secrets[2])
        logger.info("Authorization: Bearer %s", secrets[3])
        try:
            raise RuntimeError(f"failed with api_key={secrets[0]}")
        except RuntimeError:
            logger.exception("boom")
        text = out.getvalue()
        assert "[redacted]" in text
        assert not [s for s in secrets if s in text], (log_format, text)
        assert "gen_x" in text and "x=1" in text  # only the secret goes


def test_without_an_endpoint_tracing_is_off_yet_passes_a_trace_on() -> None:
    assert tracing.setup("test") is False  # no OTEL_EXPORTER_OTLP_ENDPOINT in the test environment
    assert tracing.current_traceparent() is None
    incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with tracing.span("handler", traceparent=incoming):
        event = make_event(
            topics.GENERATION_FAILED,
            GenerationFailed(generation_id="gen_x", error=ErrorInfo(code="internal", message="m")),
            source="/t",
            subject="gen_x",
        )
    assert event.traceparent is not None and event.traceparent.split("-")[1] == incoming.split("-")[1]
    assert json.loads(encode(event))["traceparent"] == event.traceparent  # a top-level attribute
    outside = make_event(topics.GENERATION_FAILED, event_data(event), source="/t", subject="gen_x")
    assert "traceparent" not in json.loads(encode(outside))  # absent, never null
    with tracing.span("handler", traceparent="garbage"):  # anyone may produce: ignored, not fatal
        assert tracing.current_traceparent() is None


def event_data(event: CloudEvent) -> GenerationFailed:
    return GenerationFailed.model_validate(event.data)
