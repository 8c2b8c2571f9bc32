"""completion: clip.completed → generation.completed / generation.failed.

``prepare`` does the outside work, with no transaction open: it judges the outcome (the one decision in
:mod:`reelstream.outcomes`), fetches a usable output as soon as it arrives (Replicate deletes outputs
after an hour), checks it is a real video, *finishes* it into its piece of the final video (delivery
size, frame filled, constant frame rate, exactly its share of the frames, the brand's captions, logo
and end card from :mod:`reelstream.finishing`) while the other clips still render, stores the piece
as the clip and records it with its finishing note. A generation's clips are finished side by side
(the stage orders its events by clip, not by generation), so clips that land together do not queue
behind each other, and each crossfade is made as soon as both of its clips are finished
(:mod:`reelstream.transitions`). Once every clip has succeeded the pieces are joined by stream copy
(a crossfade not made yet encodes only the frames around its boundary) into ``final.mp4`` with a
silent AAC track, and ``thumbnail.jpg``; the compliance report is recorded with the video. After the
last webhook only the last clip's own finishing, its crossfades and the join remain. A transient
failure to fetch is retried; a permanent one fails the attempt, and the clips stage resubmits the clip
while attempts remain.

``record`` (in the handling transaction) writes the clip's failure or the generation's completion and
emits what follows. Every step is safe to repeat: a crash mid-assembly assembles again.
"""

import asyncio
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from reelstream import finishing, media, metrics, outcomes, outstanding, status, storage, transitions
from reelstream.runtime import Context, PermanentError, Stage, TransientError, by_clip
from schemas import topics
from schemas.api import Compliance, Video
from schemas.events import ClipCompleted, GenerationCompleted, Prediction

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipFailed:
    reason: str
    #: We turned a ``succeeded`` output down: the clips stage must hear of it to resubmit.
    rejected: bool


@dataclass(frozen=True)
class ClipStored:
    pass


@dataclass(frozen=True)
class Assembled:
    video: Video
    compute_seconds: float
    compliance: Compliance
    #: Seconds each step of the assembly took, for the log line.
    laps: "_Laps"


Prepared = ClipFailed | ClipStored | Assembled | None


async def prepare(ctx: Context[ClipCompleted]) -> Prepared:
    done = ctx.data
    row = await ctx.pool.fetchrow(
        "SELECT g.status, g.aspect_ratio, g.duration_seconds AS total_seconds, g.brand, g.options,"
        " g.analysis, g.prompt, c.spec, c.status AS clip_status, c.attempts, c.prediction_id,"
        " c.duration_seconds, (SELECT COALESCE(sum(p.duration_seconds), 0) FROM clips p"
        "  WHERE p.generation_id = g.id AND p.idx < c.idx) AS start_seconds"
        " FROM generations g LEFT JOIN clips c ON c.generation_id = g.id AND c.clip_id = $2"
        " WHERE g.id = $1",
        ctx.generation_id,
        done.clip_id,
    )
    if row is None or row["status"] not in ("generating", "assembling"):
        return None  # ended meanwhile (canceled, failed) or unknown: nothing more to do
    if row["clip_status"] is None:
        raise PermanentError(f"{ctx.generation_id} has no clip {done.clip_id}")
    if done.attempt != row["attempts"] or row["prediction_id"] not in (None, done.prediction.id):
        return None  # an earlier attempt's outcome, or a prediction that is not this clip's
    if row["clip_status"] in ("failed", "canceled"):
        return None
    if row["clip_status"] != "succeeded":  # else a repeat after a crash: go on to assembly
        reason = outcomes.problem(done.prediction)
        if reason is not None:
            return ClipFailed(reason, rejected=False)
        try:
            await _finish_clip(ctx, done, row)
        except (storage.StorageError, media.NotAVideo) as exc:
            if outcomes.is_transient(exc):
                raise TransientError(f"{done.clip_id}: fetching its output: {exc}") from exc
            return ClipFailed(f"output rejected: {exc}", rejected=True)
        except Exception as exc:
            if outcomes.is_transient(exc):
                raise TransientError(f"{done.clip_id}: fetching its output: {exc!r}") from exc
            raise
    if not await _all_succeeded(ctx.pool, ctx.generation_id):
        return ClipStored()
    try:
        return await _assemble(ctx)
    except Exception as exc:
        if outcomes.is_transient(exc):  # storage unreachable for a moment: assemble again later
            raise TransientError(f"assembly: {exc!r}") from exc
        raise


async def record(ctx: Context[ClipCompleted]) -> None:
    result: Prepared = ctx.prepared
    if isinstance(result, ClipFailed):
        await _clip_failed(ctx, result)
    elif isinstance(result, ClipStored):
        await status.announce_progress(ctx)
    elif isinstance(result, Assembled):
        video = result.video
        completed = await status.advance(
            ctx,
            "completed",
            video=video.model_dump(mode="json"),
            compute_seconds=result.compute_seconds,
            compliance=result.compliance.model_dump(mode="json"),
        )
        if completed:
            ctx.emit(
                topics.GENERATION_COMPLETED, GenerationCompleted(generation_id=ctx.generation_id, video=video)
            )
            metrics.GENERATIONS.labels("completed").inc()
            log.info(
                "%s completed: %.2fs %dx%d (%s)",
                ctx.generation_id,
                video.duration_seconds,
                video.width,
                video.height,
                result.laps,
            )


def _look(row: asyncpg.Record) -> finishing.Look:
    return finishing.Look.of(
        aspect_ratio=row["aspect_ratio"],
        duration_seconds=float(row["total_seconds"]),
        brand=row["brand"],
        options=row["options"],
        analysis=row["analysis"],
        prompt=row["prompt"] or "",
    )


async def _boundaries(pool: asyncpg.Pool, generation_id: str) -> list[int]:
    """Frame numbers where one clip's piece ends and the next begins."""
    durations = await pool.fetch(
        "SELECT duration_seconds FROM clips WHERE generation_id = $1 ORDER BY idx", generation_id
    )
    ends, at = [], 0.0
    for row in durations[:-1]:
        at += float(row["duration_seconds"])
        ends.append(round(at * media.FPS))
    return ends


async def _finish_clip(ctx: Context[ClipCompleted], done: ClipCompleted, row: asyncpg.Record) -> None:
    """Fetch the output, check it is a video, finish it into its piece (delivery size, the brand's
    layers, crossfade keyframes), store that as the clip, record it with its finishing note."""
    url = done.prediction.output_url
    assert url is not None  # outcomes.problem() said it is usable
    store: storage.Storage = ctx.deps.storage
    look = _look(row)
    width, height = look.width, look.height
    start_seconds = float(row["start_seconds"])
    frames = media.piece_frames(start_seconds, float(row["duration_seconds"]))
    caption = str((row["spec"] or {}).get("caption", ""))
    boundaries = await _boundaries(ctx.pool, ctx.generation_id)
    laps = _Laps()
    with tempfile.TemporaryDirectory(prefix="reelstream-clip-") as tmp:
        raw, piece = Path(tmp) / "output.mp4", Path(tmp) / "piece.mp4"
        await storage.download(url, raw, max_bytes=store.max_bytes, allow_private=store.allow_private)
        source = await asyncio.to_thread(media.probe, raw)
        laps.lap("fetch")
        layers = await finishing.clip_layers(
            look,
            caption=caption,
            start=round(start_seconds * media.FPS),
            frames=frames,
            boundaries=boundaries,
            work_dir=Path(tmp),
            allow_private=store.allow_private,
        )
        await media.finish_clip(
            raw,
            piece,
            frames=frames,
            width=width,
            height=height,
            source=source,
            overlays=layers.overlays,
            keyframes=media.crossfade_cuts(frames) if look.crossfade else None,
        )
        laps.lap("finish")
        await store.put_file(storage.clip_key(ctx.generation_id, done.clip_id), piece, "video/mp4")
        predict_time = (done.prediction.metrics or {}).get("predict_time")
        await ctx.pool.execute(
            "UPDATE clips SET status = 'succeeded', storage_key = $4, predict_time = $5, error = NULL,"
            " prediction_id = COALESCE(prediction_id, $6), outcome = $7, finishing = $8, updated_at = now()"
            " WHERE generation_id = $1 AND clip_id = $2 AND attempts = $3"
            " AND status IN ('pending', 'submitted', 'processing')",
            ctx.generation_id,
            done.clip_id,
            done.attempt,
            storage.clip_key(ctx.generation_id, done.clip_id),
            float(predict_time) if isinstance(predict_time, int | float) else None,
            done.prediction.id,
            ctx.event.model_dump(mode="json"),
            layers.note,
        )
        laps.lap("store")
        # After the clip is recorded: of two neighbours finishing at once, the later sees both.
        if look.crossfade:
            await _crossfades_beside(ctx, done.clip_id, piece, frames, Path(tmp))
            laps.lap("crossfades")
    log.info(
        "%s %s finished: %s %.2fs %dx%d in, %d frames %dx%d out (%s)",
        ctx.generation_id,
        done.clip_id,
        source.codec,
        source.duration_seconds,
        source.width,
        source.height,
        frames,
        width,
        height,
        laps,
    )


class _Laps:
    """Seconds each step of a clip's finishing took, for its log line: where the time after a
    webhook goes is the first thing asked when a video is slow."""

    def __init__(self) -> None:
        self._at = time.monotonic()
        self._laps: list[tuple[str, float]] = []

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self._laps.append((name, now - self._at))
        self._at = now

    def __str__(self) -> str:
        return ", ".join(f"{name} {seconds:.2f}s" for name, seconds in self._laps)


async def _crossfades_beside(
    ctx: Context[ClipCompleted], clip_id: str, piece: Path, frames: int, work: Path
) -> None:
    """Make the crossfades between this clip's piece and each neighbour already finished
    (:mod:`reelstream.transitions`), so that the join does not have to. Never fails the clip."""
    rows = await ctx.pool.fetch(
        "SELECT c.idx - me.idx AS side, c.storage_key, c.duration_seconds,"
        " (SELECT COALESCE(sum(p.duration_seconds), 0) FROM clips p"
        "  WHERE p.generation_id = c.generation_id AND p.idx < c.idx) AS start_seconds"
        " FROM clips me JOIN clips c"
        " ON c.generation_id = me.generation_id AND c.idx IN (me.idx - 1, me.idx + 1)"
        " WHERE me.generation_id = $1 AND me.clip_id = $2 AND c.status = 'succeeded'",
        ctx.generation_id,
        clip_id,
    )
    store: storage.Storage = ctx.deps.storage

    async def beside(row: asyncpg.Record) -> None:
        neighbour_frames = media.piece_frames(float(row["start_seconds"]), float(row["duration_seconds"]))
        if not media.fades_between(frames, neighbour_frames):
            return
        try:
            neighbour = store.local_path(row["storage_key"])
            if neighbour is None:
                neighbour = work / f"neighbour{row['side']:+d}.mp4"
                await store.get_file(row["storage_key"], neighbour)
            if row["side"] < 0:
                await transitions.prepare(neighbour, neighbour_frames, piece, frames)
            else:
                await transitions.prepare(piece, frames, neighbour, neighbour_frames)
        except Exception as exc:  # the join makes it instead
            log.warning("%s %s: no early crossfade: %r", ctx.generation_id, clip_id, exc)

    # Both sides at once: the clip landing last is often a middle one, with a crossfade on each side.
    await asyncio.gather(*(beside(row) for row in rows))


async def _clip_failed(ctx: Context[ClipCompleted], failure: ClipFailed) -> None:
    """Record the attempt's failure; the last allowed attempt fails the generation."""
    done = ctx.data
    # The generation's row first, as every transaction touching a generation and its clips takes
    # them (the clips stage resubmitting, a status move): clip then generation here deadlocked.
    if await status.current(ctx.conn, ctx.generation_id) is None:
        return
    clip = await ctx.conn.fetchrow(
        "UPDATE clips SET error = $4, updated_at = now(),"
        " status = CASE WHEN attempts - first_attempt + 1 >= $5 THEN 'failed' ELSE status END"
        " WHERE generation_id = $1 AND clip_id = $2 AND attempts = $3"
        " AND status IN ('pending', 'submitted', 'processing') RETURNING status",
        ctx.generation_id,
        done.clip_id,
        done.attempt,
        failure.reason[:1000],
        ctx.deps.settings.clip_attempts,
    )
    if clip is None:
        return
    if failure.rejected:
        # The clips stage saw "succeeded"; tell it the attempt failed after all, so it resubmits.
        ctx.emit(
            topics.CLIP_COMPLETED,
            ClipCompleted(
                generation_id=ctx.generation_id,
                clip_id=done.clip_id,
                attempt=done.attempt,
                prediction=Prediction(id=done.prediction.id, status="failed", error=failure.reason),
            ),
        )
    if clip["status"] != "failed":
        log.info(
            "%s %s failed (%s); the clips stage resubmits it", ctx.generation_id, done.clip_id, failure.reason
        )
        await status.announce_progress(ctx)
        return
    if await status.fail(ctx, "clip_failed", f"{done.clip_id} failed: {failure.reason}"):
        metrics.GENERATIONS.labels("failed").inc()
        pool, provider, generation_id = ctx.pool, ctx.deps.provider, ctx.generation_id

        async def cancel_the_rest() -> None:
            await outstanding.cancel_outstanding(pool, provider, generation_id)

        ctx.after_commit(cancel_the_rest)


async def _all_succeeded(pool: asyncpg.Pool, generation_id: str) -> bool:
    remaining: int = await pool.fetchval(
        "SELECT count(*) FROM clips WHERE generation_id = $1 AND status <> 'succeeded'", generation_id
    )
    return remaining == 0


async def _assemble(ctx: Context[Any]) -> Assembled | ClipStored | None:
    """``final.mp4`` (the finished pieces joined by stream copy) and ``thumbnail.jpg``; fixed keys, so
    assembling again after a crash overwrites rather than duplicates.

    Clips finish side by side, so the last few may all find every clip done: the one whose event moves
    the generation to ``assembling`` (the generation's row locked meanwhile) assembles, and so does that
    same event redelivered; the others only announce their clip.
    """
    laps = _Laps()
    async with ctx.transaction() as conn:
        claim = await conn.fetchrow(
            "SELECT status, assembly_event FROM generations WHERE id = $1 FOR UPDATE", ctx.generation_id
        )
        if claim is None or claim["status"] not in ("generating", "assembling"):
            return None  # canceled or failed meanwhile
        if claim["status"] == "generating":
            await status.set_status(
                conn, ctx.generation_id, "assembling", emit=ctx.emit, assembly_event=ctx.event.id
            )
        elif claim["assembly_event"] not in (None, ctx.event.id):
            return ClipStored()  # another clip's event is assembling it
        generation = await conn.fetchrow(
            "SELECT status, aspect_ratio, duration_seconds AS total_seconds, brand, options, analysis, prompt"
            " FROM generations WHERE id = $1",
            ctx.generation_id,
        )
        clips = await conn.fetch(
            "SELECT storage_key, predict_time, duration_seconds, finishing FROM clips"
            " WHERE generation_id = $1 ORDER BY idx",
            ctx.generation_id,
        )
    if generation is None or generation["status"] != "assembling":
        return None  # canceled meanwhile
    await ctx.flush()  # clients see "assembling" while the pieces are joined
    laps.lap("claim")
    store: storage.Storage = ctx.deps.storage
    with tempfile.TemporaryDirectory(prefix="reelstream-final-") as tmp:
        pieces: list[Path] = []
        for i, row in enumerate(clips):
            path = store.local_path(row["storage_key"])
            if path is None:
                path = Path(tmp) / f"{i:03d}.mp4"
                await store.get_file(row["storage_key"], path)
            pieces.append(path)
        final, thumb = Path(tmp) / "final.mp4", Path(tmp) / "thumbnail.jpg"
        look = _look(generation)
        frames, at = [], 0.0
        for row in clips:
            frames.append(media.piece_frames(at, float(row["duration_seconds"])))
            at += float(row["duration_seconds"])
        made = await transitions.ready(pieces, frames) if look.crossfade else {}
        # The poster frame (1 s in) comes from the first piece, taken while the pieces are joined.
        info, _ = await asyncio.gather(
            media.assemble(pieces, frames, final, crossfade=look.crossfade, transitions=made),
            media.thumbnail(pieces[0], thumb, at_seconds=1.0),
        )
        laps.lap("join")
        await transitions.forget(list(made.values()))
        await store.put_file(storage.final_key(ctx.generation_id), final, "video/mp4")
        await store.put_file(storage.thumbnail_key(ctx.generation_id), thumb, "image/jpeg")
        laps.lap("store")
    video = Video(
        url=f"/api/v1/generations/{ctx.generation_id}/video",
        duration_seconds=round(info.duration_seconds, 3),
        width=info.width,
        height=info.height,
        fps=info.fps,
        has_audio=info.has_audio,
        thumbnail_url=f"/api/v1/generations/{ctx.generation_id}/thumbnail",
    )
    compliance = finishing.report(look, [row["finishing"] for row in clips])
    return Assembled(video, sum(r["predict_time"] or 0.0 for r in clips), compliance, laps)


stage = Stage(
    name="completion", topics=[topics.CLIP_COMPLETED], prepare=prepare, handler=record, order_by=by_clip
)
