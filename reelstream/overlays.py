"""The brand's layers over a scene, drawn as transparent PNGs the finishing step lays over the video.

Text is laid out and drawn here with Pillow (FreeType metrics of the very font used), not with
ffmpeg's drawtext: wrapping needs real glyph widths, the contrast rule needs known colours under the
text, and no user string ever reaches an ffmpeg filter graph this way. Two layers per scene:

- the *scene layer*: the caption (inside the platform-safe area, on a box in the brand's colour) and
  the logo in the top-right corner of the safe area;
- the *end card*: a panel over the safe area with the brand name, tagline, call to action and the
  required disclaimer (every line at least 3.5 % of the frame height, contrast at least 4.5:1 against
  the panel, which is darkened until it is), and the logo again.

Everything is CPU work: callers run these functions in a thread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from reelstream import fonts

#: 9:16 platforms cover the top 14 % (account name, search) and bottom 20 % (caption, buttons).
PORTRAIT_TOP = 0.14
PORTRAIT_BOTTOM = 0.20
PORTRAIT_SIDE = 0.06
#: Landscape and square players draw nothing over the frame; a title-safe margin is enough.
MARGIN = 0.05
#: Smallest end-card text: its font size (em) as a fraction of the frame height.
MIN_TEXT_FRACTION = 0.035
#: WCAG 2 AA contrast for normal text.
MIN_CONTRAST = 4.5
#: Share of the end card's inner height the disclaimer may take at the minimum size; above it the
#: request is refused (422), because the rest of the card must still fit.
DISCLAIMER_SHARE = 0.5
LINE_SPACING = 1.2
LIGHT_TEXT = "#FFFFFF"
DARK_TEXT = "#111111"
DEFAULT_BACKING = "#1E3A8A"


@dataclass(frozen=True)
class Box:
    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top


def safe_area(width: int, height: int) -> Box:
    """Where text and logo may go: for 9:16 clear of the top 14 % and bottom 20 %."""
    if height > width:
        return Box(
            round(width * PORTRAIT_SIDE),
            math.ceil(height * PORTRAIT_TOP),
            width - round(width * PORTRAIT_SIDE),
            math.floor(height * (1 - PORTRAIT_BOTTOM)),
        )
    mx, my = round(width * MARGIN), round(height * MARGIN)
    return Box(mx, my, width - mx, height - my)


def min_text_px(height: int) -> int:
    """The smallest font size on the end card: 3.5 % of the frame height, rounded up."""
    return math.ceil(height * MIN_TEXT_FRACTION)


# --------------------------------------------------------------------------- colour


def _rgb(hex_color: str) -> tuple[int, int, int]:
    value = hex_color.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#" + "".join(f"{c:02X}" for c in rgb)


def luminance(hex_color: str) -> float:
    """WCAG 2 relative luminance of an sRGB colour."""

    def channel(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.04045 else ((s + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in _rgb(hex_color))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    """WCAG 2 contrast ratio of two colours (1 to 21)."""
    la, lb = sorted((luminance(a), luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


@dataclass(frozen=True)
class Colours:
    backing: str
    text: str
    ratio: float


def readable(backing: str | None) -> Colours:
    """Text colour for a backing, the backing darkened step by step until the pair reaches 4.5:1."""
    colour = backing or DEFAULT_BACKING
    while True:
        text = max((LIGHT_TEXT, DARK_TEXT), key=lambda t: contrast(t, colour))
        ratio = contrast(text, colour)
        if ratio >= MIN_CONTRAST:
            return Colours(colour, text, ratio)
        colour = _hex(tuple(int(c * 0.85) for c in _rgb(colour)))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- text


def wrap(
    text: str, font: ImageFont.FreeTypeFont, max_width: int, *, break_words: bool = True
) -> list[str] | None:
    """Lines of ``text`` no wider than ``max_width``; explicit line breaks kept.

    A word wider than the line is cut into pieces when ``break_words``, else the answer is None (the
    disclaimer is legal text: it is never cut mid-word).
    """
    lines: list[str] = []
    for paragraph in text.replace("\r\n", "\n").split("\n"):
        words = paragraph.split()
        current = ""
        for word in words:
            candidate = f"{current} {word}" if current else word
            if font.getlength(candidate) <= max_width:
                current = candidate
                continue
            if current:
                lines.append(current)
            if font.getlength(word) <= max_width:
                current = word
                continue
            if not break_words:
                return None
            piece = ""
            for ch in word:
                if font.getlength(piece + ch) > max_width and piece:
                    lines.append(piece)
                    piece = ch
                else:
                    piece += ch
            current = piece
        if current:
            lines.append(current)
    return lines


def _line_height(size: int) -> int:
    return round(size * LINE_SPACING)


@dataclass(frozen=True)
class Block:
    lines: list[str]
    font: ImageFont.FreeTypeFont
    size: int

    @property
    def height(self) -> int:
        return len(self.lines) * _line_height(self.size)


def _draw_block(draw: ImageDraw.ImageDraw, block: Block, centre_x: int, top: int, fill: str) -> int:
    """Draw the lines centred on ``centre_x`` from ``top``; returns the y below the block."""
    y = top
    for line in block.lines:
        draw.text((centre_x, y), line, font=block.font, fill=fill, anchor="ma")
        y += _line_height(block.size)
    return y


# --------------------------------------------------------------------------- layout pieces


def _padding(width: int, height: int) -> int:
    return max(6, round(min(width, height) * 0.035))


def end_card_inner(width: int, height: int) -> Box:
    """The end card panel's text area (the safe area less padding)."""
    safe = safe_area(width, height)
    pad = _padding(width, height)
    return Box(safe.left + pad, safe.top + pad, safe.right - pad, safe.bottom - pad)


def disclaimer_block(disclaimer: str, font_path: Path, width: int, height: int) -> Block | None:
    """The disclaimer wrapped at the minimum legible size; None when a word is wider than the card."""
    size = min_text_px(height)
    font = fonts.load(font_path, size)
    lines = wrap(" ".join(disclaimer.split()), font, end_card_inner(width, height).width, break_words=False)
    return None if lines is None else Block(lines, font, size)


def disclaimer_problem(disclaimer: str, width: int, height: int, font_path: Path | None = None) -> str | None:
    """Why ``disclaimer`` cannot be shown legibly on a ``width``x``height`` end card, or None if it can.

    Measured with the real font (the shipped fallback unless given): at the minimum size (3.5 % of the
    frame height) it must fit the card's width word by word and take at most half the card's height.
    """
    path = font_path or fonts.shipped("DejaVuSans.ttf")
    block = disclaimer_block(disclaimer, path, width, height)
    if block is None:
        return f"a word is wider than a {width}x{height} end card at the minimum legible size"
    room = end_card_inner(width, height).height * DISCLAIMER_SHARE
    if block.height > room:
        fit = int(room // _line_height(block.size))
        return (
            f"too long to be legible on a {width}x{height} end card: it needs {len(block.lines)} lines"
            f" at the minimum size ({min_text_px(height)} px), at most {fit} fit"
        )
    return None


@dataclass(frozen=True)
class Logo:
    """The logo scaled for one frame size, and where it goes (top-right corner of the safe area)."""

    image: Image.Image
    box: Box


def place_logo(logo: Image.Image, width: int, height: int) -> Logo:
    """Fit the logo in a square of 14 % of the shorter side, in the safe area's top-right corner."""
    side = max(8, round(min(width, height) * 0.14))
    scaled = logo.copy()
    scaled.thumbnail((side, side), Image.Resampling.LANCZOS)
    safe = safe_area(width, height)
    left = safe.right - scaled.width
    return Logo(scaled, Box(left, safe.top, safe.right, safe.top + scaled.height))


def _canvas(width: int, height: int) -> Image.Image:
    return Image.new("RGBA", (width, height), (0, 0, 0, 0))


def _paste_logo(canvas: Image.Image, logo: Logo | None) -> None:
    if logo is not None:
        canvas.alpha_composite(logo.image.convert("RGBA"), (logo.box.left, logo.box.top))


def scene_layer(
    *,
    width: int,
    height: int,
    caption: str,
    colour: str | None,
    font: fonts.FontChoice,
    logo: Logo | None,
) -> Image.Image | None:
    """Caption (bottom of the safe area, brand-coloured box) and logo; None when there is neither."""
    caption = " ".join(caption.split()) if caption else ""
    if not caption and logo is None:
        return None
    canvas = _canvas(width, height)
    if caption:
        safe = safe_area(width, height)
        pad = _padding(width, height)
        size = max(12, round(min(width, height) * 0.055))
        while True:
            face = fonts.load(font.bold, size)
            lines = wrap(caption, face, safe.width - 2 * pad) or []
            block = Block(lines, face, size)
            if block.height <= safe.height * 0.3 or size <= 12:
                break
            size -= 2
        colours = readable(colour)
        box_w = max(round(face.getlength(line)) for line in lines) + 2 * pad
        # Drawn rectangles include their last row: stop short of the safe edge (and of x264's blur).
        bottom = safe.bottom - max(2, pad // 4)
        box = Box((width - box_w) // 2, bottom - block.height - 2 * pad, (width + box_w) // 2, bottom)
        draw = ImageDraw.Draw(canvas)
        draw.rounded_rectangle(
            (box.left, box.top, box.right, box.bottom), radius=pad // 2, fill=colours.backing
        )
        _draw_block(draw, block, width // 2, box.top + pad, colours.text)
    _paste_logo(canvas, logo)
    return canvas


@dataclass(frozen=True)
class EndCard:
    image: Image.Image
    colours: Colours
    #: Whether the disclaimer is on the card (it always is when given; kept for the report).
    disclaimer: bool


def end_card_layer(
    *,
    width: int,
    height: int,
    brand_name: str | None,
    tagline: str | None,
    cta: str | None,
    disclaimer: str | None,
    colour: str | None,
    font: fonts.FontChoice,
    logo: Logo | None,
) -> EndCard:
    """The closing panel over the safe area; every line at least 3.5 % of the frame height."""
    safe = safe_area(width, height)
    inner = end_card_inner(width, height)
    if logo is not None:  # keep the text clear of the logo in the corner
        inner = Box(
            inner.left,
            max(inner.top, logo.box.bottom + _padding(width, height) // 2),
            inner.right,
            inner.bottom,
        )
    smallest = min_text_px(height)
    colours = readable(colour)
    base = min(width, height)

    blocks: list[Block] = []
    legal: Block | None = None
    if disclaimer:
        legal = disclaimer_block(disclaimer, font.regular, width, height)
        if legal is None or legal.height > inner.height * DISCLAIMER_SHARE:
            # The brand font is wider than the fallback the request was checked with: use the fallback.
            legal = disclaimer_block(disclaimer, fonts.shipped("DejaVuSans.ttf"), width, height)
        assert legal is not None, "the gateway refuses disclaimers that cannot fit"
    room = inner.height - (legal.height + smallest if legal else 0)
    wanted = [(brand_name, font.bold, 0.10), (cta, font.bold, 0.065), (tagline, font.regular, 0.05)]
    for shrink in range(0, 12):
        blocks = []
        for text, path, share in wanted:
            if not text:
                continue
            size = max(smallest, round(base * share * (0.9**shrink)))
            face = fonts.load(path, size)
            lines = wrap(" ".join(text.split()), face, inner.width) or []
            blocks.append(Block(lines, face, size))
        gaps = max(0, len(blocks) - 1) * (smallest // 2)
        if sum(b.height for b in blocks) + gaps <= room:
            break
    else:
        blocks = blocks[:2]  # the tagline goes first when nothing else helps

    canvas = _canvas(width, height)
    draw = ImageDraw.Draw(canvas)
    draw.rounded_rectangle(
        (safe.left, safe.top, safe.right, safe.bottom), radius=_padding(width, height), fill=colours.backing
    )
    used = sum(b.height for b in blocks) + max(0, len(blocks) - 1) * (smallest // 2)
    y = inner.top + max(0, (room - used) // 2)  # the name, call and tagline centred above the legal line
    for block in blocks:
        y = _draw_block(draw, block, width // 2, y, colours.text) + smallest // 2
    if legal is not None:
        _draw_block(draw, legal, width // 2, inner.bottom - legal.height, colours.text)
    _paste_logo(canvas, logo)
    return EndCard(canvas, colours, disclaimer=legal is not None)
