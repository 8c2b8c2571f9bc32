"""The ceilings: bare aiohttp handlers on the same machine, doing the least the real route must do.

``python bench/bare_server.py PORT``: answers every POST 202 with a body like the gateway's, after
reading the request body; no validation, no database, no broker. What the gateway reaches as a fraction
of this is what its own work costs; what this reaches is what aiohttp, the kernel and the load
generator allow on this machine right now.

``python bench/bare_server.py PORT --ws BOOTSTRAP``: WebSockets on ``/ws/generations/{id}`` fed from
``generation.status`` with no group, no database and no parsing beyond the envelope: a ``snapshot``
placeholder first, then each status event of that generation as it arrives. The fan-out ceiling.
Prints ``listening`` once it answers (and ``fan-out ready`` once it watches the topic).
"""

import asyncio
import json
import sys
import uuid

from aiohttp import web

ROUTES = web.RouteTableDef()


@ROUTES.post("/{tail:.*}")
async def accept(request: web.Request) -> web.Response:
    await request.read()
    generation_id = "gen_" + uuid.uuid4().hex
    links = {"self": f"/api/v1/generations/{generation_id}", "websocket": f"/ws/generations/{generation_id}"}
    body = {"generation_id": generation_id, "status": "queued", "created_at": "2026-01-01T00:00:00Z"}
    return web.Response(
        status=202, body=json.dumps({**body, "links": links}).encode(), content_type="application/json"
    )


#: How long a fetch may wait on the broker for data: tansu answers a waiting fetch late when data
#: arrives meanwhile, so a short wait is a short delay. As the gateway's status hub does.
FETCH_WAIT_MS = 50

SUBSCRIBERS = web.AppKey("subscribers", dict[str, set[web.WebSocketResponse]])


@ROUTES.get("/ws/generations/{generation_id}")
async def socket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    generation_id = request.match_info["generation_id"]
    subs = request.app[SUBSCRIBERS].setdefault(generation_id, set())
    subs.add(ws)
    try:
        await ws.send_str('{"type":"snapshot"}')
        async for _ in ws:
            pass
    finally:
        subs.discard(ws)
    return ws


async def fan_out(app: web.Application, bootstrap: str) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=FETCH_WAIT_MS
    )
    await consumer.start()
    try:
        found = consumer.partitions_for_topic("generation.status") or ()
        partitions = [TopicPartition("generation.status", p) for p in found]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)  # resolved now, not at the first fetch
        print("fan-out ready", flush=True)
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    subs = app[SUBSCRIBERS].get((record.key or b"").decode())
                    if not subs:
                        continue
                    message = json.dumps({"type": "status", **json.loads(record.value)["data"]})
                    await asyncio.gather(*(ws.send_str(message) for ws in list(subs)), return_exceptions=True)
    finally:
        await consumer.stop()


def main() -> None:
    app = web.Application()
    app[SUBSCRIBERS] = {}
    app.add_routes(ROUTES)
    port = int(sys.argv[1])
    if len(sys.argv) > 3 and sys.argv[2] == "--ws":
        bootstrap = sys.argv[3]

        async def background(app: web.Application):  # type: ignore[no-untyped-def]
            task = asyncio.create_task(fan_out(app, bootstrap))
            yield
            task.cancel()

        app.cleanup_ctx.append(background)
    web.run_app(
        app, host="127.0.0.1", port=port, access_log=None, print=lambda _: print("listening", flush=True)
    )


if __name__ == "__main__":
    main()
