"""Clip specs: prompts within the limit, brand compliance, captions, render settings."""

import re
from typing import Any

import pytest

from schemas.api import DELIVERY_SIZES, GenerationRequest
from schemas.events import ClipSpec
from stages.analysis.offline import analyze_offline
from stages.planning.plan import plan_scenes
from stages.prompting.build import DEFAULT_PALETTES, build_clip_specs, remove_words

AVOID = ["Cheap", "competitor", "free shipping", "BEST"]
PROMPT = (
    "A 30-second ad for Acme running shoes: athletes sprinting through neon city streets at night. "
    "Not CHEAP, better than any competitor, with free shipping. The best shoes you will ever own! "
    "Feel the speed, own the night."
)
DISCLAIMER = "Offer valid in the US only. See acme.test/terms."
BRAND: dict[str, Any] = {
    "name": "Acme",
    "colors": ["#ff5733", "#FFC300"],
    "fonts": ["Inter"],
    "tagline": "Run further, not cheap",
    "logo_url": "https://acme.test/logo.png",
    "guidelines": {"dont": AVOID, "required_disclaimer": DISCLAIMER},
}


def request(prompt: str = PROMPT, **body: Any) -> GenerationRequest:
    return GenerationRequest.model_validate({"prompt": prompt, **body})


def specs(
    req: GenerationRequest, *, max_prompt_chars: int = 1000, clip_seconds: float = 5.0
) -> list[ClipSpec]:
    analysis = analyze_offline(req)
    scenes, clips = plan_scenes(req, analysis, clip_seconds=clip_seconds)
    return build_clip_specs(req, analysis, scenes, clips, max_prompt_chars=max_prompt_chars)


def mentions(text: str, phrase: str) -> bool:
    words = r"\s+".join(re.escape(w) for w in phrase.split())
    return re.search(rf"\b{words}", text, re.IGNORECASE) is not None


def words(text: str) -> set[str]:
    return {w.strip(".,;:!?“”\"'()…") for w in text.split()}


@pytest.mark.parametrize("include_cta", [True, False])
@pytest.mark.parametrize("duration", [5, 8, 15, 23, 30, 47, 60, 90, 120])
def test_avoided_words_never_appear_in_prompts_or_captions(duration: int, include_cta: bool) -> None:
    req = request(duration_seconds=duration, brand=BRAND, options={"include_cta": include_cta})
    for spec in specs(req):
        for word in AVOID:
            assert not mentions(spec.prompt, word), (word, spec.prompt)
            assert not mentions(spec.caption, word), (word, spec.caption)


def test_avoided_words_are_removed_from_user_text_and_cta() -> None:
    req = request(brand=BRAND, options={"cta_text": "Best deal: cheap shoes"})
    out = specs(req)
    assert all(
        "sprinting through neon city streets" in s.prompt for s in out
    )  # the rest of the user text stays
    cta_caption = out[-1].caption.splitlines()[0]
    assert cta_caption.startswith("deal: shoes")
    assert not mentions(cta_caption, "cheap") and not mentions(cta_caption, "best")


def test_remove_words_is_whole_word_and_case_insensitive() -> None:
    assert remove_words("CHEAP thrills, cheapskate, cheaps, Cheap.", ["cheap"]) == "thrills, cheapskate,."
    assert remove_words("Competitors hate it", ["competitor"]) == "hate it"
    assert remove_words("free free shipping shipping today", ["free shipping"]) == "today"
    assert remove_words("nothing to remove", []) == "nothing to remove"


def test_disclaimer_closes_the_cta_caption() -> None:
    out = specs(request(duration_seconds=30, brand=BRAND))
    cta = [s for s in out if s.scene_kind == "cta"]
    assert len(cta) > 1
    assert cta[-1].caption.endswith("\n" + DISCLAIMER)
    assert all(DISCLAIMER not in s.caption for s in out[:-1])


def test_disclaimer_on_last_clip_without_cta_scene() -> None:
    out = specs(request(duration_seconds=20, brand=BRAND, options={"include_cta": False}))
    assert {s.scene_kind for s in out} == {"intro", "development"}
    assert out[-1].caption.endswith(DISCLAIMER)
    assert all(DISCLAIMER not in s.caption for s in out[:-1])


@pytest.mark.parametrize("limit", [12, 20, 45, 80, 120, 200, 400, 1000])
@pytest.mark.parametrize("duration", [5, 15, 60])
def test_prompts_fit_the_limit_without_cutting_words(duration: int, limit: int) -> None:
    req = request(("word " * 30 + PROMPT * 10)[:2000], duration_seconds=duration, brand=BRAND)
    full = {s.clip_id: s.prompt for s in specs(req, max_prompt_chars=100_000)}
    for spec in specs(req, max_prompt_chars=limit):
        assert 0 < len(spec.prompt) <= limit
        assert words(spec.prompt) <= words(full[spec.clip_id])


@pytest.mark.parametrize("limit", [8, 20, 30, 200, 1000])
def test_scene_purpose_survives_trimming(limit: int) -> None:
    out = specs(request(duration_seconds=15, brand=BRAND), max_prompt_chars=limit)
    intro, cta = "Opening hook shot", "Closing call-to-action shot, clean space for the end text"
    assert intro.startswith(out[0].prompt) or out[0].prompt.startswith(intro)
    assert cta.startswith(out[-1].prompt) or out[-1].prompt.startswith(cta)
    assert out[-1].prompt.startswith("Closing")


def test_prompt_contents() -> None:
    spec = specs(request(duration_seconds=15, brand=BRAND))[0]
    assert "#FF5733" in spec.prompt and "#FFC300" in spec.prompt
    assert "Inter" in spec.prompt
    assert "running shoes" in spec.prompt
    assert "no flashing or strobing" in spec.prompt
    assert "cinematic lighting" in spec.prompt.lower()
    assert spec.prompt.startswith("Opening hook shot")


def test_low_priority_parts_go_first() -> None:
    spec = specs(request(duration_seconds=15, brand=BRAND), max_prompt_chars=400)[0]
    assert "cinematic lighting" not in spec.prompt.lower()  # quality hints are the least important
    assert spec.prompt.startswith("Opening hook shot. Attention-grabbing opening on")


def test_negative_prompt_defaults_plus_user_deduped() -> None:
    spec = specs(
        request(options={"negative_prompt": "Blurry, cartoon style;  text artifacts ,cartoon style"})
    )[0]
    terms = spec.negative_prompt.split(", ")
    assert terms[:7] == [
        "blurry", "low quality", "distorted text", "watermark", "flicker", "flashing lights", "deformed",
    ]  # fmt: skip
    assert terms[7:] == ["cartoon style", "text artifacts"]
    assert specs(request())[0].negative_prompt.startswith("blurry, low quality")


def test_captions() -> None:
    req = request(duration_seconds=30, brand=BRAND, options={"cta_text": "Shop the drop"})
    analysis = analyze_offline(req)
    out = specs(req)
    assert [s.caption for s in out if s.scene_kind == "intro"] == ["Acme", "Acme"]
    development = [s.caption for s in out if s.scene_kind == "development"]
    assert all(any(c.rstrip("…") in m or m in c for m in analysis.key_messages) for c in development)
    cta_lines = out[-1].caption.splitlines()
    assert cta_lines[0] == "Shop the drop"  # the tagline says "cheap", an avoided word: left out
    assert "Not, better" not in " ".join(development)  # messages with avoided words are skipped, not mangled
    for spec in out:
        assert len(spec.caption.split("\n")[0]) <= 90


def test_cta_caption_carries_a_compliant_tagline() -> None:
    brand = {**BRAND, "tagline": "Run further"}
    out = specs(request(duration_seconds=15, brand=brand, options={"cta_text": "Shop the drop"}))
    assert out[-1].caption == f"Shop the drop — Run further\n{DISCLAIMER}"


def test_caption_without_brand_uses_the_hook() -> None:
    out = specs(request("Sunrise yoga on a quiet beach. Breathe in, slow down.", duration_seconds=15))
    assert out[0].caption == "Sunrise yoga on a quiet beach"
    assert out[-1].caption == "Learn more"


@pytest.mark.parametrize("aspect_ratio", ["16:9", "9:16", "1:1"])
def test_dimensions_follow_the_aspect_ratio(aspect_ratio: str) -> None:
    for spec in specs(request(aspect_ratio=aspect_ratio)):
        assert (spec.width, spec.height) == DELIVERY_SIZES[(aspect_ratio, "720p")]
        assert spec.aspect_ratio == aspect_ratio


def test_colours_are_the_brand_palette_or_follow_the_mood() -> None:
    assert specs(request(brand=BRAND))[0].colors == ["#FF5733", "#FFC300"]
    assert specs(request("A calm, peaceful spa morning"))[0].colors == DEFAULT_PALETTES["cool"]
    assert specs(request("A fun, silly cartoon party"))[0].colors == DEFAULT_PALETTES["warm"]


def test_seeds() -> None:
    seeded = specs(request(duration_seconds=30, options={"seed": 42}))
    assert [s.seed for s in seeded] == [42 + s.index for s in seeded]
    assert all(s.seed is None for s in specs(request()))
    wrapped = specs(request(options={"seed": 2**32 - 1}))
    assert [s.seed for s in wrapped][:2] == [2**32 - 1, 0]  # stays a valid 32-bit seed


def test_one_spec_per_planned_clip() -> None:
    req = request(duration_seconds=47, brand=BRAND)
    analysis = analyze_offline(req)
    scenes, clips = plan_scenes(req, analysis)
    out = build_clip_specs(req, analysis, scenes, clips)
    assert [(s.clip_id, s.scene_id, s.index, s.duration_seconds) for s in out] == [
        (c.clip_id, c.scene_id, c.index, c.duration_seconds) for c in clips
    ]
    assert "Story shot 1 of" in out[[s.scene_kind for s in out].index("development")].prompt


@pytest.mark.parametrize("duration", [5, 33, 120])
def test_prompting_is_deterministic(duration: int) -> None:
    req = request(duration_seconds=duration, brand=BRAND, options={"seed": 7})
    assert specs(req) == specs(req)


def test_unknown_scene_or_bad_limit_is_rejected() -> None:
    req = request()
    analysis = analyze_offline(req)
    scenes, clips = plan_scenes(req, analysis)
    with pytest.raises(ValueError, match="unknown scenes"):
        build_clip_specs(req, analysis, scenes[:1], clips)
    with pytest.raises(ValueError):
        build_clip_specs(req, analysis, scenes, clips, max_prompt_chars=0)
