"""analysis: generation.accepted → generation.analyzed (tone, audience, visuals, brand rules)."""

from reelstream import status
from reelstream.runtime import Context, Stage
from schemas import topics
from schemas.events import GenerationAccepted, GenerationAnalyzed
from stages.analysis.llm import analyze


async def handle(ctx: Context[GenerationAccepted]) -> None:
    if not await status.advance(ctx, "analyzing"):
        return
    request = ctx.data.request
    analysis = await analyze(request, ctx.deps.settings, ctx.conn)
    await ctx.conn.execute(
        "UPDATE generations SET analysis = $2, updated_at = now() WHERE id = $1",
        ctx.generation_id,
        analysis.model_dump(mode="json"),
    )
    ctx.emit(
        topics.GENERATION_ANALYZED,
        GenerationAnalyzed(generation_id=ctx.generation_id, request=request, analysis=analysis),
    )


stage = Stage(name="analysis", topics=[topics.GENERATION_ACCEPTED], handler=handle)
