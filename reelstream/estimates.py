"""What a request would cost: the clips it plans to and their price on the configured model.

Pure arithmetic shared by the gateway (``POST /api/v1/estimates``) and the CLI (``replay --force`` prints
an estimate before it pays for a new attempt). It lives in the plumbing so neither has to import the
other, and it shares the planner's arithmetic through :mod:`reelstream.timeline`, so an estimate plans
exactly the clips a real run would.
"""

import math
from dataclasses import dataclass

from reelstream.settings import Settings
from reelstream.timeline import MS, WEIGHTS_WITH_CTA, WEIGHTS_WITHOUT_CTA, allocate_seconds, split_ms
from schemas.api import Estimate, EstimateClip, GenerationRequest, Scene, SceneKind

LOCAL_MODEL = "local"


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


def plan(request: GenerationRequest, *, clip_seconds: float) -> tuple[list[Scene], list[EstimateClip]]:
    weights = WEIGHTS_WITH_CTA if request.options.include_cta else WEIGHTS_WITHOUT_CTA
    durations = allocate_seconds(request.duration_seconds, [w for _, w in weights])
    max_ms = max(1, math.floor(clip_seconds * MS + 1e-6))
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
        for piece_ms in split_ms(seconds * MS, max_ms):
            index = len(clips)
            clips.append(
                EstimateClip(
                    clip_id=f"clip_{index + 1:02d}",
                    scene_id=scene.scene_id,
                    index=index,
                    duration_seconds=piece_ms / MS,
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
