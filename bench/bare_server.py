"""The ceiling: a bare aiohttp handler on the same machine, answering 202 with a body like the gateway's.

It reads the request body and answers a small JSON document, nothing else: no validation, no database,
no broker. What the gateway reaches as a fraction of this is what its own work costs; what this reaches
is what aiohttp, the kernel and the load generator allow on this machine right now.
Usage: ``python bench/bare_server.py PORT``; prints ``listening`` once it answers.
"""

import json
import sys
import uuid

from aiohttp import web

ROUTES = web.RouteTableDef()


@ROUTES.post("/{tail:.*}")
async def accept(request: web.Request) -> web.Response:
    await request.read()
    generation_id = "gen_" + uuid.uuid4().hex
    body = {
        "generation_id": generation_id,
        "status": "queued",
        "created_at": "2026-01-01T00:00:00Z",
        "links": {
            "self": f"/api/v1/generations/{generation_id}",
            "websocket": f"/ws/generations/{generation_id}",
        },
    }
    return web.Response(status=202, body=json.dumps(body).encode(), content_type="application/json")


def main() -> None:
    app = web.Application()
    app.add_routes(ROUTES)
    port = int(sys.argv[1])
    web.run_app(
        app, host="127.0.0.1", port=port, access_log=None, print=lambda _: print("listening", flush=True)
    )


if __name__ == "__main__":
    main()
