"""Once a generation has ended, nothing more is paid: its outstanding predictions are canceled.

Used wherever a generation ends with work still at the provider (a clip that failed for good, a
provider refusal, a dead letter) and by the clips stage's janitor sweep, which also finds predictions
an interrupted handler created but never recorded. Canceling is best effort and bounded: a prediction
we fail to cancel still ends on its own, and its outcome is ignored because the generation has ended.
"""

import asyncio
import logging

import asyncpg

from reelstream.providers import VideoProvider

log = logging.getLogger(__name__)

CANCEL_TIMEOUT_SECONDS = 10.0


async def cancel_predictions(provider: VideoProvider, generation_id: str, prediction_ids: list[str]) -> None:
    """Ask the provider to cancel each prediction, in parallel, each bounded by a timeout."""

    async def cancel_one(prediction_id: str) -> None:
        try:
            await asyncio.wait_for(provider.cancel(prediction_id), CANCEL_TIMEOUT_SECONDS)
            log.info("%s: canceled prediction %s", generation_id, prediction_id)
        except Exception as exc:
            log.warning("%s: could not cancel prediction %s: %r", generation_id, prediction_id, exc)

    await asyncio.gather(*(cancel_one(p) for p in prediction_ids))


async def cancel_outstanding(pool: asyncpg.Pool, provider: VideoProvider, generation_id: str) -> int:
    """Mark the generation's unfinished clips canceled, end its open intents, cancel what was created.

    Call it only for a generation that has ended. Intents being created right now (leased) are left to
    their creator, which sees the ended generation when it records the prediction and cancels it.
    Returns how many predictions were asked to cancel.
    """
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "UPDATE clips SET status = 'canceled', updated_at = now() WHERE generation_id = $1"
            " AND status IN ('pending', 'submitted', 'processing') RETURNING prediction_id",
            generation_id,
        )
        await conn.execute(
            "UPDATE submissions SET abandoned = true WHERE generation_id = $1 AND prediction_id IS NULL"
            " AND NOT abandoned AND tries = 0",
            generation_id,
        )
    predictions = [r["prediction_id"] for r in rows if r["prediction_id"]]
    await cancel_predictions(provider, generation_id, predictions)
    return len(predictions)
