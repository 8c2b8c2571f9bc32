"""A test stage run as its own process: counts side effects per event and emits one event per input.

Usage: python tests/support/counter_stage.py BOOTSTRAP DATABASE_URL IN_TOPIC OUT_TOPIC GROUP [DELAY]
Prints ``ready`` once it has partitions, and on a clean exit the runtime's outcome counts as JSON.
"""

import asyncio
import json
import signal
import sys

from pydantic import BaseModel

from reelstream import db, metrics
from reelstream.kafka import Producer
from reelstream.runtime import Context, RuntimeConfig, Stage, StageRunner

SCHEMA = """
CREATE TABLE IF NOT EXISTS counter_effects (
    grp text NOT NULL, event_id text NOT NULL, key text NOT NULL, n integer NOT NULL,
    count integer NOT NULL DEFAULT 1, seq bigserial, PRIMARY KEY (grp, event_id)
)
"""


class Item(BaseModel):
    generation_id: str
    n: int


def make_stage(group: str, in_topic: str, out_topic: str | None, delay: float) -> Stage:
    async def handle(ctx: Context[Item]) -> None:
        if delay:
            await asyncio.sleep(delay)
        await ctx.conn.execute(
            "INSERT INTO counter_effects (grp, event_id, key, n) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (grp, event_id) DO UPDATE SET count = counter_effects.count + 1",
            group,
            ctx.event.id,
            ctx.generation_id,
            ctx.data.n,
        )
        if out_topic:
            ctx.emit(out_topic, Item(generation_id=ctx.generation_id, n=ctx.data.n))

    return Stage(name=group, topics=[in_topic], handler=handle, payloads={in_topic: Item})


async def main() -> None:
    bootstrap, url, in_topic, out_topic, group = sys.argv[1:6]
    delay = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
    pool = await db.create_pool(url, max_size=5)
    await pool.execute(SCHEMA)
    producer = Producer(bootstrap)
    await producer.start()
    config = RuntimeConfig(
        bootstrap=bootstrap, concurrency=8, session_timeout_ms=2000, heartbeat_interval_ms=500
    )
    runner = StageRunner(make_stage(group, in_topic, out_topic or None, delay), pool, producer, config)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, runner.stop)
    task = asyncio.create_task(runner.run())
    await runner.ready.wait()
    print("ready", flush=True)
    await task
    await producer.stop()
    await pool.close()
    outcomes = {
        s.labels["outcome"]: s.value
        for m in metrics.EVENTS_HANDLED.collect()
        for s in m.samples
        if s.name.endswith("_total")
    }
    print(json.dumps(outcomes), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
