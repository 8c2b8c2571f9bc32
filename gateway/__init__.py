"""The reelstream gateway: the public HTTP API, the provider webhook receiver and the live WebSocket.

It is the only process clients talk to. It writes the first row of a generation and publishes
``generation.requested``; everything after that happens in the stages, and the gateway only reads
Postgres (for the API) and ``generation.status`` (for the WebSocket). The public contract
(docs/api.md) describes every route, field, status and error code served here.
"""
