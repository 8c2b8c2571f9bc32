"""planning: generation.analyzed → generation.planned (scenes, and clips no longer than the provider's)."""

from reelstream import status
from reelstream.runtime import Context, Stage
from schemas import topics
from schemas.events import GenerationAnalyzed, GenerationPlanned
from stages.planning.plan import plan_scenes


async def handle(ctx: Context[GenerationAnalyzed]) -> None:
    request, analysis = ctx.data.request, ctx.data.analysis
    scenes, clips = plan_scenes(request, analysis, clip_seconds=ctx.deps.settings.clip_seconds)
    if not await status.advance(ctx, "planning", scenes=[s.model_dump(mode="json") for s in scenes]):
        return
    await ctx.conn.executemany(
        "INSERT INTO clips (generation_id, clip_id, scene_id, idx, duration_seconds)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        [(ctx.generation_id, c.clip_id, c.scene_id, c.index, c.duration_seconds) for c in clips],
    )
    ctx.emit(
        topics.GENERATION_PLANNED,
        GenerationPlanned(
            generation_id=ctx.generation_id, request=request, analysis=analysis, scenes=scenes, clips=clips
        ),
    )


stage = Stage(name="planning", topics=[topics.GENERATION_ANALYZED], handler=handle)
