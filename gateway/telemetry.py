"""Per request: a trace span and the log context, before anything else runs.

Outermost middleware. The span continues an incoming W3C ``traceparent`` header (a client's trace), so
a POST's ``generation.requested`` carries it on (:func:`reelstream.events.make_event` stamps the current
span) and the whole generation joins the caller's trace. Requests about one generation put its id in
the log context, so their log lines carry ``generation_id`` like the stages' do.

With tracing off (no ``OTEL_EXPORTER_OTLP_ENDPOINT``) and no ``traceparent`` header the span would be
the API's invalid no-op span, which changes nothing a handler does or publishes; the request skips it.
Opening it anyway (the tracer looked up through the environment, two context managers, the context
attached and detached) was a tenth of the accept path's CPU.
"""

from collections.abc import Awaitable, Callable

from aiohttp import web
from opentelemetry.trace import SpanKind

from gateway.errors import route_template
from reelstream import logs, tracing

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def exporting() -> bool:
    """Whether this process installed the tracing SDK (:func:`reelstream.tracing.setup`)."""
    return bool(tracing._configured)


@web.middleware
async def telemetry_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    generation_id = request.match_info.get("generation_id")
    if generation_id is not None:
        logs.bind(generation_id=generation_id)
    traceparent = request.headers.get("traceparent")
    if traceparent is None and not exporting():
        return await handler(request)
    route = route_template(request)
    with tracing.span(
        f"{request.method} {route}",
        traceparent=traceparent,
        kind=SpanKind.SERVER,
        attributes={"http.request.method": request.method, "http.route": route},
    ) as span:
        response = await handler(request)
        span.set_attribute("http.response.status_code", response.status)
        return response
