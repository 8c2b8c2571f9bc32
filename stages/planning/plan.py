"""Scene and clip planning: how the ad's seconds are shared out, and cut into provider-sized clips.

Pure arithmetic, so an estimate (``POST /api/v1/estimates``) and the real run plan the same clips,
and a replay plans them again identically. Time is counted in whole milliseconds internally so the
clip durations of a scene add up to the scene duration without floating-point drift.
"""

import math
from collections.abc import Sequence

from reelstream.timeline import MS, WEIGHTS_WITH_CTA, WEIGHTS_WITHOUT_CTA, allocate_seconds, split_ms
from schemas.api import Analysis, GenerationRequest, Scene, SceneKind
from schemas.events import ClipPlan

MAX_CLIPS = 999  # clip ids are "clip_NN" or "clip_NNN" (schemas.api.CLIP_ID_RE)


def _names(analysis: Analysis, limit: int) -> list[str]:
    ranked = sorted(analysis.visual_elements, key=lambda e: -e.importance)
    return [e.name for e in ranked[:limit]]


def _join(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _brand_name(analysis: Analysis) -> str | None:
    return analysis.brand.name if analysis.brand is not None else None


def _intro_description(analysis: Analysis) -> str:
    """The hook: the most important things in the picture, in the ad's look and mood."""
    subject = _join(_names(analysis, 3)) or (analysis.key_themes[0] if analysis.key_themes else "the subject")
    brand = _brand_name(analysis)
    tail = f", introducing {brand}" if brand else ""
    return f"Attention-grabbing opening on {subject} in a {analysis.style}, {analysis.tone} look{tail}."


def _development_description(analysis: Analysis) -> str:
    """The body of the ad: what it says (the first key message) and what it is about (themes)."""
    message = analysis.key_messages[0].rstrip(".!?…") if analysis.key_messages else "The product in use"
    themes = _join(analysis.key_themes[:3])
    highlight = f", highlighting {themes}" if themes else ""
    return f"{message}{highlight}, at a {analysis.pacing} pace."


def _cta_description(analysis: Analysis) -> str:
    """The close: the call to action, carried by the brand when there is one."""
    text = analysis.call_to_action.text
    brand = _brand_name(analysis)
    branded = f" with the {brand} brand and logo" if brand else ""
    tagline = analysis.brand.tagline if analysis.brand is not None else None
    slogan = f" and the tagline “{tagline}”" if tagline else ""
    return f"Closing call to action “{text}”{branded}{slogan}, clear and uncluttered."


def describe_scene(kind: SceneKind, analysis: Analysis) -> str:
    """One sentence saying what a scene shows, built from the analysis."""
    if kind == "intro":
        return _intro_description(analysis)
    if kind == "development":
        return _development_description(analysis)
    return _cta_description(analysis)


def _scenes(request: GenerationRequest, analysis: Analysis) -> list[Scene]:
    weights = WEIGHTS_WITH_CTA if request.options.include_cta else WEIGHTS_WITHOUT_CTA
    durations = allocate_seconds(request.duration_seconds, [w for _, w in weights])
    scenes: list[Scene] = []
    start = 0
    for number, ((kind, _), seconds) in enumerate(zip(weights, durations, strict=True), start=1):
        scenes.append(
            Scene(
                scene_id=f"scene_{number}",
                kind=kind,
                start_seconds=float(start),
                duration_seconds=float(seconds),
                description=describe_scene(kind, analysis),
            )
        )
        start += seconds
    return scenes


def _clips(scenes: Sequence[Scene], max_ms: int) -> list[ClipPlan]:
    clips: list[ClipPlan] = []
    for scene in scenes:
        at_ms = round(scene.start_seconds * MS)
        for piece_ms in split_ms(round(scene.duration_seconds * MS), max_ms):
            index = len(clips)
            clips.append(
                ClipPlan(
                    clip_id=f"clip_{index + 1:02d}",
                    scene_id=scene.scene_id,
                    scene_kind=scene.kind,
                    index=index,
                    start_seconds=at_ms / MS,
                    duration_seconds=piece_ms / MS,
                )
            )
            at_ms += piece_ms
    if len(clips) > MAX_CLIPS:
        raise ValueError(f"{len(clips)} clips planned; at most {MAX_CLIPS} are addressable")
    return clips


def plan_scenes(
    request: GenerationRequest, analysis: Analysis, *, clip_seconds: float = 5.0
) -> tuple[list[Scene], list[ClipPlan]]:
    """Scenes (intro / development / cta at ~20/50/30 %) and the clips that render them.

    Scene durations are whole seconds adding up to ``request.duration_seconds`` exactly; each scene
    is cut into the fewest clips of at most ``clip_seconds`` (the provider's clip length), equal in
    length to the millisecond, numbered globally in playback order.
    """
    if not math.isfinite(clip_seconds) or clip_seconds < 0.001:
        raise ValueError("clip_seconds must be a finite number of at least 0.001")
    max_ms = math.floor(clip_seconds * MS + 1e-6)
    scenes = _scenes(request, analysis)
    return scenes, _clips(scenes, max_ms)
