"""Clip specs: one compliant micro-prompt, caption and render settings per planned clip.

Video models take short prompts, so each prompt is assembled from prioritised parts and trimmed by
dropping the least important parts first. Brand compliance is enforced here, at the last step before
anything reaches a provider or the screen: avoided words are removed from every prompt and caption
(including text the user wrote), and the required disclaimer is put on the closing caption.
"""

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from reelstream.wording import has_avoided, remove_words
from schemas.api import DELIVERY_SIZES, Analysis, GenerationRequest, Scene, SceneKind
from schemas.events import ClipPlan, ClipSpec

MAX_CAPTION_CHARS = 90
MAX_SUBJECT_CHARS = 300
MIN_TRUNCATED_CHARS = 20
MAX_VISUALS = 4
SEPARATOR = ". "
SEED_MODULUS = 2**32  # providers take 32-bit unsigned seeds

DEFAULT_NEGATIVE: tuple[str, ...] = (
    "blurry",
    "low quality",
    "distorted text",
    "watermark",
    "flicker",
    "flashing lights",
    "deformed",
)
ACCESSIBILITY = "Legible on-screen text with strong contrast, no flashing or strobing"
QUALITY = "cinematic lighting, smooth camera motion, high detail"
PURPOSE: dict[SceneKind, tuple[str, str]] = {
    "intro": ("Opening hook shot", ""),
    "development": ("Story shot", ""),
    "cta": ("Closing call-to-action shot", ", clean space for the end text"),
}
FRAMING: dict[str, str] = {
    "16:9": "widescreen horizontal framing",
    "9:16": "vertical mobile framing, subject centred",
    "1:1": "square framing, subject centred",
}
DEFAULT_PALETTES: dict[str, list[str]] = {
    "warm": ["#FF6B35", "#F7C548", "#D7263D"],
    "cool": ["#1B6CA8", "#3FB8AF", "#E8F1F2"],
    "neutral": ["#1A1A1A", "#F5F5F5", "#B8A07E"],
}

#: Characters trimmed from the ends of cut or cleaned text (spaces, punctuation, dashes).
_TRIM = " ,;:-\u2013\u2014"


@dataclass(frozen=True)
class Part:
    """A piece of a prompt; the lowest ``priority`` goes first when the prompt is too long.

    A ``truncatable`` part (free text such as a description) is shortened at a word boundary
    rather than dropped, as long as a useful piece of it remains.
    """

    text: str
    priority: int
    truncatable: bool = False


# --- compliance --------------------------------------------------------------------------------


# --- prompt trimming ---------------------------------------------------------------------------


def cut_at_word(text: str, limit: int) -> str:
    """The longest prefix of ``text`` of at most ``limit`` characters that ends between words."""
    if len(text) <= limit:
        return text
    if limit <= 0:
        return ""
    head = text[: limit + 1]
    space = head.rfind(" ")
    return head[:space].rstrip(_TRIM) if space > 0 else ""


def _length(parts: Sequence[Part]) -> int:
    return sum(len(p.text) for p in parts) + len(SEPARATOR) * max(len(parts) - 1, 0)


def _lowest(parts: Sequence[Part]) -> int:
    """Index of the part to give up first: lowest priority, the later one on a tie."""
    return min(range(len(parts)), key=lambda i: (parts[i].priority, -i))


def fit_parts(parts: Sequence[Part], limit: int) -> str:
    """Join ``parts`` in order, dropping (or shortening) the least important until within ``limit``."""
    kept = [p for p in parts if p.text]
    while kept and _length(kept) > limit:
        i = _lowest(kept)
        part = kept[i]
        if part.truncatable or len(kept) == 1:
            room = len(part.text) - (_length(kept) - limit)
            cut = cut_at_word(part.text, room)
            if len(kept) == 1 and not cut:
                cut = part.text[: max(room, 0)]  # a single word longer than the limit: nothing else fits
            if cut and (len(cut) >= MIN_TRUNCATED_CHARS or len(kept) == 1):
                kept[i] = Part(cut, part.priority, part.truncatable)
                continue
        del kept[i]
    return SEPARATOR.join(p.text for p in kept)


# --- prompt parts ------------------------------------------------------------------------------


def _sentence(text: str) -> str:
    """Text as one prompt part: one line, capitalised, no final stop (the separator adds it)."""
    text = " ".join(text.split()).rstrip(".!?…")
    return text[:1].upper() + text[1:]


def _visuals(analysis: Analysis) -> str:
    ranked = sorted(analysis.visual_elements, key=lambda e: -e.importance)
    names = [e.name for e in ranked[:MAX_VISUALS]]
    return f"Key visuals: {', '.join(names)}" if names else ""


def _brand_parts(analysis: Analysis) -> list[Part]:
    brand = analysis.brand
    if brand is None:
        return []
    parts: list[Part] = []
    if brand.palette:
        parts.append(Part(f"Brand colours {', '.join(brand.palette)}", 60))
    if brand.typography:
        parts.append(Part(f"Typography in the style of {', '.join(brand.typography)}", 40))
    return parts


def prompt_parts(
    request: GenerationRequest, analysis: Analysis, scene: Scene, shot: int, shots: int
) -> list[Part]:
    """Everything a prompt could say about one clip, in reading order, each with its priority."""
    label, detail = PURPOSE[scene.kind]
    purpose = label + (f" {shot} of {shots}" if shots > 1 else "") + detail
    parts = [
        Part(purpose, 100, truncatable=True),
        Part(scene.description, 90, truncatable=True),
        Part(_visuals(analysis), 80),
        Part(f"{analysis.tone} tone, {analysis.style} style, {analysis.pacing} pacing", 70),
        Part("Subject: " + cut_at_word(request.prompt, MAX_SUBJECT_CHARS), 65, truncatable=True),
        *_brand_parts(analysis),
        Part(f"Colour mood: {analysis.color_mood}", 55),
        Part(ACCESSIBILITY, 50),
        Part(FRAMING[request.aspect_ratio], 45),
        Part(QUALITY, 30),
    ]
    return [Part(_sentence(p.text), p.priority, p.truncatable) for p in parts]


def build_prompt(parts: Sequence[Part], avoid: Sequence[str], limit: int) -> str:
    """Scrub avoided words from each part, fit the parts to ``limit``, scrub the result again."""
    clean = [Part(remove_words(p.text, avoid), p.priority, p.truncatable) for p in parts]
    return remove_words(fit_parts(clean, limit), avoid)


def negative_prompt(request: GenerationRequest) -> str:
    """The default exclusions plus the user's, comma-separated, without duplicates (any case)."""
    user = re.split(r"[,;\n]+", request.options.negative_prompt or "")
    terms: dict[str, str] = {}
    for term in (*DEFAULT_NEGATIVE, *user):
        term = " ".join(term.split())
        if term:
            terms.setdefault(term.casefold(), term)
    return ", ".join(terms.values())


# --- captions ----------------------------------------------------------------------------------


def _first_clean(candidates: Iterable[str | None], avoid: Sequence[str], limit: int) -> str:
    """The first candidate free of avoided words; failing that, the first that survives scrubbing.

    On-screen text with a word cut out reads badly ("Not, better than any"), so a caption prefers
    another message that needs no scrubbing at all.
    """
    texts = [c for c in candidates if c and c.strip()]
    for text in texts:
        if not has_avoided(text, avoid):
            return _shorten(text, limit)
    for text in texts:
        scrubbed = _shorten(remove_words(text, avoid), limit)
        if scrubbed:
            return scrubbed
    return ""


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    return (cut_at_word(text, limit - 1) or text[: limit - 1]) + "…"


def _intro_caption(analysis: Analysis, avoid: Sequence[str]) -> str:
    brand = analysis.brand.name if analysis.brand is not None else None
    hooks = [m.rstrip(".") for m in analysis.key_messages]
    return _first_clean([brand, *hooks, *analysis.key_themes], avoid, MAX_CAPTION_CHARS)


def _development_caption(analysis: Analysis, avoid: Sequence[str], ordinal: int) -> str:
    """A key message per development clip, in turn; the intro already used the first when unbranded."""
    messages = [m.rstrip(".") for m in analysis.key_messages]
    if analysis.brand is None and len(messages) > 1:
        messages = messages[1:]
    if messages:
        rotated = messages[ordinal % len(messages) :] + messages[: ordinal % len(messages)]
        return _first_clean(rotated, avoid, MAX_CAPTION_CHARS)
    return _first_clean(analysis.key_themes, avoid, MAX_CAPTION_CHARS)


def _cta_caption(analysis: Analysis, avoid: Sequence[str]) -> str:
    """The call to action, followed by the tagline when both fit and the tagline is compliant as is."""
    cta = _first_clean([analysis.call_to_action.text], avoid, MAX_CAPTION_CHARS)
    tagline = analysis.brand.tagline if analysis.brand is not None else None
    room = MAX_CAPTION_CHARS - len(cta) - 3
    usable = tagline is not None and room > 10 and not has_avoided(tagline, avoid)
    slogan = _shorten(tagline, room) if tagline and usable else ""
    return " — ".join(t for t in (cta, slogan) if t)


def caption(analysis: Analysis, kind: SceneKind, avoid: Sequence[str], ordinal: int) -> str:
    """Short on-screen text for a clip; ``ordinal`` counts the clips of that kind so far."""
    if kind == "intro":
        return _intro_caption(analysis, avoid)
    if kind == "development":
        return _development_caption(analysis, avoid, ordinal)
    return _cta_caption(analysis, avoid)


def _disclaimer_index(clips: Sequence[ClipPlan]) -> int | None:
    """The clip that carries the required disclaimer: the last cta clip, else the last clip."""
    ctas = [i for i, c in enumerate(clips) if c.scene_kind == "cta"]
    if ctas:
        return ctas[-1]
    return len(clips) - 1 if clips else None


def _with_disclaimer(text: str, disclaimer: str | None) -> str:
    """The disclaimer goes verbatim on its own line: legal text is never shortened or reworded."""
    if not disclaimer:
        return text
    return f"{text}\n{disclaimer}" if text else disclaimer


# --- specs -------------------------------------------------------------------------------------


def palette(analysis: Analysis) -> list[str]:
    """The brand palette, else a default palette matching the warm/cool/neutral colour mood."""
    if analysis.brand is not None and analysis.brand.palette:
        return list(analysis.brand.palette)
    mood = analysis.color_mood.lower()
    found = [(m.start(), t) for t in ("warm", "cool", "cold") if (m := re.search(rf"\b{t}", mood))]
    temperature = min(found)[1] if found else "neutral"
    return list(DEFAULT_PALETTES["cool" if temperature == "cold" else temperature])


def _seed(request: GenerationRequest, index: int) -> int | None:
    seed = request.options.seed
    return None if seed is None else (seed + index) % SEED_MODULUS


def _scene_index(scenes: Sequence[Scene], clips: Sequence[ClipPlan]) -> dict[str, Scene]:
    by_id = {s.scene_id: s for s in scenes}
    missing = sorted({c.scene_id for c in clips} - by_id.keys())
    if missing:
        raise ValueError(f"clips refer to unknown scenes: {', '.join(missing)}")
    return by_id


def build_clip_specs(
    request: GenerationRequest,
    analysis: Analysis,
    scenes: list[Scene],
    clips: list[ClipPlan],
    *,
    max_prompt_chars: int = 1000,
) -> list[ClipSpec]:
    """One :class:`ClipSpec` per planned clip, in the order given.

    Every prompt is at most ``max_prompt_chars`` long and, like every caption, free of the brand's
    avoided words; the required disclaimer closes the last call-to-action caption.
    """
    if max_prompt_chars < 1:
        raise ValueError("max_prompt_chars must be positive")
    by_id = _scene_index(scenes, clips)
    avoid = analysis.brand.avoid_words if analysis.brand is not None else []
    disclaimer = analysis.brand.required_disclaimer if analysis.brand is not None else None
    shots = Counter(c.scene_id for c in clips)
    width, height = DELIVERY_SIZES[(request.aspect_ratio, request.options.resolution)]
    seen_in_scene: Counter[str] = Counter()
    seen_of_kind: Counter[str] = Counter()
    closing = _disclaimer_index(clips)
    specs: list[ClipSpec] = []
    for position, clip in enumerate(clips):
        scene = by_id[clip.scene_id]
        seen_in_scene[clip.scene_id] += 1
        parts = prompt_parts(request, analysis, scene, seen_in_scene[clip.scene_id], shots[clip.scene_id])
        text = caption(analysis, clip.scene_kind, avoid, seen_of_kind[clip.scene_kind])
        seen_of_kind[clip.scene_kind] += 1
        specs.append(
            ClipSpec(
                clip_id=clip.clip_id,
                scene_id=clip.scene_id,
                scene_kind=clip.scene_kind,
                index=clip.index,
                duration_seconds=clip.duration_seconds,
                aspect_ratio=request.aspect_ratio,
                width=width,
                height=height,
                prompt=build_prompt(parts, avoid, max_prompt_chars),
                negative_prompt=negative_prompt(request),
                caption=_with_disclaimer(text, disclaimer) if position == closing else text,
                colors=palette(analysis),
                seed=_seed(request, clip.index),
            )
        )
    return specs
