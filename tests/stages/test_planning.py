"""Scene and clip planning: exact timings for every allowed duration, provider-sized clips."""

import itertools
import math
from typing import Any

import pytest

from schemas.api import CLIP_ID_RE, Analysis, GenerationRequest, Scene
from schemas.events import ClipPlan
from stages.analysis.offline import analyze_offline
from stages.planning.plan import allocate_seconds, plan_scenes, split_ms

DURATIONS = range(5, 121)
PROMPT = "Acme running shoes on athletes sprinting through neon city streets at night. Feel the speed."


def request(duration: int = 15, include_cta: bool = True, **body: Any) -> GenerationRequest:
    return GenerationRequest.model_validate(
        {"prompt": PROMPT, "duration_seconds": duration, "options": {"include_cta": include_cta}, **body}
    )


def plan(
    duration: int = 15, include_cta: bool = True, clip_seconds: float = 5.0, **body: Any
) -> tuple[list[Scene], list[ClipPlan], Analysis]:
    req = request(duration, include_cta, **body)
    analysis = analyze_offline(req)
    scenes, clips = plan_scenes(req, analysis, clip_seconds=clip_seconds)
    return scenes, clips, analysis


def ms(seconds: float) -> int:
    return round(seconds * 1000)


@pytest.mark.parametrize("include_cta", [True, False])
@pytest.mark.parametrize("duration", DURATIONS)
def test_scenes_add_up_exactly(duration: int, include_cta: bool) -> None:
    scenes, _, _ = plan(duration, include_cta)
    expected = ["intro", "development", "cta"] if include_cta else ["intro", "development"]
    assert [s.kind for s in scenes] == expected
    assert [s.scene_id for s in scenes] == [f"scene_{i}" for i in range(1, len(expected) + 1)]
    assert sum(s.duration_seconds for s in scenes) == duration
    assert all(s.duration_seconds >= 1 and s.duration_seconds == int(s.duration_seconds) for s in scenes)
    starts = [0.0]
    for scene in scenes[:-1]:
        starts.append(starts[-1] + scene.duration_seconds)
    assert [s.start_seconds for s in scenes] == starts
    assert all(s.description for s in scenes)


@pytest.mark.parametrize("include_cta", [True, False])
@pytest.mark.parametrize("duration", DURATIONS)
def test_scene_proportions(duration: int, include_cta: bool) -> None:
    scenes, _, _ = plan(duration, include_cta)
    weights = [0.2, 0.5, 0.3] if include_cta else [0.3, 0.7]
    for scene, weight in zip(scenes, weights, strict=True):
        assert abs(scene.duration_seconds - weight * duration) < 1  # largest remainder: off by < 1 s


def test_common_durations() -> None:
    assert [s.duration_seconds for s in plan(15)[0]] == [
        3,
        8,
        4,
    ]  # a tied remainder goes to the earlier scene
    assert [s.duration_seconds for s in plan(30)[0]] == [6, 15, 9]
    assert [s.duration_seconds for s in plan(60)[0]] == [12, 30, 18]
    assert [s.duration_seconds for s in plan(10, include_cta=False)[0]] == [3, 7]
    assert sum(s.duration_seconds for s in plan(5)[0]) == 5


@pytest.mark.parametrize("include_cta", [True, False])
@pytest.mark.parametrize("duration", DURATIONS)
def test_clips_fit_the_provider_and_the_scene(duration: int, include_cta: bool) -> None:
    for clip_seconds in (5.0, 2.5, 3.0, 4.0, 10.0):
        scenes, clips, _ = plan(duration, include_cta, clip_seconds)
        assert [c.index for c in clips] == list(range(len(clips)))
        assert [c.clip_id for c in clips] == [f"clip_{i + 1:02d}" for i in range(len(clips))]
        assert all(CLIP_ID_RE.fullmatch(c.clip_id) for c in clips)
        assert all(0 < c.duration_seconds <= clip_seconds for c in clips)
        for scene in scenes:
            own = [c for c in clips if c.scene_id == scene.scene_id]
            assert len(own) == math.ceil(scene.duration_seconds / clip_seconds)  # as few clips as possible
            assert all(c.scene_kind == scene.kind for c in own)
            assert sum(ms(c.duration_seconds) for c in own) == ms(scene.duration_seconds)
            assert max(ms(c.duration_seconds) for c in own) - min(ms(c.duration_seconds) for c in own) <= 1
            assert ms(own[0].start_seconds) == ms(scene.start_seconds)
        for before, after in itertools.pairwise(clips):
            assert ms(before.start_seconds + before.duration_seconds) == ms(after.start_seconds)
        assert ms(sum(c.duration_seconds for c in clips)) == duration * 1000


def test_scenes_split_into_equal_clips() -> None:
    scenes, clips, _ = plan(40)  # 8 / 20 / 12 seconds
    assert [s.duration_seconds for s in scenes] == [8, 20, 12]
    assert [c.duration_seconds for c in clips if c.scene_id == "scene_1"] == [4.0, 4.0]  # never 5 + 3
    assert [c.duration_seconds for c in clips if c.scene_id == "scene_2"] == [5.0] * 4
    assert [c.duration_seconds for c in clips if c.scene_id == "scene_3"] == [4.0] * 3
    assert [c.start_seconds for c in clips[:3]] == [0.0, 4.0, 8.0]


def test_uneven_split_adds_up_to_the_millisecond() -> None:
    assert split_ms(11_000, 5_000) == [3_667, 3_667, 3_666]
    assert split_ms(10_000, 5_000) == [5_000, 5_000]
    assert split_ms(1_000, 5_000) == [1_000]


def test_more_than_99_clips_get_three_digit_ids() -> None:
    _, clips, _ = plan(120, clip_seconds=1.0)
    assert len(clips) == 120
    assert clips[98].clip_id == "clip_99"
    assert clips[99].clip_id == "clip_100"
    assert all(CLIP_ID_RE.fullmatch(c.clip_id) for c in clips)


def test_descriptions_come_from_the_analysis() -> None:
    scenes, _, analysis = plan(30, brand={"name": "Acme", "tagline": "Run further"})
    intro, development, cta = scenes
    top = max(analysis.visual_elements, key=lambda e: e.importance).name
    assert top in intro.description
    assert analysis.key_messages[0] in development.description
    assert analysis.call_to_action.text in cta.description
    assert "Acme" in cta.description and "Run further" in cta.description


@pytest.mark.parametrize("duration", [5, 17, 64, 120])
def test_planning_is_deterministic(duration: int) -> None:
    first = plan(duration, brand={"name": "Acme"})
    second = plan(duration, brand={"name": "Acme"})
    assert first == second


def test_allocate_seconds_keeps_every_share_positive() -> None:
    assert allocate_seconds(5, [0.2, 0.5, 0.3]) == [1, 3, 1]
    assert allocate_seconds(3, [0.01, 0.98, 0.01]) == [1, 1, 1]
    with pytest.raises(ValueError):
        allocate_seconds(2, [0.2, 0.5, 0.3])


@pytest.mark.parametrize("clip_seconds", [0.0, -1.0, 0.0001, float("nan"), float("inf")])
def test_invalid_clip_length_is_rejected(clip_seconds: float) -> None:
    req = request()
    with pytest.raises(ValueError):
        plan_scenes(req, analyze_offline(req), clip_seconds=clip_seconds)
