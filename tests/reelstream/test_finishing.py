"""The finished ad at the media level: every aspect ratio and resolution, with short real clips.

Each case finishes two plain clips (as a model renders them) with the brand's layers, joins them with a
crossfade and a silent AAC track, and checks what a customer would: the exact size, the length to the
frame, a constant frame rate, an audio track, a filled frame, the logo in its corner and the
disclaimer read back from the end card by OCR (tesseract).
"""

from __future__ import annotations

import io
import itertools
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import av
import pytest
from aiohttp import web
from loopback import serve
from PIL import Image, ImageOps

from reelstream import finishing, media, overlays
from reelstream.media import render_clip
from schemas.api import DELIVERY_SIZES
from schemas.events import ClipSpec

DISCLAIMER = "Terms apply. Offer ends 31 March."
BRAND_COLOUR = "#0A84FF"
MAGENTA = (255, 0, 255)
TESSERACT = shutil.which("tesseract")
needs_tesseract = pytest.mark.skipif(
    TESSERACT is None, reason="the tesseract binary is missing: install the Debian package tesseract-ocr"
)


def logo_png(width: int = 240, height: int = 120, fmt: str = "PNG") -> bytes:
    image = Image.new("RGBA", (width, height), (*MAGENTA, 255))
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
async def logo_host() -> AsyncIterator[str]:
    """A web server with a good logo and the ways a logo URL goes wrong."""
    files: dict[str, tuple[bytes, str]] = {
        "/logo.png": (logo_png(), "image/png"),
        "/page.png": (b"<html>not an image</html>", "image/png"),
        "/heavy.png": (b"\x89PNG" + b"\0" * (3 * 1024 * 1024), "image/png"),
        "/wide.png": (logo_png(5000, 10), "image/png"),
        "/logo.gif": (logo_png(fmt="GIF"), "image/gif"),
    }

    async def handle(request: web.Request) -> web.Response:
        found = files.get(request.path)
        if found is None:
            return web.Response(status=404)
        return web.Response(body=found[0], content_type=found[1])

    app = web.Application()
    app.router.add_get("/{name}", handle)
    runner, port = await serve(app)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def spec(aspect: str, colors: list[str], seed: int) -> ClipSpec:
    width, height = (832, 480) if aspect == "16:9" else (480, 832)  # Wan's 480p shapes
    return ClipSpec(
        clip_id=f"raw-{aspect}-{seed}", scene_id="s", scene_kind="intro", index=0, duration_seconds=1.5,
        aspect_ratio=aspect, width=width, height=height, prompt="p", negative_prompt="", caption="",
        colors=colors, seed=seed,
    )  # fmt: skip


@pytest.fixture(scope="module")
async def raw_clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Plain model-like clips (1.5 s at 16 fps, colourful, no text), landscape and portrait."""
    directory = tmp_path_factory.mktemp("raw")
    out: dict[str, list[Path]] = {}
    for aspect in ("16:9", "9:16"):
        out[aspect] = []
        for seed, colors in enumerate((["#FF3300", "#FFCC00", "#33CC33"], ["#0033FF", "#00CCFF", "#CC33FF"])):
            path = directory / f"{aspect.replace(':', 'x')}-{seed}.mp4"
            await render_clip(spec(aspect, colors, seed), path)
            out[aspect].append(path)
    return out


def source_for(aspect: str) -> str:
    return "9:16" if aspect == "9:16" else "16:9"  # a 1:1 order is rendered landscape and cropped


def brand(logo_url: str | None, **extra: Any) -> dict[str, Any]:
    return {
        "name": "Acme",
        "colors": [BRAND_COLOUR],
        "tagline": "Run further",
        "logo_url": logo_url,
        "guidelines": {"dont": ["cheap"], "required_disclaimer": DISCLAIMER},
        **extra,
    }


async def finish_video(
    look: finishing.Look, raws: list[Path], work: Path, *, captions: list[str] | None = None
) -> tuple[Path, list[dict[str, Any]]]:
    """Finish the raw clips as the completion stage does (2 s each) and assemble them."""
    seconds = look.total_frames / media.FPS / len(raws)
    frames = [media.piece_frames(i * seconds, seconds) for i in range(len(raws))]
    boundaries = [sum(frames[: i + 1]) for i in range(len(frames) - 1)]
    pieces, notes = [], []
    for i, raw in enumerate(raws):
        layers = await finishing.clip_layers(
            look,
            caption=(captions or ["Built for the long climb"] * len(raws))[i],
            start=sum(frames[:i]),
            frames=frames[i],
            boundaries=boundaries,
            work_dir=work,
            allow_private=True,
            name=f"c{i}",
        )
        piece = work / f"piece{i}.mp4"
        await media.finish_clip(
            raw, piece, frames=frames[i], width=look.width, height=look.height,
            overlays=layers.overlays, keyframes=media.crossfade_cuts(frames[i]) if look.crossfade else None,
        )  # fmt: skip
        pieces.append(piece)
        notes.append(layers.note)
    final = work / "final.mp4"
    await media.assemble(pieces, frames, final, crossfade=look.crossfade)
    return final, notes


def frames_at(path: Path, wanted: set[int]) -> dict[int, Image.Image]:
    with av.open(str(path)) as container:
        return {i: f.to_image() for i, f in enumerate(container.decode(video=0)) if i in wanted}


def edge_is_black(image: Image.Image) -> bool:
    """True when an outer band (2 px) of the frame is uniformly black: letterbox or pillarbox."""
    w, h = image.size
    gray = image.convert("L")
    bands = [(0, 0, w, 2), (0, h - 2, w, h), (0, 0, 2, h), (w - 2, 0, w, h)]
    return any((gray.crop(b).getextrema()[1] or 0) < 24 for b in bands)


def is_magenta(pixel: tuple[int, ...]) -> bool:
    r, g, b = pixel[:3]
    return r > 200 and g < 90 and b > 200


def ocr(image: Image.Image, work: Path) -> str:
    """tesseract's reading of ``image`` (grey, enlarged: the text is small on a 480p frame)."""
    path = work / "ocr.png"
    gray = ImageOps.grayscale(image)
    gray = gray.resize((gray.width * 2, gray.height * 2), Image.Resampling.LANCZOS)
    gray.save(path)
    assert TESSERACT is not None
    done = subprocess.run(
        [TESSERACT, str(path), "-", "--psm", "6"], capture_output=True, text=True, timeout=60
    )
    return " ".join(done.stdout.split())


@needs_tesseract
@pytest.mark.parametrize("resolution", ["480p", "720p", "1080p"])
@pytest.mark.parametrize("aspect", ["16:9", "9:16", "1:1"])
async def test_the_finished_ad_for_every_aspect_and_resolution(
    tmp_path: Path, raw_clips: dict[str, list[Path]], logo_host: str, aspect: str, resolution: str
) -> None:
    look = finishing.Look.of(
        aspect_ratio=aspect,
        duration_seconds=4,
        brand=brand(f"{logo_host}/logo.png"),
        options={"resolution": resolution, "cta_text": "Shop now"},
        analysis=None,
        prompt="A cheap shoe for trail runners",
    )
    final, notes = await finish_video(look, raw_clips[source_for(aspect)], tmp_path)
    width, height = DELIVERY_SIZES[(aspect, resolution)]

    info = media.probe(final)
    assert (info.codec, info.pix_fmt, info.width, info.height) == ("h264", "yuv420p", width, height)
    assert info.has_audio and info.audio_codec == "aac"
    with av.open(str(final)) as container:
        video = container.streams.video[0]
        packets = [p for p in container.demux(video) if p.size]
        pts = sorted(p.pts for p in packets if p.pts is not None)
        assert len(packets) == 4 * media.FPS  # exactly the requested length, to the frame
        steps = {b - a for a, b in itertools.pairwise(pts)}
        assert len(steps) == 1 and float(steps.pop() * video.time_base) == pytest.approx(1 / media.FPS)
        assert float(video.duration * video.time_base) == pytest.approx(4.0, abs=1e-6)
        audio = container.streams.audio[0]
        assert float(audio.duration * audio.time_base) == pytest.approx(4.0, abs=0.03)
        assert video.codec_context.color_primaries == 1  # BT.709

    scene_frame, card_frame = 4, 90  # the end card starts at frame 12 (the last 3.5 s)
    frames = frames_at(final, {0, scene_frame, 47, 60, card_frame, 95})
    assert not any(edge_is_black(f) for f in frames.values()), "letterboxed or pillarboxed"

    logo_box = overlays.place_logo(Image.new("RGBA", (240, 120)), width, height).box
    centre = ((logo_box.left + logo_box.right) // 2, (logo_box.top + logo_box.bottom) // 2)
    for i in (scene_frame, card_frame):
        assert is_magenta(frames[i].getpixel(centre)), f"no logo in the corner of frame {i}"

    safe = overlays.safe_area(width, height)
    panel = frames[card_frame].crop((safe.left, safe.top, safe.right, safe.bottom))
    text = ocr(panel, tmp_path).casefold()
    for word in ("terms apply", "offer ends", "march", "acme", "shop now"):
        assert word in text, f"{word!r} not read on the end card: {text!r}"

    report = finishing.report(look, notes)
    assert report.logo == "placed"
    assert report.disclaimer_on_screen_seconds is not None and report.disclaimer_on_screen_seconds >= 3.0
    assert report.avoided_words_removed == ["cheap"]
    assert report.fonts and "DejaVu Sans" in report.fonts


async def test_a_portrait_caption_sits_inside_the_platform_safe_area(
    tmp_path: Path, raw_clips: dict[str, list[Path]]
) -> None:
    def look(captions: bool) -> finishing.Look:
        return finishing.Look.of(
            aspect_ratio="9:16", duration_seconds=8, brand={"name": "Acme", "colors": [BRAND_COLOUR]},
            options={"captions": captions, "resolution": "720p"}, analysis=None,
        )  # fmt: skip

    shown: list[Image.Image] = []
    for captions in (True, False):
        work = tmp_path / str(captions)
        work.mkdir()
        layers = await finishing.clip_layers(
            look(captions), caption="A long caption that wraps over more than one line of the frame",
            start=0, frames=24, boundaries=[], work_dir=work, allow_private=True,
        )  # fmt: skip
        piece = work / "piece.mp4"
        await media.finish_clip(
            raw_clips["9:16"][0], piece, frames=24, width=720, height=1280, overlays=layers.overlays
        )
        shown.append(frames_at(piece, {10})[10])
    diff = Image.frombytes(
        "L",
        shown[0].size,
        bytes(
            abs(a - b) > 40
            for a, b in zip(shown[0].convert("L").tobytes(), shown[1].convert("L").tobytes(), strict=True)
        ),
    ).point(lambda v: 255 if v else 0)
    box = diff.getbbox()
    assert box is not None, "no caption drawn"
    _left, top, _right, bottom = box
    assert top >= 0.14 * 1280 and bottom <= 0.80 * 1280, f"caption rows {top}..{bottom} outside the safe area"
    assert bottom - top > 60  # two lines of real text, not noise


async def test_a_crossfade_keeps_the_length_and_changes_only_the_boundary(
    tmp_path: Path, raw_clips: dict[str, list[Path]]
) -> None:
    results: dict[str, dict[int, Image.Image]] = {}
    for transitions in ("cut", "crossfade"):
        work = tmp_path / transitions
        work.mkdir()
        look = finishing.Look.of(
            aspect_ratio="16:9", duration_seconds=4, brand=None,
            options={"resolution": "480p", "transitions": transitions, "include_cta": False}, analysis=None,
        )  # fmt: skip
        final, _ = await finish_video(look, raw_clips["16:9"], work, captions=["", ""])
        with av.open(str(final)) as container:
            assert sum(1 for p in container.demux(video=0) if p.size) == 96
        results[transitions] = frames_at(final, {20, 46, 47, 48, 75})
    cut, fade = results["cut"], results["crossfade"]

    def distance(a: Image.Image, b: Image.Image) -> float:
        pa, pb = a.convert("L").tobytes(), b.convert("L").tobytes()
        return sum(abs(x - y) for x, y in zip(pa, pb, strict=True)) / len(pa)

    assert distance(cut[47], cut[48]) > 20  # a hard cut between two different scenes
    assert distance(cut[47], fade[47]) > 5 and distance(cut[48], fade[48]) > 5  # dissolved instead
    assert distance(cut[20], fade[20]) < 1 and distance(cut[75], fade[75]) < 1  # the rest untouched


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/missing.png", "could not be fetched (answered 404)"),
        ("/page.png", "did not return an image"),
        ("/heavy.png", "larger than 2 MiB"),
        ("/wide.png", "5000x10, larger than 4096 px"),
        ("/logo.gif", "GIF, not PNG, JPEG or WebP"),
    ],
)
async def test_a_bad_logo_or_font_is_left_out_and_the_report_says_why(
    tmp_path: Path, logo_host: str, path: str, reason: str
) -> None:
    look = finishing.Look.of(
        aspect_ratio="1:1", duration_seconds=5,
        brand=brand(f"{logo_host}{path}", fonts=["No Such Font Sans"]),
        options={"resolution": "480p"}, analysis=None,
    )  # fmt: skip
    layers = await finishing.clip_layers(
        look, caption="Hello", start=0, frames=120, boundaries=[], work_dir=tmp_path, allow_private=True
    )
    assert [o.start for o in layers.overlays] == [0, 36]  # the scene layer, then the end card
    report = finishing.report(look, [layers.note])
    assert report.logo.startswith("not used") and reason in report.logo, report.logo
    assert report.fonts == "DejaVu Sans (shipped fallback: 'No Such Font Sans' is not installed)"
    # The layers carry no logo: the corner is transparent on the scene layer.
    scene = Image.open(layers.overlays[0].image)
    box = overlays.place_logo(Image.new("RGBA", (240, 120)), 480, 480).box
    assert scene.getpixel((box.right - 5, box.top + 5))[3] == 0


async def test_a_private_logo_address_is_refused_by_the_ssrf_guard(tmp_path: Path, logo_host: str) -> None:
    look = finishing.Look.of(
        aspect_ratio="16:9", duration_seconds=5, brand=brand(f"{logo_host}/logo.png"),
        options={"resolution": "480p"}, analysis=None,
    )  # fmt: skip
    layers = await finishing.clip_layers(
        look, caption="", start=0, frames=24, boundaries=[], work_dir=tmp_path, allow_private=False
    )
    assert "non-public address" in layers.note["logo"]


def test_contrast_follows_wcag() -> None:
    assert overlays.contrast("#FFFFFF", "#000000") == pytest.approx(21)
    assert overlays.contrast("#777777", "#777777") == pytest.approx(1)
    for colour in ("#0A84FF", "#FFFF00", "#808080", "#8A8A8A", "#000000", "#FFFFFF"):
        chosen = overlays.readable(colour)
        assert chosen.ratio >= 4.5 and overlays.contrast(chosen.text, chosen.backing) == chosen.ratio


@pytest.mark.parametrize(
    ("disclaimer", "aspect", "fits"),
    [
        (DISCLAIMER, "9:16", True),
        ("Terms and conditions apply. " * 10, "16:9", True),
        ("Terms and conditions apply. " * 10, "9:16", False),
        ("x" * 80, "16:9", False),  # one word wider than the card: legal text is never cut
    ],
)
def test_a_disclaimer_must_fit_at_the_minimum_legible_size(disclaimer: str, aspect: str, fits: bool) -> None:
    for resolution in ("480p", "1080p"):
        width, height = DELIVERY_SIZES[(aspect, resolution)]
        assert (overlays.disclaimer_problem(disclaimer, width, height) is None) is fits


def test_the_end_card_covers_the_last_seconds_and_never_starts_inside_a_fade() -> None:
    def look(**options: Any) -> finishing.Look:
        return finishing.Look.of(
            aspect_ratio="16:9", duration_seconds=15, brand={"name": "Acme"}, options=options, analysis=None
        )

    assert finishing.end_card_start(look(), [120, 240]) == 360 - 84  # the last 3.5 s
    # A boundary 2 frames before the card: the card would fade in; it starts before the fade instead.
    assert finishing.end_card_start(look(), [274]) == 274 - media.CROSSFADE_HALF
    assert finishing.end_card_start(look(transitions="cut"), [274]) == 276
    nothing_to_say = finishing.Look.of(
        aspect_ratio="16:9", duration_seconds=15, brand=None, options={"include_cta": False}, analysis=None
    )
    assert finishing.end_card_start(nothing_to_say, [120]) == 360  # no end card at all
