"""Serving stored media: the final MP4, each clip's MP4 and the thumbnail.

Another API key's generation is answered 404, like one that does not exist.

Storage keys are built only from ids that matched their patterns (``reelstream.storage`` refuses
anything else), never from the request path, so no request can name a file of its choosing. Local
files are streamed with Range support (players seek with it); remote storage answers with a 302 to a
presigned URL instead of proxying the bytes through the gateway.
"""

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from aiohttp import web

from gateway.auth import owner_of
from gateway.database import connection
from gateway.deps import get_deps
from gateway.errors import not_found
from reelstream import storage
from reelstream.detail import valid_clip_id, valid_generation_id
from reelstream.storage import Storage

routes = web.RouteTableDef()


@runtime_checkable
class Presigning(Protocol):
    """Storage that can hand out a time-limited URL for a key (S3)."""

    async def presigned_url(self, key: str) -> str: ...


async def serve_key(store: Storage, key: str, content_type: str, *, missing: str) -> web.StreamResponse:
    """Stream the object at ``key`` (Range supported), or 302 to a presigned URL, or 404."""
    path: Path | None = store.local_path(key)
    if path is None:
        if isinstance(store, Presigning) and await store.exists(key):
            raise web.HTTPFound(await store.presigned_url(key))
        raise not_found(missing)
    if not await asyncio.to_thread(path.is_file):
        raise not_found(missing)
    return web.FileResponse(
        path, headers={"Content-Type": content_type, "Cache-Control": "private, max-age=3600"}
    )


async def _generation_status(request: web.Request, generation_id: str) -> str:
    if not valid_generation_id(generation_id):
        raise not_found(f"no generation {generation_id[:80]!r}")
    async with connection(get_deps(request)) as conn:
        value: str | None = await conn.fetchval(
            "SELECT status FROM generations WHERE id = $1 AND ($2::text IS NULL OR owner = $2)",
            generation_id,
            owner_of(request),
        )
    if value is None:
        raise not_found(f"no generation {generation_id}")
    return value


async def _completed_asset(
    request: web.Request, key: Callable[[str], str], content_type: str, what: str
) -> web.StreamResponse:
    """A file that exists once the generation completed: the final video or its thumbnail."""
    generation_id = request.match_info["generation_id"]
    state = await _generation_status(request, generation_id)
    if state != "completed":
        raise not_found(f"generation {generation_id} has no {what} yet ({state})")
    return await serve_key(
        get_deps(request).storage, key(generation_id), content_type, missing=f"the {what} is not stored"
    )


@routes.get("/api/v1/generations/{generation_id}/video")
async def final_video(request: web.Request) -> web.StreamResponse:
    return await _completed_asset(request, storage.final_key, "video/mp4", "video")


@routes.get("/api/v1/generations/{generation_id}/thumbnail")
async def thumbnail(request: web.Request) -> web.StreamResponse:
    """Not in the contract's route list, but ``video.thumbnail_url`` (written by completion) points here."""
    return await _completed_asset(request, storage.thumbnail_key, "image/jpeg", "thumbnail")


@routes.get("/api/v1/generations/{generation_id}/clips/{clip_id}/video")
async def clip_video(request: web.Request) -> web.StreamResponse:
    generation_id = request.match_info["generation_id"]
    clip_id = request.match_info["clip_id"]
    if not valid_generation_id(generation_id) or not valid_clip_id(clip_id):
        raise not_found("no such clip")
    async with connection(get_deps(request)) as conn:
        stored = await conn.fetchval(
            "SELECT c.storage_key IS NOT NULL FROM clips c JOIN generations g ON g.id = c.generation_id"
            " WHERE c.generation_id = $1 AND c.clip_id = $2 AND ($3::text IS NULL OR g.owner = $3)",
            generation_id,
            clip_id,
            owner_of(request),
        )
    if not stored:
        raise not_found(f"clip {clip_id} of {generation_id} has no video yet")
    return await serve_key(
        get_deps(request).storage,
        storage.clip_key(generation_id, clip_id),
        "video/mp4",
        missing="the clip is not stored",
    )
