"""prompting: generation.planned → generation.prompted (one text-to-video prompt per clip)."""

from reelstream import status
from reelstream.runtime import Context, Stage
from schemas import topics
from schemas.events import GenerationPlanned, GenerationPrompted
from stages.prompting.build import build_clip_specs


async def handle(ctx: Context[GenerationPlanned]) -> None:
    if not await status.advance(ctx, "prompting"):
        return
    data = ctx.data
    specs = build_clip_specs(data.request, data.analysis, data.scenes, data.clips)
    await ctx.conn.executemany(
        "UPDATE clips SET prompt = $3, negative_prompt = $4, spec = $5, updated_at = now()"
        " WHERE generation_id = $1 AND clip_id = $2",
        [
            (ctx.generation_id, s.clip_id, s.prompt, s.negative_prompt, s.model_dump(mode="json"))
            for s in specs
        ],
    )
    ctx.emit(
        topics.GENERATION_PROMPTED,
        GenerationPrompted(generation_id=ctx.generation_id, request=data.request, clips=specs),
    )


stage = Stage(name="prompting", topics=[topics.GENERATION_PLANNED], handler=handle)
