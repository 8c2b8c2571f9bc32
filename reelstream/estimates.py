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
    """Rough compute time of one clip on a model (what an estimate multiplies by the model's price)."""

    seconds_per_clip: float


MODEL_COSTS: dict[str, ModelCost] = {
    "wan-video/wan-2.2-t2v-fast": ModelCost(seconds_per_clip=30.0),
    "wan-video/wan-2.1-t2v-480p": ModelCost(seconds_per_clip=90.0),
    "wan-video/wan-2.1-t2v-720p": ModelCost(seconds_per_clip=180.0),
    LOCAL_MODEL: ModelCost(seconds_per_clip=1.0),
}
#: For a model not in the table: a conservative guess rather than a refusal.
UNKNOWN_MODEL_COST = ModelCost(seconds_per_clip=60.0)

#: USD per second of provider compute (Replicate's ``metrics.predict_time``): Replicate's H100 rate
#: ($0.001525/s) for the Wan models; the local renderer is free. ``REELSTREAM_MODEL_PRICES`` (a JSON
#: object, model → USD per second) overrides or adds to these.
DEFAULT_PRICES_PER_SECOND: dict[str, float] = {
    "wan-video/wan-2.2-t2v-fast": 0.001525,
    "wan-video/wan-2.1-t2v-480p": 0.001525,
    "wan-video/wan-2.1-t2v-720p": 0.001525,
    LOCAL_MODEL: 0.0,
}
#: For a model without a price: the dearest default, so a budget errs on the side of refusing.
UNKNOWN_PRICE_PER_SECOND = 0.001525


def price_per_second(model: str, settings: Settings) -> float:
    """What one second of ``model``'s compute costs, in USD (settings first, then the defaults)."""
    prices = {**DEFAULT_PRICES_PER_SECOND, **settings.model_prices}
    return prices.get(model, UNKNOWN_PRICE_PER_SECOND)


def actual_cost(compute_seconds: float, settings: Settings) -> float:
    """The price of compute already spent (``predict_time`` summed) on the configured model."""
    return round(compute_seconds * price_per_second(configured_model(settings), settings), 4)


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
    seconds = len(clips) * MODEL_COSTS.get(model, UNKNOWN_MODEL_COST).seconds_per_clip
    return Estimate(
        duration_seconds=request.duration_seconds,
        aspect_ratio=request.aspect_ratio,
        model=model,
        scenes=scenes,
        clips=clips,
        estimated_compute_seconds=round(seconds, 3),
        estimated_cost_usd=round(seconds * price_per_second(model, settings), 4),
    )
