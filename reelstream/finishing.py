"""The brand applied to every clip, whatever the provider rendered: what to draw over which frames.

A generation's :class:`Look` comes from its row (aspect ratio, resolution, brand, options, analysis).
For each clip, :func:`clip_layers` resolves the font, fetches the logo (through the SSRF guard) and
draws the scene layer and, over the last :data:`END_CARD_SECONDS` of the video, the end card, as PNGs
:func:`reelstream.media.finish_clip` burns into the clip's piece. Each clip records a small note (logo
outcome, font, end-card frames); at assembly :func:`report` turns the notes into the detail's
``compliance``. Nothing here fails an order: a bad logo or an unknown font only shows in the report.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from reelstream import fonts, logo, media, overlays, wording
from schemas.api import DELIVERY_SIZES, Analysis, Brand, Compliance, GenerationRequest, Options

#: The end card stays this long (the contract asks for at least 3 s; the rest covers rounding).
END_CARD_SECONDS = 3.5


@dataclass(frozen=True)
class Look:
    """Everything finishing needs to know about one generation's brand and options."""

    width: int
    height: int
    total_frames: int
    captions: bool
    crossfade: bool
    brand_name: str | None = None
    tagline: str | None = None
    cta: str | None = None
    disclaimer: str | None = None
    colour: str | None = None
    font_names: list[str] = field(default_factory=list)
    logo_url: str | None = None
    avoid: list[str] = field(default_factory=list)
    #: Texts whose avoided words were taken out before they reached the screen or a prompt.
    scrubbed_sources: list[str] = field(default_factory=list)

    @classmethod
    def of(
        cls,
        *,
        aspect_ratio: str,
        duration_seconds: float,
        brand: dict[str, Any] | None,
        options: dict[str, Any] | None,
        analysis: dict[str, Any] | None,
        prompt: str = "",
    ) -> Look:
        """Built from the generation row's JSON columns (validated again: the row is the truth)."""
        opts = Options.model_validate(options or {})
        width, height = DELIVERY_SIZES[(aspect_ratio, opts.resolution)]
        the_brand = Brand.model_validate(brand) if brand else None
        the_analysis = Analysis.model_validate(analysis) if analysis else None
        avoid = list(the_brand.guidelines.dont) if the_brand else []
        cta: str | None = None
        if opts.include_cta:
            cta = opts.cta_text or (the_analysis.call_to_action.text if the_analysis else None)
        sources: list[str] = [prompt]
        if the_brand is not None:
            sources += [the_brand.tagline or ""]
        if opts.cta_text:
            sources.append(opts.cta_text)
        if the_analysis is not None:
            sources += [
                *the_analysis.key_messages,
                *the_analysis.key_themes,
                the_analysis.call_to_action.text,
                *(e.name for e in the_analysis.visual_elements),
            ]

        def clean(text: str | None) -> str | None:
            cleaned = wording.remove_words(text, avoid) if text else None
            return cleaned or None

        return cls(
            width=width,
            height=height,
            total_frames=round(duration_seconds * media.FPS),
            captions=opts.captions,
            crossfade=opts.transitions == "crossfade",
            brand_name=the_brand.name if the_brand else None,
            tagline=clean(the_brand.tagline) if the_brand else None,
            cta=clean(cta),
            disclaimer=the_brand.guidelines.required_disclaimer if the_brand else None,
            colour=the_brand.colors[0] if the_brand and the_brand.colors else None,
            font_names=list(the_brand.fonts) if the_brand else [],
            logo_url=the_brand.logo_url if the_brand else None,
            avoid=avoid,
            scrubbed_sources=[s for s in sources if s],
        )


def end_card_start(look: Look, boundaries: list[int]) -> int:
    """First frame of the end card: the last 3.5 s, moved earlier out of a crossfade's second half.

    A crossfade blends ``CROSSFADE_HALF`` frames either side of a boundary; an end card starting in
    the incoming half would be faded in over those frames, so it starts before the fade instead.
    """
    if not any((look.brand_name, look.tagline, look.cta, look.disclaimer)):
        return look.total_frames  # nothing to say: no end card
    start = max(0, look.total_frames - math.ceil(END_CARD_SECONDS * media.FPS))
    if look.crossfade:
        half = media.CROSSFADE_HALF
        for boundary in boundaries:
            if boundary <= start < boundary + half:
                start = max(0, boundary - half)
    return start


@dataclass(frozen=True)
class ClipLayers:
    overlays: list[media.Overlay]
    #: What goes into ``clips.finishing`` (and later the report).
    note: dict[str, Any]


def caption_text(caption: str, disclaimer: str | None) -> str:
    """The clip's on-screen line; the disclaimer is the end card's, so it is not repeated here."""
    if disclaimer and disclaimer in caption:
        caption = caption.replace(disclaimer, "")
    return " ".join(caption.split())


def _draw(
    look: Look,
    *,
    font: fonts.FontChoice,
    logo_image: Image.Image | None,
    caption: str,
    start: int,
    frames: int,
    card_from: int,
    work_dir: Path,
    name: str,
) -> list[media.Overlay]:
    """Draw and save the layers of one clip (CPU and file work: runs in a thread)."""
    placed = overlays.place_logo(logo_image, look.width, look.height) if logo_image is not None else None
    local_card = min(frames, max(0, card_from - start))
    layers: list[media.Overlay] = []
    if local_card > 0:
        scene = overlays.scene_layer(
            width=look.width,
            height=look.height,
            caption=caption_text(caption, look.disclaimer) if look.captions else "",
            colour=look.colour,
            font=font,
            logo=placed,
        )
        if scene is not None:
            path = work_dir / f"{name}-scene.png"
            scene.save(path)
            layers.append(media.Overlay(path, 0, local_card))
    if local_card < frames:
        card = overlays.end_card_layer(
            width=look.width,
            height=look.height,
            brand_name=look.brand_name,
            tagline=look.tagline,
            cta=look.cta,
            disclaimer=look.disclaimer,
            colour=look.colour,
            font=font,
            logo=placed,
        )
        path = work_dir / f"{name}-card.png"
        card.image.save(path)
        layers.append(media.Overlay(path, local_card, frames))
    return layers


async def clip_layers(
    look: Look,
    *,
    caption: str,
    start: int,
    frames: int,
    boundaries: list[int],
    work_dir: Path,
    allow_private: bool,
    name: str = "clip",
) -> ClipLayers:
    """The overlays for the clip covering frames ``[start, start + frames)`` of the video, and its note."""
    font = await fonts.resolve(look.font_names)
    fetched = logo.LogoResult(None, None)
    if look.logo_url:
        fetched = await logo.fetch(look.logo_url, work_dir, allow_private=allow_private)
    card_from = end_card_start(look, boundaries)
    layers = await asyncio.to_thread(
        _draw,
        look,
        font=font,
        logo_image=fetched.image,
        caption=caption,
        start=start,
        frames=frames,
        card_from=card_from,
        work_dir=work_dir,
        name=name,
    )
    card_frames = max(0, start + frames - max(card_from, start)) if start + frames > card_from else 0
    note = {
        "logo": fetched.report if look.logo_url else "none",
        "fonts": font.note,
        "end_card_frames": card_frames,
    }
    return ClipLayers(layers, note)


def report(look: Look, notes: list[dict[str, Any] | None]) -> Compliance:
    """The detail's ``compliance`` from the generation's look and its clips' notes."""
    given = [n for n in notes if n]
    card_frames = sum(int(n.get("end_card_frames", 0)) for n in given)
    logo_outcome = "none"
    if look.logo_url:
        reasons = [str(n.get("logo")) for n in given if n.get("logo") != "placed"]
        logo_outcome = reasons[0] if reasons else "placed"
    return Compliance(
        avoided_words_removed=wording.found(look.scrubbed_sources, look.avoid),
        disclaimer_on_screen_seconds=round(card_frames / media.FPS, 3) if look.disclaimer else None,
        logo=logo_outcome,
        fonts=str(given[-1].get("fonts")) if given else None,
    )


def disclaimer_problem(request: GenerationRequest) -> str | None:
    """Why the request's disclaimer cannot be legible on its video, or None (the gateway's 422)."""
    brand = request.brand
    if brand is None or not brand.guidelines.required_disclaimer:
        return None
    width, height = DELIVERY_SIZES[(request.aspect_ratio, request.options.resolution)]
    return overlays.disclaimer_problem(brand.guidelines.required_disclaimer, width, height)


async def unfit_disclaimer(request: GenerationRequest) -> str | None:
    """:func:`disclaimer_problem` for the gateway: measured in a thread (font files are read), and only
    when there is a disclaimer, so the accept path of every other order stays as it was."""
    brand = request.brand
    if brand is None or not brand.guidelines.required_disclaimer:
        return None
    return await asyncio.to_thread(disclaimer_problem, request)
