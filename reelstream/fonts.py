"""Which font file draws a brand's text: the brand's own through fontconfig, else the one we ship.

A brand names fonts by family ("Inter"). ``fc-match`` always answers with *some* font, so its answer is
only taken when the family it returns is the one asked for; otherwise the next brand font is tried,
and in the end the open-licence DejaVu Sans shipped in ``reelstream/assets/fonts`` (Bitstream Vera
licence, copied from Debian's fonts-dejavu-core) is used. A fresh machine without any system fonts
therefore still draws the same text, and the detail says which font was used and why.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from PIL import ImageFont

log = logging.getLogger(__name__)

FALLBACK_FAMILY = "DejaVu Sans"
#: A font name is handed to fc-match only when it is plain: letters, digits, spaces, dots and dashes
#: (fontconfig patterns give ``:`` and ``=`` meaning, and a brand font is never named with them).
_PLAIN_NAME = re.compile(r"^[\w .\-]{1,60}$")
_FC_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class FontChoice:
    """The regular and bold files that draw the text, and the sentence the report shows."""

    family: str
    regular: Path
    bold: Path
    note: str


def shipped(name: str) -> Path:
    """Path of a font file shipped in the package (package data, so installs carry it)."""
    return Path(str(resources.files("reelstream") / "assets" / "fonts" / name))


def fallback(reason: str) -> FontChoice:
    """The shipped DejaVu Sans pair, with why it stands in."""
    return FontChoice(
        family=FALLBACK_FAMILY,
        regular=shipped("DejaVuSans.ttf"),
        bold=shipped("DejaVuSans-Bold.ttf"),
        note=f"{FALLBACK_FAMILY} (shipped fallback: {reason})",
    )


@functools.lru_cache(maxsize=64)
def load(path: Path, size: int) -> ImageFont.FreeTypeFont:
    """A FreeType font at ``size`` px; cached because layout measures the same faces again and again."""
    return ImageFont.truetype(str(path), size)


async def _fc_match(pattern: str) -> tuple[str, Path] | None:
    """``(family, file)`` fontconfig picks for ``pattern``; None when fc-match is missing or fails."""
    exe = shutil.which("fc-match")
    if exe is None:
        return None
    proc = await asyncio.create_subprocess_exec(
        exe,
        "-f",
        "%{family}\n%{file}",
        pattern,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), _FC_TIMEOUT_SECONDS)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return None
    lines = out.decode("utf-8", errors="replace").splitlines()
    if proc.returncode != 0 or len(lines) < 2 or not lines[1]:
        return None
    return lines[0], Path(lines[1])


def _same_family(asked: str, answered: str) -> bool:
    """fontconfig lists a family's names comma-separated ("Inter,Inter Display"); any may match."""
    want = asked.casefold().strip()
    return any(name.casefold().strip() == want for name in answered.split(","))


def _usable(path: Path) -> bool:
    try:
        load(path, 12)
        return True
    except OSError:
        return False


async def resolve(names: list[str]) -> FontChoice:
    """The first of the brand's ``names`` that is installed, else the shipped fallback (with why)."""
    if not names:
        return fallback("the brand names no font")
    if shutil.which("fc-match") is None:
        return fallback(f"fontconfig is not installed, so {names[0]!r} cannot be looked up")
    missing: list[str] = []
    for name in names:
        if not _PLAIN_NAME.match(name):
            missing.append(name)
            continue
        regular = await _fc_match(name)
        if regular is None or not _same_family(name, regular[0]):
            missing.append(name)
            continue
        if not await asyncio.to_thread(_usable, regular[1]):
            missing.append(name)
            continue
        bold = await _fc_match(f"{name}:bold")
        bold_ok = (
            bold is not None and _same_family(name, bold[0]) and await asyncio.to_thread(_usable, bold[1])
        )
        bold_path = bold[1] if bold is not None and bold_ok else regular[1]
        return FontChoice(family=name, regular=regular[1], bold=bold_path, note=f"{name} (installed)")
    listed = ", ".join(repr(n) for n in missing)
    return fallback(f"{listed} {'is' if len(missing) == 1 else 'are'} not installed")
