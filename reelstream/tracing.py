"""Traces: one generation is one trace, from the POST through every stage and the webhooks.

The W3C ``traceparent`` travels as a CloudEvents extension attribute (``CloudEvent.traceparent``):
:func:`reelstream.events.make_event` stamps every event with the span current where it is made, and the
stage runtime opens one span per handler as a child of the event's ``traceparent``. The gateway does
the same per request (honouring an incoming ``traceparent`` header) and, for a provider webhook, under
the span that submitted the prediction (its ``traceparent`` is kept with the prediction in Postgres).

Spans are exported over OTLP/HTTP only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (the standard
``OTEL_*`` variables configure the exporter). Otherwise no SDK is installed and the OpenTelemetry API
is a no-op: a span costs a context switch, and the incoming ``traceparent`` is still passed on, so a
trace started upstream is not broken by a process that does not export.
"""

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context, trace
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)

_PROPAGATOR = TraceContextTextMapPropagator()
_TRACER_NAME = "reelstream"
_configured = False


def setup(service_name: str, *, exporter: Any = None) -> bool:
    """Install the SDK for this process when there is somewhere to send spans; True if it did.

    ``exporter`` (tests: an in-memory one) is used instead of OTLP. Safe to call more than once: the
    first provider stays, later exporters are added to it.
    """
    global _configured
    if exporter is None and not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processor: Any = BatchSpanProcessor(OTLPSpanExporter())
    else:
        processor = SimpleSpanProcessor(exporter)
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider(
            resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
        )
        trace.set_tracer_provider(provider)
    provider.add_span_processor(processor)
    _configured = True
    log.info("tracing on: spans of %s exported", service_name)
    return True


def shutdown() -> None:
    """Flush what is buffered (a stopping process must not lose its last spans)."""
    provider = trace.get_tracer_provider()
    stop = getattr(provider, "shutdown", None)
    if _configured and callable(stop):
        stop()


def current_traceparent() -> str | None:
    """The ``traceparent`` of the span current here, or None outside any trace."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def _parent(traceparent: str | None) -> context.Context | None:
    """The context a ``traceparent`` names; a malformed one (anyone may produce to a topic) is ignored."""
    if not traceparent:
        return None
    extracted = _PROPAGATOR.extract({"traceparent": traceparent})
    if not trace.get_current_span(extracted).get_span_context().is_valid:
        return None
    return extracted


@contextmanager
def span(
    name: str,
    *,
    traceparent: str | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, str | int | float | bool] | None = None,
) -> Iterator[Span]:
    """A span named ``name``, current inside the block: a child of ``traceparent`` when given and valid,
    else of the current span. An exception escaping the block is recorded on it."""
    parent = _parent(traceparent)
    tracer = trace.get_tracer(_TRACER_NAME)
    with tracer.start_as_current_span(name, context=parent, kind=kind, attributes=attributes) as current:
        yield current
