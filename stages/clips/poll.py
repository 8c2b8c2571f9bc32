"""Lost webhooks: a prediction that has not reported back in time is asked directly.

Every ``prediction_poll_seconds`` the clips stage claims the outstanding clips whose last news (the
submission, or the previous poll) is older than that, and asks the provider about each one. A finished
prediction is published as ``clip.completed`` under the same event id its webhook would have had, so
a webhook that turns up after all is handled once. Rows are claimed with ``SKIP LOCKED`` and stamped, so
replicas of the stage never poll the same prediction in the same round.
"""

import logging
from typing import Any

from reelstream import metrics
from reelstream.providers import ProviderError, ProviderUnavailable, outcome_event_id
from reelstream.runtime import Sweep, Sweeper
from schemas import topics
from schemas.events import ClipCompleted

log = logging.getLogger(__name__)

#: Predictions asked after per round and replica: bounds a round's provider calls.
BATCH = 50

_CLAIM = """
UPDATE clips SET polled_at = now()
WHERE (generation_id, clip_id) IN (
    SELECT c.generation_id, c.clip_id
    FROM clips c JOIN generations g ON g.id = c.generation_id
    WHERE g.status = 'generating' AND c.status IN ('submitted', 'processing') AND NOT c.settled
      AND c.prediction_id IS NOT NULL
      AND COALESCE(c.polled_at, c.updated_at) < now() - make_interval(secs => $1)
    ORDER BY COALESCE(c.polled_at, c.updated_at)
    LIMIT $2
    FOR UPDATE OF c SKIP LOCKED
)
RETURNING generation_id, clip_id, prediction_id, attempts
"""


async def poll_overdue(sweeper: Sweeper) -> None:
    deps: Any = sweeper.deps
    rows = await sweeper.pool.fetch(_CLAIM, float(deps.settings.prediction_poll_seconds), BATCH)
    for row in rows:
        generation_id, clip_id, prediction_id = row["generation_id"], row["clip_id"], row["prediction_id"]
        try:
            prediction = await deps.provider.get(prediction_id)
        except (ProviderError, ProviderUnavailable) as exc:
            metrics.PREDICTIONS_POLLED.labels("error").inc()
            log.warning("%s %s: could not poll prediction %s: %s", generation_id, clip_id, prediction_id, exc)
            continue
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
            continue
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
