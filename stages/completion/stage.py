"""completion: clip.completed → generation.completed / generation.failed.

Copies each output into storage as soon as it arrives (Replicate deletes outputs after an hour), checks
it is a real video, and once every clip has succeeded assembles ``final.mp4`` and ``thumbnail.jpg``.
"""

import logging
import tempfile
from pathlib import Path
from typing import Any

import asyncpg

from reelstream import media, metrics, status, storage
from reelstream.runtime import Context, PermanentError, Stage, TransientError
from schemas import topics
from schemas.api import DIMENSIONS, Video
from schemas.events import ClipCompleted, GenerationCompleted

log = logging.getLogger(__name__)


async def handle(ctx: Context[ClipCompleted]) -> None:
    if await status.current(ctx.conn, ctx.generation_id) != "generating":
        return  # canceled or failed meanwhile: nothing more to do for this generation
    done = ctx.data
    clip = await ctx.conn.fetchrow(
        "SELECT * FROM clips WHERE generation_id = $1 AND clip_id = $2", ctx.generation_id, done.clip_id
    )
    if clip is None:
        raise PermanentError(f"{ctx.generation_id} has no clip {done.clip_id}")
    if done.attempt < clip["attempts"] or clip["status"] in ("succeeded", "failed", "canceled"):
        return  # an outcome we already know, or one of an earlier attempt
    if done.attempt > clip["attempts"]:
        raise TransientError(f"{done.clip_id} attempt {done.attempt} is not recorded yet")

    prediction = done.prediction
    if prediction.status == "succeeded" and prediction.output_url:
        try:
            await _store_clip(ctx, done.clip_id, prediction.output_url, prediction.metrics or {})
        except (storage.StorageError, media.NotAVideo) as exc:
            await _clip_failed(ctx, done.clip_id, f"output rejected: {exc}", final=True)
            return
        if await _all_succeeded(ctx.conn, ctx.generation_id):
            await _assemble(ctx)
        else:
            await status.announce_progress(ctx)
        return
    reason = str(prediction.error or f"prediction {prediction.status}")
    await _clip_failed(ctx, done.clip_id, reason, final=done.attempt >= ctx.deps.settings.clip_attempts)


async def _store_clip(ctx: Context[Any], clip_id: str, url: str, prediction_metrics: dict[str, Any]) -> None:
    key = storage.clip_key(ctx.generation_id, clip_id)
    store: storage.Storage = ctx.deps.storage
    await store.upload_from_url(key, url)
    with tempfile.TemporaryDirectory() as tmp:
        path = store.local_path(key)
        if path is None:
            path = Path(tmp) / "clip.mp4"
            await store.get_file(key, path)
        info = media.probe(path)
    predict_time = prediction_metrics.get("predict_time")
    await ctx.conn.execute(
        "UPDATE clips SET status = 'succeeded', storage_key = $3, predict_time = $4, error = NULL,"
        " updated_at = now() WHERE generation_id = $1 AND clip_id = $2",
        ctx.generation_id,
        clip_id,
        key,
        float(predict_time) if isinstance(predict_time, int | float) else None,
    )
    log.info(
        "%s %s stored: %s %.2fs %dx%d",
        ctx.generation_id,
        clip_id,
        info.codec,
        info.duration_seconds,
        info.width,
        info.height,
    )


async def _clip_failed(ctx: Context[Any], clip_id: str, reason: str, *, final: bool) -> None:
    await ctx.conn.execute(
        "UPDATE clips SET error = $3, status = CASE WHEN $4 THEN 'failed' ELSE status END, updated_at = now()"
        " WHERE generation_id = $1 AND clip_id = $2",
        ctx.generation_id,
        clip_id,
        reason[:1000],
        final,
    )
    if not final:
        log.info("%s %s failed (%s); the clips stage resubmits it", ctx.generation_id, clip_id, reason)
        await status.announce_progress(ctx)
        return
    await status.fail(ctx, "clip_failed", f"{clip_id} failed: {reason}")
    metrics.GENERATIONS.labels("failed").inc()
    await _cancel_outstanding(ctx)


async def _cancel_outstanding(ctx: Context[Any]) -> None:
    rows = await ctx.conn.fetch(
        "UPDATE clips SET status = 'canceled', updated_at = now() WHERE generation_id = $1"
        " AND status IN ('pending', 'submitted', 'processing') RETURNING prediction_id",
        ctx.generation_id,
    )
    for row in rows:
        if row["prediction_id"]:
            try:
                await ctx.deps.provider.cancel(row["prediction_id"])
            except Exception:  # best effort: the generation has already failed
                log.warning("could not cancel prediction %s", row["prediction_id"], exc_info=True)


async def _all_succeeded(conn: asyncpg.Connection, generation_id: str) -> bool:
    remaining: int = await conn.fetchval(
        "SELECT count(*) FROM clips WHERE generation_id = $1 AND status <> 'succeeded'", generation_id
    )
    return remaining == 0


async def _assemble(ctx: Context[Any]) -> None:
    await status.advance(ctx, "assembling")
    gen = await ctx.conn.fetchrow(
        "SELECT duration_seconds, aspect_ratio FROM generations WHERE id = $1", ctx.generation_id
    )
    clips = await ctx.conn.fetch(
        "SELECT storage_key, predict_time FROM clips WHERE generation_id = $1 ORDER BY idx", ctx.generation_id
    )
    store: storage.Storage = ctx.deps.storage
    width, height = DIMENSIONS[gen["aspect_ratio"]]
    with tempfile.TemporaryDirectory() as tmp:
        paths: list[Path] = []
        for i, row in enumerate(clips):
            path = store.local_path(row["storage_key"])
            if path is None:
                path = Path(tmp) / f"{i:03d}.mp4"
                await store.get_file(row["storage_key"], path)
            paths.append(path)
        final, thumb = Path(tmp) / "final.mp4", Path(tmp) / "thumbnail.jpg"
        info = await media.assemble(
            paths, final, duration_seconds=float(gen["duration_seconds"]), width=width, height=height
        )
        await media.thumbnail(final, thumb, at_seconds=min(1.0, info.duration_seconds / 2))
        await store.put_file(storage.final_key(ctx.generation_id), final, "video/mp4")
        await store.put_file(storage.thumbnail_key(ctx.generation_id), thumb, "image/jpeg")
    video = Video(
        url=f"/api/v1/generations/{ctx.generation_id}/video",
        duration_seconds=round(info.duration_seconds, 3),
        width=info.width,
        height=info.height,
        thumbnail_url=f"/api/v1/generations/{ctx.generation_id}/thumbnail",
    )
    compute = sum(r["predict_time"] or 0.0 for r in clips)
    if await status.advance(ctx, "completed", video=video.model_dump(mode="json"), compute_seconds=compute):
        ctx.emit(
            topics.GENERATION_COMPLETED, GenerationCompleted(generation_id=ctx.generation_id, video=video)
        )
        metrics.GENERATIONS.labels("completed").inc()
        log.info(
            "%s completed: %.2fs %dx%d", ctx.generation_id, info.duration_seconds, info.width, info.height
        )


stage = Stage(name="completion", topics=[topics.CLIP_COMPLETED], handler=handle)
