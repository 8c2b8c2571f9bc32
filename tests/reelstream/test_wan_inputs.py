"""Inputs for Wan models are built from the clip and cut to what each model's schema declares."""

from typing import Any

import pytest

from reelstream.providers import ProviderError
from reelstream.providers.wan import build_input, input_properties
from schemas.api import DELIVERY_SIZES
from schemas.events import ClipSpec


def clip(
    aspect_ratio: str = "16:9", seconds: float = 4.0, resolution: str = "480p", **extra: Any
) -> ClipSpec:
    width, height = DELIVERY_SIZES[(aspect_ratio, resolution)]
    fields: dict[str, Any] = {
        "clip_id": "clip_00",
        "scene_id": "scene_00",
        "scene_kind": "intro",
        "index": 0,
        "duration_seconds": seconds,
        "aspect_ratio": aspect_ratio,
        "width": width,
        "height": height,
        "prompt": "A lighthouse in a storm, cinematic",
        "negative_prompt": "text, watermark",
        "caption": "",
        "colors": [],
        "seed": 42,
    }
    return ClipSpec.model_validate(fields | extra)


def openapi(properties: dict[str, Any], required: list[str], **components: Any) -> dict[str, Any]:
    input_schema = {"type": "object", "title": "Input", "properties": properties, "required": required}
    return {"openapi": "3.0.2", "components": {"schemas": {"Input": input_schema, **components}}}


# Shaped like Replicate's published schemas: enums live in components and are referenced with allOf.
WAN_22 = openapi(
    {
        "prompt": {"type": "string"},
        "aspect_ratio": {"allOf": [{"$ref": "#/components/schemas/aspect_ratio"}], "default": "16:9"},
        "num_frames": {"type": "integer", "minimum": 81, "maximum": 121, "default": 81},
        "frames_per_second": {"type": "integer", "minimum": 5, "maximum": 30, "default": 16},
        "resolution": {"allOf": [{"$ref": "#/components/schemas/resolution"}], "default": "480p"},
        "seed": {"type": "integer"},
        "go_fast": {"type": "boolean", "default": True},
    },
    ["prompt"],
    aspect_ratio={"type": "string", "enum": ["16:9", "9:16"]},
    resolution={"type": "string", "enum": ["480p", "720p"]},
)
WAN_25 = openapi(
    {
        "prompt": {"type": "string"},
        "negative_prompt": {"type": "string"},
        "size": {"type": "string", "enum": ["832*480", "480*832", "1280*720", "720*1280"]},
        "duration": {"type": "integer", "enum": [5, 10], "default": 5},
        "seed": {"type": "integer"},
    },
    ["prompt"],
)


def test_wan_22_gets_frames_rate_resolution_and_no_field_it_lacks() -> None:
    properties, required = input_properties(WAN_22)
    built = build_input(clip("9:16"), properties, required)
    assert built == {
        "prompt": "A lighthouse in a storm, cinematic",
        "aspect_ratio": "9:16",
        "resolution": "480p",
        "frames_per_second": 16,
        "num_frames": 81,  # 4 s needs 65 frames; the model's minimum is 81 and the assembler trims
        "seed": 42,
    }
    assert "negative_prompt" not in built and "duration" not in built and "size" not in built


def test_wan_22_caps_frames_and_asks_a_square_order_for_landscape_to_crop() -> None:
    properties, required = input_properties(WAN_22)
    built = build_input(clip("1:1", seconds=10), properties, required)
    assert built["num_frames"] == 121
    assert built["aspect_ratio"] == "16:9"  # no 1:1 on Wan 2.2: the closer shape, centre-cropped later


@pytest.mark.parametrize(
    ("aspect", "resolution", "asked"),
    [("16:9", "480p", "480p"), ("9:16", "720p", "720p"), ("1:1", "720p", "720p"), ("16:9", "1080p", "720p")],
)
def test_wan_22_is_asked_for_its_closest_native_resolution(aspect: str, resolution: str, asked: str) -> None:
    properties, required = input_properties(WAN_22)
    assert build_input(clip(aspect, resolution=resolution), properties, required)["resolution"] == asked


def test_wan_25_gets_size_duration_and_negative_prompt() -> None:
    properties, required = input_properties(WAN_25)
    built = build_input(clip("16:9", seconds=4), properties, required)
    assert built == {
        "prompt": "A lighthouse in a storm, cinematic",
        "negative_prompt": "text, watermark",
        "size": "832*480",
        "duration": 5,
        "seed": 42,
    }
    assert build_input(clip("9:16", seconds=7), properties, required)["size"] == "480*832"
    assert build_input(clip("9:16", seconds=7), properties, required)["duration"] == 10


def test_square_clip_picks_the_smallest_size_that_covers_it_when_cropped() -> None:
    properties, required = input_properties(WAN_25)
    assert build_input(clip("1:1", resolution="480p"), properties, required)["size"] == "832*480"
    assert build_input(clip("1:1", resolution="720p"), properties, required)["size"] == "1280*720"
    assert build_input(clip("16:9", resolution="720p"), properties, required)["size"] == "1280*720"
    assert build_input(clip("9:16", resolution="1080p"), properties, required)["size"] == "720*1280"


def test_no_seed_and_no_negative_prompt_are_not_sent() -> None:
    properties, required = input_properties(WAN_25)
    built = build_input(clip(seed=None, negative_prompt=""), properties, required)
    assert "seed" not in built and "negative_prompt" not in built


def test_a_model_needing_an_input_we_cannot_give_is_refused() -> None:
    image_to_video = openapi({"prompt": {"type": "string"}, "image": {"type": "string"}}, ["prompt", "image"])
    properties, required = input_properties(image_to_video)
    with pytest.raises(ProviderError, match="image"):
        build_input(clip(), properties, required)


def test_a_schema_without_input_is_refused() -> None:
    with pytest.raises(ProviderError):
        input_properties({"components": {"schemas": {}}})
