"""intake: generation.requested → generation.accepted.

The gateway already wrote the row so clients never see a 404; intake makes the record durable for any
other producer or a replay, applies the business rules the schema cannot express, and accepts.
"""

from reelstream import callbacks, census, reconcile, retention, status
from reelstream.runtime import Context, Stage
from schemas import topics
from schemas.api import TERMINAL, GenerationRequest
from schemas.events import GenerationAccepted, GenerationRequested


def business_problems(request: GenerationRequest) -> list[str]:
    """Requests that validate but contradict themselves: rejected with a message that says why."""
    problems: list[str] = []
    brand = request.brand
    avoided = {w.lower() for w in brand.guidelines.dont} if brand else set()
    words = [w.strip(".,!?;:\"'()").lower() for w in request.prompt.split()]
    meaningful = [w for w in words if w and w not in avoided]
    if avoided and not meaningful:
        problems.append("the prompt consists only of words the brand guidelines forbid")
    cta = request.options.cta_text
    if cta and avoided & {w.strip(".,!?;:\"'()").lower() for w in cta.split()}:
        problems.append("options.cta_text uses a word the brand guidelines forbid")
    return problems


async def handle(ctx: Context[GenerationRequested]) -> None:
    request = ctx.data.request
    await ctx.conn.execute(
        "INSERT INTO generations"
        " (id, prompt, duration_seconds, aspect_ratio, brand, options, created_at, owner)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING",
        ctx.generation_id,
        request.prompt,
        request.duration_seconds,
        request.aspect_ratio,
        request.brand.model_dump(mode="json") if request.brand else None,
        request.options.model_dump(mode="json"),
        ctx.data.requested_at,
        ctx.data.owner,
    )
    if await status.current(ctx.conn, ctx.generation_id) in TERMINAL:
        return  # canceled before we got to it
    problems = business_problems(request)
    if problems:
        await status.fail(ctx, "rejected", "; ".join(problems))
        return
    ctx.emit(topics.GENERATION_ACCEPTED, GenerationAccepted(generation_id=ctx.generation_id, request=request))


#: The reconciler, retention and callback delivery run here, so that one process type runs them. Every
#: replica may: they take their rows with SKIP LOCKED, so replicas share the work instead of doubling it.
stage = Stage(
    name="intake",
    topics=[topics.GENERATION_REQUESTED],
    handler=handle,
    sweeps=[reconcile.sweep, retention.sweep, callbacks.sweep, census.sweep],
)
