"""Per request: a trace span and the log context, before anything else runs.

Outermost middleware. The span continues an incoming W3C ``traceparent`` header (a client's trace), so
a POST's ``generation.requested`` carries it on (:func:`reelstream.events.make_event` stamps the current
span) and the whole generation joins the caller's trace. Requests about one generation put its id in
the log context, so their log lines carry ``generation_id`` like the stages' do.
"""

from collections.abc import Awaitable, Callable

from aiohttp import web
from opentelemetry.trace import SpanKind

from gateway.errors import route_template
from reelstream import logs, tracing

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def telemetry_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    generation_id = request.match_info.get("generation_id")
    if generation_id is not None:
        logs.bind(generation_id=generation_id)
    route = route_template(request)
    with tracing.span(
        f"{request.method} {route}",
        traceparent=request.headers.get("traceparent"),
        kind=SpanKind.SERVER,
        attributes={"http.request.method": request.method, "http.route": route},
    ) as span:
        response = await handler(request)
        span.set_attribute("http.response.status_code", response.status)
        return response
