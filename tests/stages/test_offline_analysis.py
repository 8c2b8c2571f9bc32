"""The offline analyzer: deterministic, useful, and shaped exactly like a model's answer."""

from typing import Any

import pytest

from schemas.api import AnalysisResult, Brand, CallToAction, GenerationRequest, VisualElement
from stages.analysis.offline import (
    analyze_offline,
    color_temperature,
    merge_brand,
    offline_result,
    palette_mood,
    to_analysis,
)

SHOES = (
    "A 15-second ad for Acme running shoes showing athletes sprinting through neon city streets at night. "
    "Feel the speed. Shop the new collection today!"
)


def request(prompt: str = SHOES, **body: Any) -> GenerationRequest:
    return GenerationRequest.model_validate({"prompt": prompt, **body})


def test_offline_source_and_fallback_reason_pass_through() -> None:
    assert analyze_offline(request()).source == "offline"
    assert analyze_offline(request()).fallback_reason is None
    assert (
        analyze_offline(request(), fallback_reason="openai timed out").fallback_reason == "openai timed out"
    )


@pytest.mark.parametrize("duration", [5, 15, 30, 60, 120])
def test_same_input_same_output(duration: int) -> None:
    body: dict[str, Any] = {
        "duration_seconds": duration,
        "brand": {"name": "Acme", "colors": ["#ff0000"], "tone": "bold"},
    }
    assert (
        analyze_offline(request(**body)).model_dump_json()
        == analyze_offline(request(**body)).model_dump_json()
    )


@pytest.mark.parametrize(
    ("prompt", "tone"),
    [
        ("A fun, silly cartoon party with cute puppies", "playful"),
        ("Extreme sport action: surfers racing huge waves with explosive energy", "energetic"),
        ("An elegant luxury perfume in gold and velvet, timeless and refined", "luxurious"),
        ("A calm, peaceful spa morning, soothing and quiet", "calm"),
        ("Enterprise software that makes business workflows secure and efficient", "professional"),
    ],
)
def test_tone_from_prompt_keywords(prompt: str, tone: str) -> None:
    assert analyze_offline(request(prompt)).tone == tone


def test_brand_tone_wins_over_prompt() -> None:
    analysis = analyze_offline(request("A calm spa morning", brand={"name": "Zen", "tone": "Playful"}))
    assert analysis.tone == "playful"
    assert analysis.pacing in ("moderate", "fast")  # driven by the brand's tone, not the calm prompt


def test_unknown_words_give_sensible_defaults() -> None:
    analysis = analyze_offline(request("Zorblax quuxes"))
    assert analysis.tone and analysis.style and analysis.narrative_structure
    assert analysis.target_audience == "general audience"
    assert analysis.call_to_action == CallToAction(text="Learn more", placement="end")


@pytest.mark.parametrize(
    ("prompt", "audience"),
    [
        ("Colourful toys that kids love at the playground", "kids"),
        ("A new console controller for competitive gaming", "gamers"),
        ("A productivity tool for office teams and business professionals", "professionals"),
        ("Marathon runners training at the gym", "athletes"),
    ],
)
def test_target_audience_from_keywords(prompt: str, audience: str) -> None:
    assert audience in analyze_offline(request(prompt)).target_audience


def test_themes_and_messages_are_salient_and_bounded() -> None:
    analysis = analyze_offline(request(brand={"name": "Acme"}))
    assert 1 <= len(analysis.key_themes) <= 5
    assert not {"the", "for", "at", "a", "ad", "15-second"} & set(analysis.key_themes)
    assert "acme" not in analysis.key_themes  # the brand is not a theme of its own ad
    assert analysis.key_themes[:2] == ["running", "shoes"]
    assert analysis.key_messages[0].startswith(
        "Acme running shoes"
    )  # the "A 15-second ad for" preamble is gone
    assert "Feel the speed" in analysis.key_messages
    assert len(analysis.key_messages) <= 5


def test_visual_elements_are_noun_phrases_ranked_by_importance() -> None:
    analysis = analyze_offline(request(brand={"name": "Acme", "logo_url": "https://acme.test/logo.png"}))
    names = [e.name for e in analysis.visual_elements]
    importances = [e.importance for e in analysis.visual_elements]
    assert "running shoes" in names and "neon city streets" in names
    assert "Acme logo" in names
    assert "feel" not in names and "sprinting" not in names
    assert all(0 <= i <= 1 for i in importances)
    assert importances == sorted(importances, reverse=True)


@pytest.mark.parametrize(
    ("colors", "mood"),
    [
        (["#FF5733", "#FFC300"], "warm"),
        (["#D7263D", "#FF8C00", "#0A84FF"], "warm"),
        (["#0A84FF", "#1B6CA8"], "cool"),
        (["#2ECC71", "#3FB8AF", "#FF0000"], "cool"),
        (["#000000", "#FFFFFF", "#808080"], "neutral"),
        (["#FF0000", "#0000FF"], "neutral"),
    ],
)
def test_colour_mood_from_brand_palette(colors: list[str], mood: str) -> None:
    analysis = analyze_offline(request(brand={"name": "Acme", "colors": colors}))
    assert analysis.color_mood.split(",")[0] == mood


def test_colour_temperature_of_single_colours() -> None:
    assert color_temperature("#ff4500") == "warm"
    assert color_temperature("#FFD700") == "warm"
    assert color_temperature("#1E90FF") == "cool"
    assert color_temperature("#228B22") == "cool"
    assert color_temperature("#777777") == "neutral"
    assert palette_mood(["#FF0000"]) == "warm, vivid palette of red"


def test_colour_mood_from_tone_without_palette() -> None:
    assert analyze_offline(request("A calm, peaceful spa morning")).color_mood.startswith("cool")
    assert analyze_offline(request("A fun, silly cartoon party")).color_mood.startswith("warm")


def test_short_ads_are_paced_faster_than_long_ones() -> None:
    order = ["slow", "moderate", "fast"]
    prompt = "A calm, peaceful spa morning"
    short = analyze_offline(request(prompt, duration_seconds=5)).pacing
    long = analyze_offline(request(prompt, duration_seconds=90)).pacing
    assert order.index(short) > order.index(long)
    assert analyze_offline(request("Extreme sport action", duration_seconds=8)).pacing == "fast"


def test_narrative_follows_duration_and_cta_option() -> None:
    assert (
        analyze_offline(request(duration_seconds=15)).narrative_structure == "hook → benefit → call to action"
    )
    assert "problem" in analyze_offline(request(duration_seconds=45)).narrative_structure
    without = analyze_offline(request(duration_seconds=15, options={"include_cta": False}))
    assert "call to action" not in without.narrative_structure


def test_call_to_action() -> None:
    assert analyze_offline(request(options={"cta_text": "Get 20% off"})).call_to_action.text == "Get 20% off"
    assert analyze_offline(request(brand={"name": "Acme"})).call_to_action.text == "Shop Acme now"
    plain = analyze_offline(request("Sunrise over the mountains", brand={"name": "Acme"}))
    assert plain.call_to_action == CallToAction(text="Discover Acme", placement="end")
    assert (
        analyze_offline(request("Download our budgeting app")).call_to_action.text == "Download the app today"
    )


def test_merge_brand_normalises_palette_fonts_and_rules() -> None:
    brand = Brand.model_validate(
        {
            "name": "Acme",
            "colors": ["#0a84ff", "#0A84FF", "#ffc300"],
            "fonts": ["Inter", "inter", "Roboto Slab"],
            "tagline": "Run further",
            "guidelines": {
                "dont": ["Cheap", " cheap ", "Free  Shipping"],
                "required_disclaimer": "Terms apply.",
            },
        }
    )
    profile = merge_brand(brand)
    assert profile is not None
    assert profile.palette == ["#0A84FF", "#FFC300"]
    assert profile.typography == ["Inter", "Roboto Slab"]
    assert profile.avoid_words == ["cheap", "free shipping"]
    assert profile.tagline == "Run further"
    assert profile.required_disclaimer == "Terms apply."
    assert merge_brand(None) is None


def test_to_analysis_wraps_a_model_result() -> None:
    result = AnalysisResult(
        tone="bold",
        style="cinematic",
        narrative_structure="hook → call to action",
        target_audience="runners",
        key_themes=["speed"],
        key_messages=["Go faster"],
        visual_elements=[VisualElement(name="shoe", importance=0.9)],
        color_mood="warm",
        pacing="fast",
        call_to_action=CallToAction(text="Buy", placement="end"),
    )
    analysis = to_analysis(result, request(brand={"name": "Acme"}), source="openai")
    assert analysis.source == "openai" and analysis.fallback_reason is None
    assert analysis.brand is not None and analysis.brand.name == "Acme"
    assert AnalysisResult.model_validate(analysis.model_dump()) == result


def test_offline_analysis_is_the_offline_result_wrapped() -> None:
    req = request(brand={"name": "Acme"})
    assert analyze_offline(req) == to_analysis(offline_result(req), req, source="offline")


@pytest.mark.parametrize(
    "prompt",
    ["!!!", "ok", "Café crème brûlée à Paris", "word " * 400, "Make a video.", "1 2 3 4 5", "-- — --"],
)
def test_odd_prompts_still_analyse(prompt: str) -> None:
    analysis = analyze_offline(request(prompt.strip()))
    assert analysis.key_messages and len(analysis.key_themes) <= 5
    assert all(len(m) <= 140 for m in analysis.key_messages)
