"""``POST /api/v1/estimates``: the plan and the price of a request, without generating anything.

The gateway must not import ``stages`` (it is deployed on its own), so the planner's arithmetic is
repeated here: scenes at 20/50/30 % (30/70 without a call to action) in whole seconds by largest
remainder, each cut into the fewest equal clips of at most ``clip_seconds``, counted in milliseconds.
It must stay identical to ``stages.planning.plan.plan_scenes``; a test compares the two.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

from gateway.body import json_body
from gateway.deps import get_deps
from gateway.errors import json_response
from reelstream.settings import Settings
from schemas.api import Estimate, EstimateClip, GenerationRequest, Scene, SceneKind

routes = web.RouteTableDef()

WEIGHTS_WITH_CTA: tuple[tuple[SceneKind, float], ...] = (("intro", 0.2), ("development", 0.5), ("cta", 0.3))
WEIGHTS_WITHOUT_CTA: tuple[tuple[SceneKind, float], ...] = (("intro", 0.3), ("development", 0.7))
LOCAL_MODEL = "local"
_MS = 1000


@dataclass(frozen=True)
class ModelCost:
    """Rough per-clip wall time and price of one model (Replicate's public pricing, 480p)."""

    seconds_per_clip: float
    usd_per_clip: float


MODEL_COSTS: dict[str, ModelCost] = {
    "wan-video/wan-2.2-t2v-fast": ModelCost(seconds_per_clip=30.0, usd_per_clip=0.05),
    LOCAL_MODEL: ModelCost(seconds_per_clip=1.0, usd_per_clip=0.0),
}
#: For a model not in the table: a conservative guess rather than a refusal.
UNKNOWN_MODEL_COST = ModelCost(seconds_per_clip=60.0, usd_per_clip=0.10)

_DESCRIPTIONS: dict[SceneKind, str] = {
    "intro": "Opening hook that introduces the subject",
    "development": "The core message and the product in action",
    "cta": "Closing call to action",
}


def allocate_seconds(total: int, weights: Sequence[float]) -> list[int]:
    """Split ``total`` whole seconds by ``weights`` (largest remainder, ties to the earlier share, ≥ 1 s)."""
    if total < len(weights):
        raise ValueError(f"{total} s cannot hold {len(weights)} scenes of at least 1 s")
    scale = sum(weights)
    quotas = [total * w / scale for w in weights]
    shares = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - shares[i]), i))
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    while min(shares) < 1:
        shares[shares.index(max(shares))] -= 1
        shares[shares.index(min(shares))] += 1
    return shares


def split_ms(total_ms: int, max_ms: int) -> list[int]:
    """The fewest pieces of at most ``max_ms``, as equal as possible, leftover ms to the first pieces."""
    count = max(1, math.ceil(total_ms / max_ms))
    base, extra = divmod(total_ms, count)
    return [base + 1 if i < extra else base for i in range(count)]


def plan(request: GenerationRequest, *, clip_seconds: float) -> tuple[list[Scene], list[EstimateClip]]:
    weights = WEIGHTS_WITH_CTA if request.options.include_cta else WEIGHTS_WITHOUT_CTA
    durations = allocate_seconds(request.duration_seconds, [w for _, w in weights])
    max_ms = max(1, math.floor(clip_seconds * _MS + 1e-6))
    scenes: list[Scene] = []
    clips: list[EstimateClip] = []
    start = 0
    for number, ((kind, _), seconds) in enumerate(zip(weights, durations, strict=True), start=1):
        scene = Scene(
            scene_id=f"scene_{number}",
            kind=kind,
            start_seconds=float(start),
            duration_seconds=float(seconds),
            description=_DESCRIPTIONS[kind],
        )
        scenes.append(scene)
        for piece_ms in split_ms(seconds * _MS, max_ms):
            index = len(clips)
            clips.append(
                EstimateClip(
                    clip_id=f"clip_{index + 1:02d}",
                    scene_id=scene.scene_id,
                    index=index,
                    duration_seconds=piece_ms / _MS,
                )
            )
        start += seconds
    return scenes, clips


def configured_model(settings: Settings) -> str:
    """The model clips would be rendered with: Replicate's when a token is set, else the local renderer."""
    return settings.replicate_model if settings.replicate_api_token is not None else LOCAL_MODEL


def estimate(request: GenerationRequest, settings: Settings) -> Estimate:
    model = configured_model(settings)
    scenes, clips = plan(request, clip_seconds=settings.clip_seconds)
    cost = MODEL_COSTS.get(model, UNKNOWN_MODEL_COST)
    return Estimate(
        duration_seconds=request.duration_seconds,
        aspect_ratio=request.aspect_ratio,
        model=model,
        scenes=scenes,
        clips=clips,
        estimated_compute_seconds=round(len(clips) * cost.seconds_per_clip, 3),
        estimated_cost_usd=round(len(clips) * cost.usd_per_clip, 4),
    )


@routes.post("/api/v1/estimates")
async def create_estimate(request: web.Request) -> web.Response:
    req = await json_body(request, GenerationRequest)
    return json_response(estimate(req, get_deps(request).settings))
