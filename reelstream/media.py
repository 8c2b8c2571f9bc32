"""FFmpeg and PyAV helpers: render a placeholder clip, finish clips, join them, probe, thumbnail.

Every ffmpeg call goes through :func:`run_ffmpeg`, which uses ``asyncio.create_subprocess_exec``
(no shell, so nothing in a caption or path is ever interpreted) and never blocks the event loop; the
stages that call these helpers also consume Kafka and must keep heartbeating while a video encodes.
Outputs are written to a temporary file next to the target and renamed into place, so a reader
(the uploader, the API, a retry) never sees half an MP4.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import os
import shutil
import tempfile
import uuid
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import imageio_ffmpeg

from schemas.events import ClipSpec

log = logging.getLogger(__name__)

__all__ = [
    "MediaError",
    "NotAVideo",
    "Overlay",
    "VideoInfo",
    "assemble",
    "concat",
    "crossfade_cuts",
    "fades_between",
    "ffmpeg_exe",
    "finish_args",
    "finish_clip",
    "piece_frames",
    "piece_tag",
    "probe",
    "render_clip",
    "run_ffmpeg",
    "scratch_dir",
    "thumbnail",
    "transition",
]

#: Encoder threads per ffmpeg process: the workers share small machines, and several clips may
#: render at once, so one encode must not take every core.
THREADS = 2

#: Palette for a brand that gave no colours: a calm blue-violet-pink gradient.
DEFAULT_COLORS: tuple[str, ...] = ("#1E3A8A", "#7C3AED", "#DB2777")

#: How much of ffmpeg's stderr ends up in an exception message (the tail carries the actual error).
STDERR_TAIL_CHARS = 2000


class MediaError(Exception):
    """ffmpeg or the container library failed; the message ends with ffmpeg's stderr tail.

    The tail is in the message (not only an attribute) because these errors end up in logs and in
    the generation's ``error`` field, where the bare exit code would say nothing.
    """

    def __init__(self, message: str, stderr: str = "") -> None:
        self.stderr = stderr
        tail = stderr.strip()[-STDERR_TAIL_CHARS:]
        super().__init__(f"{message}: {tail}" if tail else message)


class NotAVideo(MediaError):
    """The file is missing, empty, not a container, or has no decodable video stream.

    Separate from :class:`MediaError` because a provider returning garbage is a permanent failure
    of that clip (retrying the download will not help), unlike an ffmpeg crash.
    """


@dataclass(frozen=True)
class VideoInfo:
    """What the pipeline checks and records about a video file."""

    codec: str
    duration_seconds: float
    width: int
    height: int
    fps: float
    size_bytes: int
    pix_fmt: str
    #: The container's ``comment`` tag: :func:`finish_clip` marks the pieces it makes with it.
    comment: str = ""
    #: Whether the file has an audio stream (the final video carries an AAC track).
    has_audio: bool = False
    audio_codec: str = ""


@functools.cache
def ffmpeg_exe() -> str:
    """Path of the static ffmpeg bundled with imageio-ffmpeg.

    Bundled rather than the system one so every host has the same version with libx264 and
    drawtext; cached because the lookup stats files and the answer never changes in a process.
    """
    return str(imageio_ffmpeg.get_ffmpeg_exe())


async def run_ffmpeg(*args: str) -> None:
    """Run ffmpeg with ``args`` and raise :class:`MediaError` (with stderr) on a non-zero exit.

    Quiet, non-interactive flags are always added: ``-nostdin`` because a worker has no terminal and
    ffmpeg would otherwise steal or wait on stdin. If the awaiting task is cancelled the process is
    killed, so a cancelled generation does not leave an encoder burning CPU.
    """
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args]
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, stderr = await proc.communicate()
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0:
        raise MediaError(
            f"ffmpeg exited with code {proc.returncode}", stderr.decode("utf-8", errors="replace")
        )


def probe(path: Path) -> VideoInfo:
    """Describe the video in ``path``, decoding its first frame to prove it is really playable.

    Raises :class:`NotAVideo` for anything else (missing, empty, text, audio-only, undecodable):
    provider output is untrusted and a clip that cannot be decoded would only fail later, inside
    the assembly of the whole video.
    """
    if not path.is_file():
        raise NotAVideo(f"{path} is not a file")
    size = path.stat().st_size
    if size == 0:
        raise NotAVideo(f"{path} is empty")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise NotAVideo(f"{path} has no video stream")
            stream = container.streams.video[0]
            # One frame is decoded: frame threads would only be spun up and torn down again.
            stream.thread_type = "NONE"
            first = next(container.decode(stream), None)
            if first is None:
                raise NotAVideo(f"{path} has no decodable video frame")
            ctx = stream.codec_context
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else 0.0
            duration = 0.0
            if container.duration:
                duration = container.duration / av.time_base
            elif stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif stream.frames and fps:
                duration = stream.frames / fps
            return VideoInfo(
                codec=ctx.name,
                duration_seconds=duration,
                width=ctx.width or first.width,
                height=ctx.height or first.height,
                fps=fps,
                size_bytes=size,
                pix_fmt=ctx.pix_fmt or first.format.name,
                comment=str(container.metadata.get("comment", "")),
                has_audio=bool(container.streams.audio),
                audio_codec=container.streams.audio[0].codec_context.name if container.streams.audio else "",
            )
    except NotAVideo:
        raise
    except (av.FFmpegError, OSError, ValueError, StopIteration) as exc:
        raise NotAVideo(f"{path} is not a readable video: {exc}") from exc


# --------------------------------------------------------------------------- helpers


def _escape_filter_value(value: str) -> str:
    """Escape a value for an option inside an ffmpeg filtergraph string.

    Two levels apply: the option parser (``'``, ``:`` and ``\\``) and then the filtergraph parser
    (``\\'[],;``). Paths can contain any of them (a temp dir, a user's home), so both are done.
    """
    level1 = value.replace("\\", "\\\\").replace("'", "\\'").replace(":", "\\:")
    return "".join("\\" + ch if ch in "\\'[],;" else ch for ch in level1)


def _check_size(width: int, height: int) -> None:
    """Reject sizes libx264 cannot encode as yuv420p before spending time on a render."""
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise ValueError(f"video size must be positive and even for yuv420p, got {width}x{height}")


def _frame_count(duration_seconds: float, fps: int) -> int:
    """Frames for a duration; the nearest whole frame keeps the error below half a frame."""
    if duration_seconds <= 0 or fps <= 0:
        raise ValueError(f"duration and fps must be positive, got {duration_seconds} s at {fps} fps")
    return max(1, round(duration_seconds * fps))


@contextmanager
def _atomic_target(out: Path, suffix: str) -> Iterator[Path]:
    """Yield a temp path in ``out``'s directory; rename it onto ``out`` if the block succeeds.

    Same directory so ``os.replace`` is an atomic rename on one filesystem; the temp file is removed
    on any failure (including cancellation) so retries never trip over debris.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{uuid.uuid4().hex[:12]}.part{suffix}")
    try:
        yield tmp
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise MediaError(f"ffmpeg wrote no output for {out}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _x264_output_args(fps: int, frames: int) -> list[str]:
    """Encoder settings shared by render and assembly: broadly playable, streamable H.264.

    yuv420p and ``+faststart`` because browsers and social players need both (moov first lets
    playback start before the download ends); ``-frames:v`` pins the exact length.
    """
    return [
        "-an",
        "-c:v", "libx264",
        "-preset", "veryfast",
        "-crf", "23",
        "-pix_fmt", "yuv420p",
        "-r", str(fps),
        "-frames:v", str(frames),
        "-threads", str(THREADS),
        "-movflags", "+faststart",
        "-f", "mp4",
    ]  # fmt: skip


def _ffmpeg_color(hex_color: str) -> str:
    """``#RRGGBB`` as ``0xRRGGBB``: the ``#`` form also parses, but 0x needs no thought about escaping."""
    return "0x" + hex_color.lstrip("#")


def _darken(hex_color: str, factor: float = 0.45) -> str:
    """A darker shade of a colour, so a one-colour brand still gets a visible moving gradient."""
    value = hex_color.lstrip("#")
    rgb = [int(value[i : i + 2], 16) for i in (0, 2, 4)]
    return "#" + "".join(f"{round(c * factor):02X}" for c in rgb)


def _background_colors(colors: list[str]) -> list[str]:
    """2 to 8 colours for the gradients source (its limits), from the brand palette or the default."""
    valid = [c for c in colors if len(c.lstrip("#")) == 6]
    if not valid:
        valid = list(DEFAULT_COLORS)
    if len(valid) == 1:
        valid = [valid[0], _darken(valid[0])]
    return valid[:8]


def _background_source(spec: ClipSpec, fps: int, frames: int) -> str:
    """The lavfi ``gradients`` source: the brand colours, slowly rotating.

    Seeded from the spec (or the clip id) so a re-render of the same clip is identical.
    """
    colors = _background_colors(spec.colors)
    seed = spec.seed if spec.seed is not None else zlib.crc32(spec.clip_id.encode())
    opts = [
        f"size={spec.width}x{spec.height}",
        f"rate={fps}",
        f"nb_colors={len(colors)}",
        *(f"c{i}={_ffmpeg_color(c)}" for i, c in enumerate(colors)),
        f"seed={seed % 2**32}",
        "speed=0.02",
        f"duration={(frames + 1) / fps:.4f}",
    ]
    return "gradients=" + ":".join(opts)


# --------------------------------------------------------------------------- public operations


async def render_clip(spec: ClipSpec, out: Path, *, fps: int = 16) -> VideoInfo:
    """Render the local provider's clip for ``spec``: a moving gradient in the brand colours, no text.

    This stands in for a video model (development, tests, provider outage), so it must honour the
    spec exactly: size, and a length of ``round(duration * fps)`` frames. Like a model's clip it has
    no text of its own: captions, logo and end card are the finishing step's work for every provider,
    so nothing is drawn twice.
    """
    _check_size(spec.width, spec.height)
    frames = _frame_count(spec.duration_seconds, fps)
    source = _background_source(spec, fps, frames)
    with _atomic_target(out, ".mp4") as tmp:
        await run_ffmpeg("-f", "lavfi", "-i", source, *_x264_output_args(fps, frames), str(tmp))
    return await asyncio.to_thread(probe, out)


#: Every finished piece carries this MP4 time scale, so pieces join by stream copy (24 fps divides it).
TIMESCALE = 12288
#: Frame rate of finished pieces and of the final video.
FPS = 24


def piece_frames(start_seconds: float, duration_seconds: float, fps: int = FPS) -> int:
    """Frames of the piece that covers ``[start, start + duration)`` of the final video.

    Counted from the rounded frame positions of its two ends, so the pieces of a video always add up
    to exactly ``round(total * fps)`` frames: the final length is right to the frame, whatever the
    individual clip durations are.
    """
    return max(1, round((start_seconds + duration_seconds) * fps) - round(start_seconds * fps))


_encoders: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}


def _encoder_slot() -> asyncio.Semaphore:
    """One encode per core at a time in this process (x264 with ``THREADS`` threads does not keep a
    core each busy): more only thrash the CPU and delay them all."""
    loop = asyncio.get_running_loop()
    slot = _encoders.get(loop)
    if slot is None:
        for stale in [other for other in _encoders if other.is_closed()]:
            del _encoders[stale]
        slot = _encoders[loop] = asyncio.Semaphore(max(1, os.cpu_count() or 1))
    return slot


@dataclass(frozen=True)
class Overlay:
    """A transparent PNG laid over frames ``[start, end)`` of a piece (an end card, a caption layer)."""

    image: Path
    start: int
    end: int


#: Frames on each side of a boundary that a crossfade takes (12 frames = 0.5 s at 24 fps in all).
CROSSFADE_HALF = 6


def crossfade_cuts(frames: int, half: int = CROSSFADE_HALF) -> list[int]:
    """Where a piece gets keyframes so the assembly can cut its head and tail off by stream copy.

    Only pieces long enough for both a head and a tail (four halves) take part in crossfades.
    """
    return [half, frames - half] if frames >= 4 * half else []


def piece_tag(width: int, height: int, frames: int, fps: int = FPS, look: str = "") -> str:
    """What a finished piece says of itself (its ``comment`` tag): made here, to this exact format.

    ``look`` names the overlays and keyframes (a digest), so a piece finished with other brand layers
    is never taken for this one.
    """
    tag = f"reelstream-piece/2 {width}x{height} {fps}fps {frames}f"
    return f"{tag} {look}" if look else tag


def _look(overlays: list[Overlay], keyframes: list[int]) -> str:
    if not overlays and not keyframes:
        return ""
    digest = zlib.crc32(repr(keyframes).encode())
    for item in overlays:
        digest = zlib.crc32(item.image.read_bytes() + f"{item.start}:{item.end}".encode(), digest)
    return f"look-{digest:08x}"


def finish_args(
    clip: Path,
    out: Path,
    *,
    frames: int,
    width: int,
    height: int,
    fps: int = FPS,
    overlays: list[Overlay] | None = None,
    keyframes: list[int] | None = None,
    look: str = "",
) -> list[str]:
    """The ffmpeg arguments of :func:`finish_clip` (the benchmarks run the same graph bare).

    The overlays are further inputs (still PNGs) composited with ``overlay``, each enabled over its
    frame range; their paths are arguments, never part of the filter graph text.
    """
    hold = frames / fps
    chain = (
        "setpts=PTS-STARTPTS,"
        f"scale={width}:{height}:force_original_aspect_ratio=increase,crop={width}:{height},"
        f"setsar=1,fps={fps},tpad=stop_mode=clone:stop_duration={hold:.4f}"
    )
    tail = (
        "format=yuv420p,"
        # Tagged on the frames: the encoder takes colour tags from them, not from output options.
        "setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709:range=tv"
    )
    inputs = ["-i", str(clip)]
    layers = overlays or []
    if layers:
        graph = [f"[0:v]{chain}[v0]"]
        for i, item in enumerate(layers, start=1):
            inputs += ["-i", str(item.image)]
            graph.append(
                f"[v{i - 1}][{i}:v]overlay=x=0:y=0:eof_action=repeat:"
                f"enable='between(n,{item.start},{item.end - 1})'[v{i}]"
            )
        graph.append(f"[v{len(layers)}]{tail}[out]")
        video = ["-filter_complex", ";".join(graph), "-map", "[out]"]
    else:
        video = ["-vf", f"{chain},{tail}"]
    keys = ["-force_key_frames", "expr:" + "+".join(f"eq(n,{k})" for k in keyframes)] if keyframes else []
    return [
        *inputs,
        *video,
        "-filter_threads", str(THREADS),
        "-video_track_timescale", str(TIMESCALE),
        "-metadata", f"comment={piece_tag(width, height, frames, fps, look)}",
        *keys,
        *_x264_output_args(fps, frames),
        str(out),
    ]  # fmt: skip


async def finish_clip(
    clip: Path,
    out: Path,
    *,
    frames: int,
    width: int,
    height: int,
    fps: int = FPS,
    source: VideoInfo | None = None,
    overlays: list[Overlay] | None = None,
    keyframes: list[int] | None = None,
) -> VideoInfo:
    """Turn one provider clip into a finished piece of the final video, as soon as the clip lands.

    Providers return clips of varying size, rate and length. The piece is the delivery size with the
    frame filled (scaled to cover and centre-cropped, never padded), ``fps`` constant, yuv420p tagged
    BT.709, exactly ``frames`` long (cut, or held on its last frame when the clip falls short), with
    the brand's ``overlays`` burned in and keyframes at ``keyframes`` (where a crossfade will cut it).
    Every piece is encoded alike, so the final video is a stream-copy join (:func:`assemble`) and only
    the last clip's own finishing remains once its webhook arrives. A clip that already is such a
    piece (``source``, its probe, carries the very tag this call would write) is copied as it is.
    """
    _check_size(width, height)
    layers = overlays or []
    look = await asyncio.to_thread(_look, layers, keyframes or [])
    if source is not None and source.comment == piece_tag(width, height, frames, fps, look):
        with _atomic_target(out, ".mp4") as tmp:
            await asyncio.to_thread(shutil.copyfile, clip, tmp)
        return source  # the same bytes: probing the copy again would only repeat the decode
    args = finish_args(
        clip, out, frames=frames, width=width, height=height, fps=fps,
        overlays=layers, keyframes=keyframes, look=look,
    )  # fmt: skip
    async with _encoder_slot():
        with _atomic_target(out, ".mp4") as tmp:
            await run_ffmpeg(*args[:-1], str(tmp))
    return await asyncio.to_thread(probe, out)


async def _split(piece: Path, cuts: list[int], work: Path, name: str) -> list[Path]:
    """Cut a piece at keyframes ``cuts`` (frame numbers) by stream copy; returns the parts in order."""
    if not cuts:
        return [piece]
    pattern = work / f"{name}-%d.mp4"
    await run_ffmpeg(
        "-i", str(piece), "-map", "0:v:0", "-c", "copy",
        "-f", "segment", "-segment_frames", ",".join(str(c) for c in cuts),
        "-reset_timestamps", "1", "-segment_format", "mp4",
        "-segment_format_options", f"video_track_timescale={TIMESCALE}",
        str(pattern),
    )  # fmt: skip
    parts = [work / f"{name}-{i}.mp4" for i in range(len(cuts) + 1)]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise _NotSplittable(f"splitting {piece.name} at frames {cuts} did not make {', '.join(missing)}")
    counts = await asyncio.to_thread(lambda: [_frames_in(p) for p in parts])
    wanted = [b - a for a, b in zip([0, *cuts], [*cuts, sum(counts)], strict=True)]
    if counts != wanted:
        raise _NotSplittable(f"{piece.name} has no keyframes at {cuts} (parts of {counts} frames)")
    return parts


class _NotSplittable(MediaError):
    """A piece without keyframes where a crossfade would cut it (finished before crossfades existed)."""


def _frames_in(path: Path) -> int:
    """Frames of an MP4's video track, from its index (nothing is decoded)."""
    with av.open(str(path)) as container:
        return int(container.streams.video[0].frames)


async def _crossfade(tail: Path, head: Path, out: Path, *, half: int, fps: int) -> None:
    """The ``2 * half`` frames around a boundary: the end of one scene dissolving into the next.

    The outgoing side holds its last frame and the incoming side its first for the half they would
    otherwise lack, so the boundary keeps its length and neither scene repeats a frame.
    """
    frames = 2 * half
    graph = (
        f"[0:v]setpts=PTS-STARTPTS,fps={fps},tpad=stop_mode=clone:stop={half}[a];"
        f"[1:v]setpts=PTS-STARTPTS,fps={fps},tpad=start_mode=clone:start={half}[b];"
        f"[a][b]xfade=transition=fade:duration={frames / fps:.4f}:offset=0,format=yuv420p,"
        "setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709:range=tv[out]"
    )
    async with _encoder_slot():
        with _atomic_target(out, ".mp4") as tmp:
            await run_ffmpeg(
                "-i", str(tail), "-i", str(head),
                "-filter_complex", graph, "-map", "[out]",
                "-filter_threads", str(THREADS),
                "-video_track_timescale", str(TIMESCALE),
                *_x264_output_args(fps, frames),
                str(tmp),
            )  # fmt: skip


async def assemble(
    pieces: list[Path],
    frames: list[int],
    out: Path,
    *,
    crossfade: bool,
    fps: int = FPS,
    half: int = CROSSFADE_HALF,
    transitions: Mapping[int, Path] | None = None,
) -> VideoInfo:
    """The final video: pieces joined by stream copy, crossfaded at the boundaries, with an AAC track.

    With ``crossfade`` each boundary between two pieces long enough (see :func:`crossfade_cuts`) is
    replaced by a short dissolve made from the outgoing piece's last ``half`` frames and the incoming
    one's first ``half``; the rest of every piece is cut out at its keyframes by stream copy, so the
    total length is unchanged and only ``2 * half`` frames per boundary are encoded here, unless
    ``transitions`` already holds that boundary's dissolve (made by :func:`transition` from the same
    two pieces, by boundary number: 0 is between the first and the second piece). The audio is
    silence (for now) encoded once to the exact length of the video.
    """
    if not pieces or len(pieces) != len(frames):
        raise ValueError("assemble needs one frame count per piece")
    total = sum(frames)
    with tempfile.TemporaryDirectory(prefix="reelstream-assemble-") as tmpdir:
        work = Path(tmpdir)
        joined: list[Path] = list(pieces)
        if crossfade and len(pieces) > 1:
            try:
                joined = await _crossfaded(pieces, frames, work, fps=fps, half=half, ready=transitions or {})
            except _NotSplittable as exc:
                log.warning("joining with hard cuts: %s", exc)
        return await concat(joined, out, audio_seconds=total / fps)


def fades_between(tail_frames: int, head_frames: int, half: int = CROSSFADE_HALF) -> bool:
    """Whether the boundary between pieces of these lengths is a crossfade (both long enough)."""
    return bool(crossfade_cuts(tail_frames, half)) and bool(crossfade_cuts(head_frames, half))


async def transition(
    tail: Path, tail_frames: int, head: Path, head_frames: int, out: Path, *, fps: int = FPS,
    half: int = CROSSFADE_HALF,
) -> None:  # fmt: skip
    """The dissolve :func:`assemble` puts between finished pieces ``tail`` and ``head``, made now.

    The same parts and the same encode as at the join, so a dissolve made as soon as both of its
    pieces are finished can stand in for the one the join would make (``assemble(transitions=...)``).
    """
    if not fades_between(tail_frames, head_frames, half):
        raise ValueError("these pieces are too short for a crossfade between them")
    with tempfile.TemporaryDirectory(prefix="reelstream-transition-") as tmpdir:
        work = Path(tmpdir)
        ending, beginning = await asyncio.gather(
            _split(tail, [tail_frames - half], work, "tail"), _split(head, [half], work, "head")
        )
        await _crossfade(ending[-1], beginning[0], out, half=half, fps=fps)


async def _crossfaded(
    pieces: list[Path], frames: list[int], work: Path, *, fps: int, half: int, ready: Mapping[int, Path]
) -> list[Path]:
    """The parts to concatenate: each piece's body, and a dissolve at each boundary long enough."""
    fades = [fades_between(frames[i], frames[i + 1], half) for i in range(len(pieces) - 1)]
    bodies: list[Path] = []
    heads: list[Path | None] = []
    tails: list[Path | None] = []
    sides = [(i > 0 and fades[i - 1], i < len(pieces) - 1 and fades[i]) for i in range(len(pieces))]
    # Every piece is split at once (stream copies, each its own process): one after another they
    # were most of a join's wall time.
    outcomes = await asyncio.gather(
        *(
            _split(piece, ([half] if left else []) + ([frames[i] - half] if right else []), work, f"p{i:03d}")
            for i, (piece, (left, right)) in enumerate(zip(pieces, sides, strict=True))
        ),
        return_exceptions=True,  # every split has ended before one's failure is raised
    )
    splits: list[list[Path]] = []
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
        splits.append(outcome)
    for parts, (left, right) in zip(splits, sides, strict=True):
        heads.append(parts[0] if left else None)
        tails.append(parts[-1] if right else None)
        bodies.append(parts[1] if left else parts[0])
    joins: list[asyncio.Task[None]] = []
    transitions: list[Path | None] = []
    for i, fade in enumerate(fades):
        if not fade:
            transitions.append(None)
            continue
        if i in ready:
            transitions.append(ready[i])
            continue
        tail, head = tails[i], heads[i + 1]
        assert tail is not None and head is not None
        path = work / f"x{i:03d}.mp4"
        transitions.append(path)
        joins.append(asyncio.create_task(_crossfade(tail, head, path, half=half, fps=fps)))
    try:
        await asyncio.gather(*joins)
    except BaseException:
        for task in joins:
            task.cancel()
        await asyncio.gather(*joins, return_exceptions=True)
        raise
    joined: list[Path] = []
    for i, body in enumerate(bodies):
        joined.append(body)
        if i < len(transitions) and transitions[i] is not None:
            joined.append(transitions[i])  # type: ignore[arg-type]
    return joined


async def concat(pieces: list[Path], out: Path, *, audio_seconds: float | None = None) -> VideoInfo:
    """Join finished pieces in order without re-encoding anything: a stream copy.

    With ``audio_seconds`` a silent AAC track of exactly that length is muxed in, copied from
    :func:`_silence` (encoded once per length per process: encoding it here every time was most of
    the join's CPU; a later issue brings voice and music).
    """
    if not pieces:
        raise ValueError("concat needs at least one piece")
    audio: list[str] = []
    if audio_seconds is not None:
        silence = await _silence(audio_seconds)
        audio = ["-i", str(silence), "-map", "0:v:0", "-map", "1:a:0"]
    with tempfile.TemporaryDirectory(prefix="reelstream-concat-") as tmp:
        listing = Path(tmp) / "pieces.txt"
        lines = "".join(f"file '{_concat_path(p)}'\n" for p in pieces)
        await asyncio.to_thread(listing.write_text, lines)
        with _atomic_target(out, ".mp4") as target:
            await run_ffmpeg(
                "-f", "concat", "-safe", "0", "-i", str(listing),
                *audio,
                "-c", "copy", "-movflags", "+faststart", "-f", "mp4",
                str(target),
            )  # fmt: skip
    return await asyncio.to_thread(probe, out)


#: Silent AAC tracks by length, in a directory of this process's own (removed when it exits).
_silences: dict[str, Path] = {}
_SILENCES_KEPT = 64


async def _silence(seconds: float) -> Path:
    """An M4A of exactly ``seconds`` of stereo 48 kHz silence, AAC 96 kb/s, made once per length.

    Finals come in a few lengths, and the AAC encode of a minute of silence costs more CPU than the
    whole stream-copy join it goes into. Two joins asking for a new length at once both encode it
    (each into its own temp file, renamed into place): harmless, and rarer than a lock is worth.
    """
    key = f"{seconds:.6f}"
    path = _silences.get(key)
    if path is not None and path.is_file():
        return path
    path = scratch_dir("silence") / f"silence-{key}.m4a"
    with _atomic_target(path, ".m4a") as tmp:
        await run_ffmpeg(
            "-f", "lavfi", "-t", key, "-i", "anullsrc=channel_layout=stereo:sample_rate=48000",
            "-c:a", "aac", "-b:a", "96k", "-f", "mp4", str(tmp),
        )  # fmt: skip
    if len(_silences) >= _SILENCES_KEPT:  # bounded: drop the oldest length
        oldest = next(iter(_silences))
        _silences.pop(oldest).unlink(missing_ok=True)
    _silences[key] = path
    return path


@functools.cache
def scratch_dir(name: str) -> Path:
    """A directory of this process's own for ``name``'s files (0700), removed when the process exits."""
    directory = Path(tempfile.mkdtemp(prefix=f"reelstream-{name}-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return directory


def _concat_path(path: Path) -> str:
    """A path quoted for the concat demuxer's list file (single quotes escaped its way)."""
    return os.path.abspath(path).replace("'", "'\\''")


async def thumbnail(video: Path, out: Path, *, at_seconds: float = 1.0) -> None:
    """Write the frame of ``video`` at ``at_seconds`` as a JPEG (the last frame if the video is shorter).

    Decoded here with PyAV, in a thread, from the keyframe before that moment: half the CPU of an
    ffmpeg process for the same frame (no process start, no stream probing, no frame threads).
    """
    await asyncio.to_thread(_thumbnail, video, out, max(0.0, at_seconds))


def _thumbnail(video: Path, out: Path, at: float) -> None:
    try:
        with av.open(str(video)) as container:
            if not container.streams.video:
                raise NotAVideo(f"{video} has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "NONE"  # a few frames: frame threads would cost more than they give
            chosen = _frame_at(container, stream, at)
            if chosen is None and at > 0:  # the seek found nothing (past the end): from the start
                container.seek(0, stream=stream)
                chosen = _frame_at(container, stream, float("inf"))
            if chosen is None:
                raise NotAVideo(f"{video} has no decodable video frame")
            image = chosen.to_image()  # type: ignore[no-untyped-call]  # PyAV leaves it untyped
    except MediaError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise NotAVideo(f"{video} is not a readable video: {exc}") from exc
    with _atomic_target(out, ".jpg") as tmp:
        image.save(tmp, format="JPEG", quality=90)


def _frame_at(container: Any, stream: Any, at: float) -> av.VideoFrame | None:
    """The first frame at or after ``at`` seconds, or the last frame if none is; None if none decodes."""
    if 0 < at < float("inf") and stream.time_base:
        container.seek(int(at / stream.time_base), stream=stream, backward=True, any_frame=False)
    last = None
    for frame in container.decode(stream):
        last = frame
        if frame.time is not None and frame.time >= at - 1e-6:
            break
    return last
