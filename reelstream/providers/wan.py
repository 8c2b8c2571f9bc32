"""Inputs for Wan text-to-video models, built from a clip and checked against the model's own schema.

Wan models disagree on their inputs: 2.2 takes ``num_frames``, ``frames_per_second``, ``resolution`` and
``aspect_ratio``; 2.5 takes ``duration`` and a ``size`` like ``832*480`` plus a ``negative_prompt``.
Rather than one table per model, we offer every input we could fill and keep only what the model's
OpenAPI ``Input`` schema declares, coerced into its enums and bounds. A field the model does not take is
never sent (Replicate answers 422 to unknown fields), and a new Wan version mostly just works.
"""

import math
from typing import Any

from reelstream.providers import ProviderError
from schemas.events import ClipSpec

#: Wan renders at 16 fps unless the model says otherwise.
DEFAULT_FPS = 16


def input_properties(openapi_schema: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """``(properties, required)`` of the ``Input`` schema, with ``$ref``/``allOf`` enums inlined."""
    components = openapi_schema.get("components", {}).get("schemas", {})
    schema = components.get("Input")
    if not isinstance(schema, dict):
        raise ProviderError("the model's schema has no Input")
    properties = {name: _resolve(prop, components) for name, prop in (schema.get("properties") or {}).items()}
    return properties, list(schema.get("required") or [])


def _resolve(prop: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    resolved = {k: v for k, v in prop.items() if k not in ("allOf", "$ref")}
    refs = [prop] + [p for p in prop.get("allOf") or [] if isinstance(p, dict)]
    for ref in refs:
        target = ref.get("$ref")
        if isinstance(target, str) and target.startswith("#/components/schemas/"):
            resolved = {**components.get(target.rsplit("/", 1)[1], {}), **resolved}
        elif ref is not prop:
            resolved = {**ref, **resolved}
    return resolved


def build_input(
    spec: ClipSpec, properties: dict[str, dict[str, Any]], required: list[str] | None = None
) -> dict[str, Any]:
    """The request ``input`` for ``spec``: only fields in ``properties``, each valid for its schema."""
    fps = _fps(properties)
    offered: dict[str, Any] = {
        "prompt": spec.prompt,
        "aspect_ratio": spec.aspect_ratio,
        # The delivery size's lines ("720p"); a model without it gets its closest (see ``_nearest``).
        "resolution": f"{min(spec.width, spec.height)}p",
        "size": f"{spec.width}*{spec.height}",
        "duration": spec.duration_seconds,
        "frames_per_second": fps,
        "fps": fps,
        # Wan counts frames as 4k+1 (81 = 5 s at 16 fps); cover the clip, the assembler trims it.
        "num_frames": _four_k_plus_one(math.ceil(spec.duration_seconds * fps)),
    }
    if spec.negative_prompt:
        offered["negative_prompt"] = spec.negative_prompt
    if spec.seed is not None:
        offered["seed"] = spec.seed
    result: dict[str, Any] = {}
    for name, value in offered.items():
        prop = properties.get(name)
        if prop is None:
            continue
        fitted = _fit(value, prop, spec)
        if fitted is not None:
            result[name] = fitted
    missing = [name for name in required or [] if name not in result]
    if missing:
        raise ProviderError(f"the model requires inputs reelstream cannot give: {', '.join(missing)}")
    return result


def _fps(properties: dict[str, dict[str, Any]]) -> int:
    for name in ("frames_per_second", "fps"):
        default = properties.get(name, {}).get("default")
        if isinstance(default, int | float) and default > 0:
            return int(default)
    return DEFAULT_FPS


def _four_k_plus_one(frames: int) -> int:
    return 4 * math.ceil(max(frames - 1, 0) / 4) + 1


def _fit(value: Any, prop: dict[str, Any], spec: ClipSpec) -> Any:
    """``value`` made valid for ``prop`` (type, enum, bounds), or None to leave the model's default."""
    kind = prop.get("type")
    if kind == "integer" and isinstance(value, int | float):
        value = math.ceil(value)
    elif kind == "number" and isinstance(value, int | float):
        value = float(value)
    elif kind == "string" and not isinstance(value, str):
        return None
    elif kind == "boolean" and not isinstance(value, bool):
        return None
    enum = prop.get("enum")
    if enum:
        return value if value in enum else _nearest(value, enum, spec)
    if isinstance(value, int | float) and not isinstance(value, bool):
        low, high = prop.get("minimum"), prop.get("maximum")
        if isinstance(low, int | float):
            value = max(value, low)
        if isinstance(high, int | float):
            value = min(value, high)
    if isinstance(value, str) and isinstance(prop.get("maxLength"), int):
        value = value[: prop["maxLength"]]
    return value


def _nearest(value: Any, enum: list[Any], spec: ClipSpec) -> Any:
    """The enum member closest to what we wanted; None when nothing fits (the model's default then)."""
    if isinstance(value, int | float):
        numbers = sorted(v for v in enum if isinstance(v, int | float) and not isinstance(v, bool))
        at_least = [v for v in numbers if v >= value]
        return at_least[0] if at_least else (numbers[-1] if numbers else None)
    sizes = [(v, _size(v)) for v in enum if isinstance(v, str) and _size(v)]
    if sizes:  # "1280*720": same orientation, then the smallest that covers ours when cropped
        landscape = spec.width >= spec.height

        def distance(item: tuple[str, tuple[int, int] | None]) -> tuple[bool, float, int]:
            w, h = item[1] or (1, 1)
            upscale = max(spec.width / w, spec.height / h)  # > 1: the model's frame must be enlarged
            # Up to 5 % enlargement is invisible (832x480 for an 854x480 delivery): take the smaller.
            return ((w >= h) != landscape, upscale if upscale > 1.05 else 1.0, w * h)

        return min(sizes, key=distance)[0]
    lines: list[tuple[int, str]] = [(n, v) for v in enum if isinstance(v, str) and (n := _lines(v))]
    if lines:  # "720p": the smallest that is at least ours, else the largest offered
        wanted = min(spec.width, spec.height)
        big_enough = sorted(item for item in lines if item[0] >= wanted)
        return big_enough[0][1] if big_enough else max(lines)[1]
    ratios = [v for v in enum if isinstance(v, str) and v in ("16:9", "9:16")]
    if ratios and value == "1:1":  # no square: the closer of the two (equal: landscape), cropped
        return "16:9" if "16:9" in ratios else ratios[0]
    return None


def _lines(value: str) -> int | None:
    """480 for ``"480p"``: a resolution named by its lines."""
    return int(value[:-1]) if value.endswith("p") and value[:-1].isdigit() else None


def _size(value: str) -> tuple[int, int] | None:
    for sep in ("*", "x"):
        parts = value.split(sep)
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            return int(parts[0]), int(parts[1])
    return None
