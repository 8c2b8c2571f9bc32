"""analysis: generation.accepted → generation.analyzed (tone, audience, visuals, brand rules).

The language model is called in ``prepare``, with no transaction open and no connection held (its
answers are cached by input, so a repeat after a crash pays nothing); ``record`` writes the analysis.
"""

from reelstream import status
from reelstream.runtime import Context, Stage
from schemas import topics
from schemas.api import STATUS_ORDER, TERMINAL, Analysis
from schemas.events import GenerationAccepted, GenerationAnalyzed
from stages.analysis.llm import analyze


async def prepare(ctx: Context[GenerationAccepted]) -> Analysis | None:
    async with ctx.transaction() as conn:
        current = await status.current(conn, ctx.generation_id)
        if current is None or current in TERMINAL:
            return None
        if STATUS_ORDER.index(current) > STATUS_ORDER.index("analyzing"):
            return None  # analysed already (a replay): nothing to redo
        await status.set_status(conn, ctx.generation_id, "analyzing", emit=ctx.emit)
    await ctx.flush()  # clients see "analyzing" while the model thinks
    return await analyze(ctx.data.request, ctx.deps.settings, ctx.pool)


async def record(ctx: Context[GenerationAccepted]) -> None:
    analysis: Analysis | None = ctx.prepared
    if analysis is None or await status.current(ctx.conn, ctx.generation_id) != "analyzing":
        return  # nothing to do, or canceled while the model was thinking
    await ctx.conn.execute(
        "UPDATE generations SET analysis = $2, updated_at = now() WHERE id = $1",
        ctx.generation_id,
        analysis.model_dump(mode="json"),
    )
    ctx.emit(
        topics.GENERATION_ANALYZED,
        GenerationAnalyzed(generation_id=ctx.generation_id, request=ctx.data.request, analysis=analysis),
    )


stage = Stage(name="analysis", topics=[topics.GENERATION_ACCEPTED], prepare=prepare, handler=record)
