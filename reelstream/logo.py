"""The brand's logo: fetched through the SSRF guard, checked, and never a reason to fail the order.

``brand.logo_url`` is user input pointing anywhere: the fetch goes through
:func:`reelstream.storage.download` (public addresses only, every redirect re-checked, a byte cap),
and the bytes must decode as a PNG, JPEG or WebP of at most 4096 px a side. Anything else yields no
logo and a reason the compliance report shows, and the video is made without it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from reelstream import storage

log = logging.getLogger(__name__)

MAX_BYTES = 2 * 1024 * 1024
#: A logo host gets this long: a clip's finishing must not wait minutes on a slow image server.
FETCH_SECONDS = 20.0
MAX_SIDE = 4096
FORMATS = frozenset({"PNG", "JPEG", "WEBP"})


@dataclass(frozen=True)
class LogoResult:
    """The decoded logo (RGBA), or None and why."""

    image: Image.Image | None
    reason: str | None

    @property
    def report(self) -> str:
        """The compliance report's ``logo``: ``placed`` or the reason."""
        return "placed" if self.image is not None else (self.reason or "none")


def decode(path: Path) -> LogoResult:
    """Open and check a downloaded logo (CPU and file work: call it in a thread)."""
    try:
        with Image.open(path) as probe:
            fmt = probe.format or "unknown"
            if fmt not in FORMATS:
                return LogoResult(None, f"not used: the logo is {fmt}, not PNG, JPEG or WebP")
            if max(probe.size) > MAX_SIDE:
                return LogoResult(
                    None, f"not used: the logo is {probe.width}x{probe.height}, larger than {MAX_SIDE} px"
                )
            probe.load()
            return LogoResult(probe.convert("RGBA"), None)
    except (UnidentifiedImageError, Image.DecompressionBombError):
        return LogoResult(None, "not used: the logo URL did not return an image")
    except (OSError, ValueError) as exc:
        return LogoResult(None, f"not used: the logo could not be decoded ({type(exc).__name__})")


async def fetch(url: str, work_dir: Path, *, allow_private: bool) -> LogoResult:
    """Download and check the logo; every failure becomes a reason, never an exception.

    A transient failure (host down) is not retried here: the clip's finishing must not wait on a logo
    host, and the report tells the customer the logo was not placed and why.
    """
    dest = work_dir / "logo.bin"
    try:
        async with asyncio.timeout(FETCH_SECONDS):
            await storage.download(url, dest, max_bytes=MAX_BYTES, allow_private=allow_private)
    except TimeoutError:
        return LogoResult(None, f"not used: the logo host did not answer within {FETCH_SECONDS:.0f} s")
    except storage.StorageError as exc:
        text = str(exc)
        if "larger than" in text:
            return LogoResult(None, f"not used: the logo is larger than {MAX_BYTES // (1024 * 1024)} MiB")
        log.info("logo not fetched: %s", text)
        return LogoResult(None, f"not used: the logo could not be fetched ({_short(text)})")
    except (OSError, ValueError) as exc:  # most aiohttp errors are OSErrors or ValueErrors
        log.info("logo not fetched: %r", exc)
        return LogoResult(None, f"not used: the logo could not be fetched ({type(exc).__name__})")
    except Exception as exc:  # aiohttp.ClientError and friends: a bad logo never fails the order
        log.info("logo not fetched: %r", exc)
        return LogoResult(None, f"not used: the logo could not be fetched ({type(exc).__name__})")
    return await asyncio.to_thread(decode, dest)


def _short(text: str) -> str:
    """The first clause of an error, without the URL (the report should not echo query strings)."""
    for marker in (" answered ", "refusing", "cannot resolve", "too many redirects", "only http"):
        if marker in text:
            start = text.index(marker)
            return text[start:].strip()[:120]
    return text[:120]
