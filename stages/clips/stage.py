"""clips: generation.prompted and clip.completed → clip.submitted.

Keeps a window of predictions in flight per generation (``clip_concurrency`` when ``parallel_clips``,
else one), refills it as outcomes arrive, and resubmits a clip whose attempt failed (see
:mod:`reelstream.outcomes`) until its attempts run out. It reads clip.completed in its own consumer
group only to learn that a slot came free. Submission is two-phase (``submit.py``); late webhooks are
polled and stalled submissions driven on by this stage's sweeps (``poll.py``).
"""

import logging
from typing import Any, Literal

import asyncpg

from reelstream import estimates, metrics, outcomes, status
from reelstream.events import derive_id
from reelstream.runtime import Context, Stage
from reelstream.settings import Settings
from schemas import topics
from schemas.api import STATUS_ORDER, TERMINAL, Options
from schemas.events import ClipCompleted, ClipSubmitted, GenerationPrompted
from stages.clips import poll, submit

log = logging.getLogger(__name__)


async def prepare(ctx: Context[Any]) -> list[submit.Submitted]:
    """Decide and record the intents (one short transaction), then create them at the provider."""
    async with ctx.transaction() as conn:
        options = await _decide(conn, ctx)
        if options is None:
            return []
        await submit.fill_window(conn, ctx.generation_id, submit.window(ctx.deps.settings, options))
    return await submit.create_open(ctx.pool, ctx.deps, ctx.generation_id, ctx.emit)


async def record(ctx: Context[Any]) -> None:
    """Announce each prediction created (its id names the fact, whoever reports it)."""
    for made in ctx.prepared:
        ctx.emit(
            topics.CLIP_SUBMITTED,
            ClipSubmitted(
                generation_id=ctx.generation_id,
                clip_id=made.clip_id,
                prediction_id=made.prediction_id,
                attempt=made.attempt,
            ),
            event_id=derive_id(made.prediction_id, topics.CLIP_SUBMITTED),
        )


async def _decide(conn: asyncpg.Connection, ctx: Context[Any]) -> Options | None:
    """The generation's options if clips are to be submitted for it now, else None.

    Locks the generation's row for the transaction, so a cancel waits for the intents to be recorded
    (and then finds them) rather than racing them.
    """
    current = await status.current(conn, ctx.generation_id)
    if isinstance(ctx.data, GenerationPrompted):
        if current is None or current in TERMINAL:
            return None
        if STATUS_ORDER.index(current) < STATUS_ORDER.index("generating"):
            await status.set_status(conn, ctx.generation_id, "generating", emit=ctx.emit)
        elif current != "generating":
            return None  # already assembling: every clip is in
        return ctx.data.request.options
    if current != "generating":
        return None
    if await _settle(conn, ctx.deps.settings, ctx.generation_id, ctx.data) == "out of attempts":
        return None  # completion fails the generation: start nothing more that would be paid for
    return Options.model_validate(
        await conn.fetchval("SELECT options FROM generations WHERE id = $1", ctx.generation_id)
    )


async def _settle(
    conn: asyncpg.Connection, settings: Settings, generation_id: str, done: ClipCompleted
) -> Literal["ignored", "succeeded", "resubmitted", "out of attempts"]:
    """The outcome of the clip's current attempt: free its slot, or record its next attempt's intent.

    Returns what happened: ``ignored``, ``succeeded``, ``resubmitted`` or ``out of attempts``.
    """
    clip = await conn.fetchrow(
        "SELECT attempts, first_attempt, prediction_id FROM clips"
        " WHERE generation_id = $1 AND clip_id = $2 FOR UPDATE",
        generation_id,
        done.clip_id,
    )
    if clip is None or done.attempt != clip["attempts"]:
        return "ignored"  # unknown clip, or an outcome of an earlier attempt
    if clip["prediction_id"] not in (None, done.prediction.id):
        log.warning(
            "%s %s: outcome of prediction %s ignored, the clip's is %s",
            generation_id,
            done.clip_id,
            done.prediction.id,
            clip["prediction_id"],
        )
        return "ignored"
    _account(settings, done)
    problem = outcomes.problem(done.prediction)
    used = clip["attempts"] - clip["first_attempt"] + 1
    if problem is not None and used < settings.clip_attempts:
        log.info(
            "%s %s attempt %d failed (%s): resubmitting", generation_id, done.clip_id, done.attempt, problem
        )
        await submit.add_intent(conn, generation_id, done.clip_id, done.attempt + 1)
        return "resubmitted"
    await conn.execute(
        "UPDATE clips SET settled = true WHERE generation_id = $1 AND clip_id = $2",
        generation_id,
        done.clip_id,
    )
    return "succeeded" if problem is None else "out of attempts"


def _account(settings: Settings, done: ClipCompleted) -> None:
    """Count the current attempt's outcome once: its compute seconds and what it cost."""
    price = estimates.price_per_second(estimates.configured_model(settings), settings)
    provider = "replicate" if settings.replicate_api_token is not None else "local"
    predict_time = (done.prediction.metrics or {}).get("predict_time")
    metrics.prediction_finished(provider, done.prediction.status, predict_time, price)


stage = Stage(
    name="clips",
    topics=[topics.GENERATION_PROMPTED, topics.CLIP_COMPLETED],
    prepare=prepare,
    handler=record,
    sweeps=[poll.sweep, poll.drive_sweep, poll.janitor_sweep],
)
