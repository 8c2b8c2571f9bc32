"""Reading generations back from Postgres into the API's shapes (detail, summary, clips).

Postgres is the source of truth for the API; the stages write it, the gateway only reads it here
(plus the first insert and cancel). URLs are always the gateway's own routes, built from validated
ids, so a storage key or a provider URL never leaks to clients.
"""

from typing import Any

import asyncpg

from reelstream.estimates import actual_cost, estimate
from reelstream.settings import Settings
from reelstream.status import progress
from schemas.api import (
    CLIP_ID_RE,
    GENERATION_ID_RE,
    TERMINAL,
    Analysis,
    Brand,
    CallbackInfo,
    Clip,
    Compliance,
    Cost,
    ErrorInfo,
    GenerationDetail,
    GenerationRequest,
    GenerationSummary,
    Options,
    Scene,
    Video,
)


def valid_generation_id(value: str) -> bool:
    return GENERATION_ID_RE.fullmatch(value) is not None


def valid_clip_id(value: str) -> bool:
    return CLIP_ID_RE.fullmatch(value) is not None


def generation_path(generation_id: str) -> str:
    return f"/api/v1/generations/{generation_id}"


def video_path(generation_id: str) -> str:
    return f"{generation_path(generation_id)}/video"


def thumbnail_path(generation_id: str) -> str:
    return f"{generation_path(generation_id)}/thumbnail"


def clip_video_path(generation_id: str, clip_id: str) -> str:
    return f"{generation_path(generation_id)}/clips/{clip_id}/video"


def websocket_path(generation_id: str) -> str:
    return f"/ws/generations/{generation_id}"


_CLIP_COLUMNS = (
    "clip_id, scene_id, idx, status, prediction_id, prompt, negative_prompt, storage_key,"
    " duration_seconds, attempts"
)


def clip_from_row(generation_id: str, row: asyncpg.Record) -> Clip:
    return Clip(
        clip_id=row["clip_id"],
        scene_id=row["scene_id"],
        index=row["idx"],
        status=row["status"],
        prediction_id=row["prediction_id"],
        prompt=row["prompt"],
        negative_prompt=row["negative_prompt"],
        url=clip_video_path(generation_id, row["clip_id"]) if row["storage_key"] else None,
        duration_seconds=row["duration_seconds"],
        attempts=row["attempts"],
    )


async def load_clips(conn: asyncpg.Connection, generation_id: str) -> list[Clip]:
    rows = await conn.fetch(
        f"SELECT {_CLIP_COLUMNS} FROM clips WHERE generation_id = $1 ORDER BY idx, clip_id", generation_id
    )
    return [clip_from_row(generation_id, row) for row in rows]


async def load_clips_of(conn: asyncpg.Connection, generation_ids: list[str]) -> dict[str, list[Clip]]:
    """The clips of several generations in one query (generations without clips are absent)."""
    rows = await conn.fetch(
        f"SELECT generation_id, {_CLIP_COLUMNS} FROM clips WHERE generation_id = ANY($1::text[])"
        " ORDER BY generation_id, idx, clip_id",
        generation_ids,
    )
    found: dict[str, list[Clip]] = {}
    for row in rows:
        found.setdefault(row["generation_id"], []).append(clip_from_row(row["generation_id"], row))
    return found


def _video(generation_id: str, stored: Any) -> Video | None:
    """The stored video with its URL pinned to our route (whatever the stage wrote there)."""
    if not stored:
        return None
    video = Video.model_validate(stored)
    return video.model_copy(update={"url": video_path(generation_id)})


def _thumbnail(stored_video: Any) -> str | None:
    if isinstance(stored_video, dict):
        value = stored_video.get("thumbnail_url")
        return value if isinstance(value, str) else None
    return None


_GENERATION_COLUMNS = (
    "id, status, prompt, duration_seconds, aspect_ratio, brand, options, analysis, scenes, video, error,"
    " compute_seconds, created_at, updated_at, compliance"
)


async def load_callbacks(conn: asyncpg.Connection, generation_id: str) -> list[CallbackInfo]:
    rows = await conn.fetch(
        "SELECT event, attempts, last_status, delivered_at FROM callbacks"
        " WHERE generation_id = $1 ORDER BY created_at, webhook_id",
        generation_id,
    )
    return [CallbackInfo.model_validate(dict(r)) for r in rows]


def cost_of(
    request: GenerationRequest, status: str, compute_seconds: float | None, settings: Settings
) -> Cost:
    """The estimate at today's prices; the actual figures once the generation has ended with compute known.

    ``compute_seconds`` is the sum of the clips' ``predict_time`` (the provider's billed seconds).
    """
    known = compute_seconds if status in TERMINAL else None
    return Cost(
        estimated_usd=estimate(request, settings).estimated_cost_usd,
        actual_usd=actual_cost(known, settings) if known is not None else None,
        compute_seconds=round(known, 3) if known is not None else None,
    )


async def load_detail(
    conn: asyncpg.Connection,
    generation_id: str,
    *,
    owner: str | None = None,
    settings: Settings | None = None,
) -> GenerationDetail | None:
    """The full detail, or None when there is no such generation (or it is not ``owner``'s).

    ``owner``: an API key's fingerprint; None reads any generation (no keys configured, or the stages).
    ``settings``: the prices for ``cost`` (left null without them).
    Row, clips and progress are read in one repeatable-read snapshot so they agree with each other.
    """
    if not valid_generation_id(generation_id):
        return None
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        row = await conn.fetchrow(
            f"SELECT {_GENERATION_COLUMNS},"
            " (SELECT sum(predict_time) FROM clips c WHERE c.generation_id = g.id) AS clip_seconds"
            " FROM generations g WHERE id = $1 AND ($2::text IS NULL OR owner = $2)",
            generation_id,
            owner,
        )
        if row is None:
            return None
        clips = await load_clips(conn, generation_id)
        prog = await progress(conn, generation_id)
        callbacks = await load_callbacks(conn, generation_id)
    brand = Brand.model_validate(row["brand"]) if row["brand"] else None
    options = Options.model_validate(row["options"] or {})
    compute = row["compute_seconds"] if row["compute_seconds"] is not None else row["clip_seconds"]
    request = GenerationRequest(
        prompt=row["prompt"],
        duration_seconds=row["duration_seconds"],
        aspect_ratio=row["aspect_ratio"],
        brand=brand,
        options=options,
    )
    return GenerationDetail(
        generation_id=row["id"],
        status=row["status"],
        prompt=row["prompt"],
        duration_seconds=row["duration_seconds"],
        aspect_ratio=row["aspect_ratio"],
        brand=brand,
        options=options,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        progress=prog,
        analysis=Analysis.model_validate(row["analysis"]) if row["analysis"] else None,
        scenes=[Scene.model_validate(s) for s in row["scenes"]] if row["scenes"] is not None else None,
        clips=clips,
        video=_video(generation_id, row["video"]),
        compliance=Compliance.model_validate(row["compliance"]) if row["compliance"] else None,
        error=ErrorInfo.model_validate(row["error"]) if row["error"] else None,
        compute_seconds=row["compute_seconds"],
        cost=cost_of(request, row["status"], compute, settings) if settings is not None else None,
        callbacks=callbacks,
    )


def summary_from_row(row: asyncpg.Record) -> GenerationSummary:
    return GenerationSummary(
        generation_id=row["id"],
        status=row["status"],
        prompt=row["prompt"],
        duration_seconds=row["duration_seconds"],
        aspect_ratio=row["aspect_ratio"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        thumbnail_url=_thumbnail(row["video"]),
    )
