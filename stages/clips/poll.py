"""The clips stage's sweeps: lost webhooks, stalled submissions, and nothing paid after the end.

Lost webhooks: a prediction that has not reported back in time is asked directly.

Every ``prediction_poll_seconds`` the clips stage claims the clips whose outcome completion has not
recorded (whether or not this stage saw it: a ``clip.completed`` can be lost between the two) and
whose last news (the submission, or the previous poll) is older than that, and asks the provider about
each one. A finished prediction is published as ``clip.completed`` under the same event id its webhook
would have had, so a webhook that turns up after all is handled once. Rows are claimed with ``SKIP
LOCKED`` and stamped, so replicas of the stage never poll the same prediction in the same round.
"""

import logging
from typing import Any

from pydantic import BaseModel

from reelstream import logs, metrics, outstanding, status, tracing
from reelstream.events import derive_id
from reelstream.providers import ProviderError, ProviderUnavailable, outcome_event_id
from reelstream.runtime import Sweep, Sweeper, TransientError
from schemas import topics
from schemas.api import Options
from schemas.events import ClipCompleted, ClipSubmitted
from stages.clips import submit

log = logging.getLogger(__name__)

#: Predictions asked after per round and replica: bounds a round's provider calls.
BATCH = 50

_CLAIM = """
UPDATE clips SET polled_at = now()
WHERE (generation_id, clip_id) IN (
    SELECT c.generation_id, c.clip_id
    FROM clips c JOIN generations g ON g.id = c.generation_id
    WHERE g.status = 'generating' AND c.status IN ('submitted', 'processing')
      AND c.prediction_id IS NOT NULL
      AND COALESCE(c.polled_at, c.updated_at) < now() - make_interval(secs => $1)
    ORDER BY COALESCE(c.polled_at, c.updated_at)
    LIMIT $2
    FOR UPDATE OF c SKIP LOCKED
)
RETURNING generation_id, clip_id, prediction_id, attempts,
    (SELECT p.traceparent FROM predictions p WHERE p.prediction_id = clips.prediction_id) AS traceparent
"""


async def poll_overdue(sweeper: Sweeper) -> None:
    deps: Any = sweeper.deps
    rows = await sweeper.pool.fetch(_CLAIM, float(deps.settings.prediction_poll_seconds), BATCH)
    for row in rows:
        logs.bind(generation_id=row["generation_id"], prediction_id=row["prediction_id"], event_id=None)
        # In the trace of the submission, like the webhook it stands in for.
        with tracing.span("poll prediction", traceparent=row["traceparent"]):
            await _poll_one(sweeper, row)
    logs.bind(generation_id=None, prediction_id=None)  # this sweep's later lines are about no job


async def _poll_one(sweeper: Sweeper, row: Any) -> None:
    """Ask after one overdue prediction; publish its outcome if it has ended."""
    deps: Any = sweeper.deps
    generation_id, clip_id, prediction_id = row["generation_id"], row["clip_id"], row["prediction_id"]
    try:
        prediction = await deps.provider.get(prediction_id)
    except (ProviderError, ProviderUnavailable) as exc:
        metrics.PREDICTIONS_POLLED.labels("error").inc()
        log.warning("%s %s: could not poll prediction %s: %s", generation_id, clip_id, prediction_id, exc)
        return
    if not prediction.terminal:
        metrics.PREDICTIONS_POLLED.labels(prediction.status).inc()
        if prediction.status == "processing":
            await sweeper.pool.execute(
                "UPDATE clips SET status = 'processing' WHERE generation_id = $1 AND clip_id = $2"
                " AND prediction_id = $3 AND status = 'submitted'",
                generation_id,
                clip_id,
                prediction_id,
            )
        return
    metrics.PREDICTIONS_POLLED.labels("terminal").inc()
    log.warning(
        "%s %s attempt %d: no webhook for prediction %s, polled it: %s",
        generation_id,
        clip_id,
        row["attempts"],
        prediction_id,
        prediction.status,
    )
    await sweeper.publish(
        topics.CLIP_COMPLETED,
        ClipCompleted(
            generation_id=generation_id, clip_id=clip_id, attempt=row["attempts"], prediction=prediction
        ),
        subject=generation_id,
        event_id=outcome_event_id(prediction),
    )


sweep = Sweep(
    name="poll", run=poll_overdue, every=lambda deps: min(deps.settings.prediction_poll_seconds / 4, 15.0)
)


# -- driving stalled submissions on ------------------------------------------------------------------

_STALLED = """
SELECT g.id, g.options FROM generations g
WHERE g.status = 'generating' AND (
    EXISTS (SELECT 1 FROM submissions s WHERE s.generation_id = g.id AND s.prediction_id IS NULL
            AND NOT s.abandoned
            AND COALESCE(s.leased_until, s.created_at + make_interval(secs => $1)) < now())
    OR EXISTS (SELECT 1 FROM clips c WHERE c.generation_id = g.id AND c.attempts < c.first_attempt
               AND c.status = 'pending' AND c.updated_at < now() - make_interval(secs => $1)))
ORDER BY g.updated_at
LIMIT $2
"""


async def drive_stalled(sweeper: Sweeper) -> None:
    """Create what a crashed or interrupted handler left: open intents, and free window slots.

    Postgres says what is outstanding, so this works even when the event that should have driven the
    generation on was lost with the broker. Intents are leased (see ``submit.py``): a handler creating
    them right now is never doubled.
    """
    deps: Any = sweeper.deps
    idle = min(30.0, float(deps.settings.prediction_poll_seconds))
    for row in await sweeper.pool.fetch(_STALLED, idle, BATCH):
        generation_id = row["id"]
        collected: list[tuple[str, BaseModel]] = []

        def collect(
            topic: str, data: BaseModel, _into: list[tuple[str, BaseModel]] = collected, **_: Any
        ) -> None:
            _into.append((topic, data))

        try:
            async with sweeper.pool.acquire() as conn, conn.transaction():
                if await status.current(conn, generation_id) != "generating":
                    continue
                options = Options.model_validate(row["options"])
                await submit.fill_window(conn, generation_id, submit.window(deps.settings, options))
            made = await submit.create_open(sweeper.pool, deps, generation_id, collect)
        except TransientError as exc:
            log.warning("%s: could not drive its submissions on yet: %s", generation_id, exc)
            continue
        if made:
            metrics.RECONCILER_ACTIONS.labels("clips_driven").inc()
            log.warning("%s: drove stalled submissions on (%d created)", generation_id, len(made))
        for topic, data in collected:
            await sweeper.publish(
                topic,
                data,
                subject=generation_id,
                event_id=derive_id(generation_id, "clips", "refused", topic),
            )
        for sub in made:
            await sweeper.publish(
                topics.CLIP_SUBMITTED,
                ClipSubmitted(
                    generation_id=generation_id,
                    clip_id=sub.clip_id,
                    prediction_id=sub.prediction_id,
                    attempt=sub.attempt,
                ),
                subject=generation_id,
                event_id=derive_id(sub.prediction_id, topics.CLIP_SUBMITTED),
            )


# -- nothing paid after the end -----------------------------------------------------------------------

_ENDED_WITH_CLIPS_OUT = """
SELECT DISTINCT c.generation_id FROM clips c JOIN generations g ON g.id = c.generation_id
WHERE g.status IN ('failed', 'canceled') AND c.status IN ('pending', 'submitted', 'processing')
LIMIT $1
"""

_LEASE_ORPHANS = """
UPDATE submissions SET leased_until = now() + make_interval(secs => $1)
WHERE marker IN (
    SELECT s.marker FROM submissions s JOIN generations g ON g.id = s.generation_id
    WHERE g.status IN ('completed', 'failed', 'canceled') AND s.prediction_id IS NULL AND NOT s.abandoned
      AND s.tries > 0 AND (s.leased_until IS NULL OR s.leased_until < now())
    LIMIT $2
    FOR UPDATE OF s SKIP LOCKED
)
RETURNING marker, generation_id, created_at
"""


async def cancel_after_end(sweeper: Sweeper) -> None:
    """Cancel every prediction of an ended generation, including ones a crash left unrecorded."""
    deps: Any = sweeper.deps
    for row in await sweeper.pool.fetch(_ENDED_WITH_CLIPS_OUT, BATCH):
        canceled = await outstanding.cancel_outstanding(sweeper.pool, deps.provider, row["generation_id"])
        metrics.RECONCILER_ACTIONS.labels("predictions_canceled").inc(canceled)
    for row in await sweeper.pool.fetch(_LEASE_ORPHANS, float(submit.LEASE_SECONDS), BATCH):
        mark, generation_id = row["marker"], row["generation_id"]
        try:
            found = await deps.provider.find(mark, row["created_at"])
        except (ProviderError, ProviderUnavailable) as exc:
            log.warning("%s: could not look up submission %s yet: %s", generation_id, mark, exc)
            continue
        if found is not None:
            log.warning(
                "%s ended; canceling prediction %s its interrupted submission made", generation_id, found
            )
            await outstanding.cancel_predictions(deps.provider, generation_id, [found])
            metrics.RECONCILER_ACTIONS.labels("predictions_canceled").inc()
        await sweeper.pool.execute(
            "UPDATE submissions SET abandoned = true, prediction_id = $2, leased_until = NULL"
            " WHERE marker = $1",
            mark,
            found,
        )


drive_sweep = Sweep(
    name="drive", run=drive_stalled, every=lambda deps: min(deps.settings.prediction_poll_seconds / 4, 15.0)
)
janitor_sweep = Sweep(
    name="janitor",
    run=cancel_after_end,
    every=lambda deps: min(deps.settings.prediction_poll_seconds / 4, 15.0),
)
