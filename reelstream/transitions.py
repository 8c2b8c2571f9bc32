"""Crossfades made as soon as both of their clips are finished, kept here until the join takes them.

A crossfade needs the pieces on both sides of its boundary, so the join used to make every one of them
after the last webhook: about as much CPU as finishing a clip, for a 15 s order's three boundaries. Now
the completion stage makes each as soon as its second piece is finished (:func:`prepare`), and the join
takes what is ready (:func:`ready`) and makes only the rest: after the last webhook there remain the
last clip's finishing, its own one or two boundaries, and the stream-copy join.

They are kept in a directory of this process's own, not in storage: the contract's storage layout is
the clips, the final video and its thumbnail, and nothing else. A join in another process (a second
completion instance) finds none and makes them itself: slower, never wrong. A crossfade is named by the
bytes of its two pieces, so a clip finished again (another attempt) never meets a stale one.
"""

import asyncio
import hashlib
import logging
import time
from pathlib import Path

from reelstream import media, metrics

log = logging.getLogger(__name__)

#: Crossfades no join has taken after this long (their order failed or was canceled) are removed.
KEEP_SECONDS = 3600.0


def _directory() -> Path:
    return media.scratch_dir("transitions")


def _digest(path: Path) -> bytes:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").digest()


def _name(tail: bytes, head: bytes) -> str:
    """The file name of the crossfade between pieces with these digests."""
    return f"{hashlib.sha256(tail + head).hexdigest()[:40]}-{media.CROSSFADE_HALF}-{media.FPS}.mp4"


async def _path(tail: Path, head: Path) -> Path:
    digests = await asyncio.to_thread(lambda: [_digest(tail), _digest(head)])
    return _directory() / _name(*digests)


async def prepare(tail: Path, tail_frames: int, head: Path, head_frames: int) -> bool:
    """Make the crossfade between finished pieces ``tail`` and ``head`` unless it is here already.

    Returns whether one is here now. Never raises for a failed encode: the join makes it instead. Two
    neighbours finishing at once in this process make it once (the second waits for the first).
    """
    if not media.fades_between(tail_frames, head_frames):
        return False
    path = await _path(tail, head)
    if path.is_file() or await _made_meanwhile(path):
        return path.is_file()
    done = asyncio.get_running_loop().create_future()
    _making[path.name] = done
    try:
        await media.transition(tail, tail_frames, head, head_frames, path)
    except media.MediaError as exc:
        log.warning("a crossfade could not be made early (the join will make it): %s", exc)
        return False
    finally:
        _making.pop(path.name, None)
        done.set_result(None)
    metrics.TRANSITIONS.labels("early").inc()
    await asyncio.to_thread(_prune)
    return True


async def ready(pieces: list[Path], frames: list[int]) -> dict[int, Path]:
    """The crossfades already made between consecutive ``pieces``, by boundary (0: after the first);
    one being made in this process right now is waited for (it is nearly done: cheaper than another)."""
    found: dict[int, Path] = {}
    digests = await asyncio.to_thread(lambda: [_digest(piece) for piece in pieces])  # each read once
    for i in range(len(pieces) - 1):
        if media.fades_between(frames[i], frames[i + 1]):
            path = _directory() / _name(digests[i], digests[i + 1])
            if path.is_file() or (await _made_meanwhile(path) and path.is_file()):
                found[i] = path
            else:
                metrics.TRANSITIONS.labels("at_join").inc()
    return found


#: Crossfades being made in this process now, by file name: their makers resolve these when done.
_making: dict[str, asyncio.Future[None]] = {}


async def _made_meanwhile(path: Path) -> bool:
    """Wait for ``path`` if this process is making it now; whether it was being made."""
    making = _making.get(path.name)
    if making is None or making.get_loop() is not asyncio.get_running_loop():
        return False
    await asyncio.shield(making)
    return True


async def forget(paths: list[Path]) -> None:
    """Remove crossfades the join has used."""

    def remove() -> None:
        for path in paths:
            path.unlink(missing_ok=True)

    await asyncio.to_thread(remove)


def _prune() -> None:
    cutoff = time.time() - KEEP_SECONDS
    for path in _directory().glob("*.mp4"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
        except OSError:
            continue
