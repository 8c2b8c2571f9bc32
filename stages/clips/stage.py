"""clips: generation.prompted and clip.completed → clip.submitted.

Keeps a window of predictions in flight per generation (``clip_concurrency`` when ``parallel_clips``,
else one), refills it as outcomes arrive, and resubmits a failed clip until its attempts run out.
It reads clip.completed in its own consumer group only to learn that a slot came free. A prediction
whose webhook is late is polled (``poll.py``).
"""

from typing import Any

import asyncpg

from reelstream import mapping, status
from reelstream.providers import ProviderError, ProviderUnavailable, marker, webhook_url
from reelstream.runtime import Context, Stage, TransientError
from schemas import topics
from schemas.api import Options
from schemas.events import ClipCompleted, ClipSpec, ClipSubmitted, GenerationPrompted
from stages.clips.poll import sweep as poll_sweep


async def handle(ctx: Context[Any]) -> None:
    if isinstance(ctx.data, GenerationPrompted):
        if not await status.advance(ctx, "generating"):
            return
        options = ctx.data.request.options
    else:
        if await status.current(ctx.conn, ctx.generation_id) != "generating":
            return
        if not await _settle(ctx, ctx.data):
            return
        options = Options.model_validate(
            await ctx.conn.fetchval("SELECT options FROM generations WHERE id = $1", ctx.generation_id)
        )
    await _fill_window(ctx, ctx.deps.settings.clip_concurrency if options.parallel_clips else 1)


async def _settle(ctx: Context[Any], done: ClipCompleted) -> bool:
    """Record that this attempt's outcome is known; resubmit on failure while attempts remain."""
    clip = await _clip(ctx.conn, ctx.generation_id, done.clip_id)
    if clip is None or clip["settled"] or done.attempt < clip["attempts"]:
        return False  # unknown clip, repeated or stale outcome
    if done.attempt > clip["attempts"]:
        raise TransientError(f"{done.clip_id} attempt {done.attempt} is not recorded yet")
    await ctx.conn.execute(
        "UPDATE clips SET settled = true WHERE generation_id = $1 AND clip_id = $2",
        ctx.generation_id,
        done.clip_id,
    )
    if done.prediction.status != "succeeded" and done.attempt < ctx.deps.settings.clip_attempts:
        await _submit(ctx, clip, done.attempt + 1)
    return True


async def _fill_window(ctx: Context[Any], window: int) -> None:
    outstanding = await ctx.conn.fetchval(
        "SELECT count(*) FROM clips WHERE generation_id = $1 AND attempts > 0 AND NOT settled",
        ctx.generation_id,
    )
    free = window - outstanding
    if free <= 0:
        return
    for clip in await ctx.conn.fetch(
        "SELECT * FROM clips WHERE generation_id = $1 AND attempts = 0 ORDER BY idx LIMIT $2",
        ctx.generation_id,
        free,
    ):
        await _submit(ctx, clip, 1)


async def _submit(ctx: Context[Any], clip: asyncpg.Record, attempt: int) -> None:
    settings = ctx.deps.settings
    spec = ClipSpec.model_validate(clip["spec"])
    mark = marker(ctx.generation_id, spec.clip_id, attempt)
    try:
        prediction_id = await ctx.deps.provider.create(
            spec,
            webhook_url=webhook_url(settings.gateway_url, mark),
            marker=mark,
            retry=not await _first_try(ctx, mark),
        )
    except ProviderUnavailable as exc:
        raise TransientError(str(exc)) from exc
    except ProviderError as exc:
        await status.fail(ctx, "provider_rejected", f"{spec.clip_id}: {exc}")
        return
    await ctx.conn.execute(
        "UPDATE clips SET status = 'submitted', prediction_id = $3, attempts = $4, settled = false,"
        " updated_at = now() WHERE generation_id = $1 AND clip_id = $2",
        ctx.generation_id,
        spec.clip_id,
        prediction_id,
        attempt,
    )
    await ctx.conn.execute(
        "INSERT INTO predictions (prediction_id, generation_id, clip_id, attempt, provider)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        prediction_id,
        ctx.generation_id,
        spec.clip_id,
        attempt,
        ctx.deps.provider.name,
    )
    await mapping.remember(
        ctx.deps.redis, prediction_id, mapping.ClipRef(ctx.generation_id, spec.clip_id, attempt)
    )
    ctx.emit(
        topics.CLIP_SUBMITTED,
        ClipSubmitted(
            generation_id=ctx.generation_id,
            clip_id=spec.clip_id,
            prediction_id=prediction_id,
            attempt=attempt,
        ),
    )


async def _first_try(ctx: Context[Any], mark: str) -> bool:
    """Record, outside the handler's transaction, that this submission is being tried.

    If the handler then dies between the provider's answer and its commit, the redelivered event finds
    the record and the provider looks for the prediction it may already have made: a crash never turns
    one clip attempt into two paid predictions.
    """
    autonomous: asyncpg.Pool | None = ctx.deps.autonomous
    assert autonomous is not None, "the clips stage needs Deps.autonomous"
    fresh = await autonomous.fetchval(
        "INSERT INTO submissions (marker) VALUES ($1) ON CONFLICT DO NOTHING RETURNING true", mark
    )
    return bool(fresh)


async def _clip(conn: asyncpg.Connection, generation_id: str, clip_id: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT * FROM clips WHERE generation_id = $1 AND clip_id = $2", generation_id, clip_id
    )
    return row


stage = Stage(
    name="clips",
    topics=[topics.GENERATION_PROMPTED, topics.CLIP_COMPLETED],
    handler=handle,
    sweeps=[poll_sweep],
)
