"""FFmpeg and PyAV helpers: render a placeholder clip, finish clips, join them, probe, thumbnail.

Every ffmpeg call goes through :func:`run_ffmpeg`, which uses ``asyncio.create_subprocess_exec``
(no shell, so nothing in a caption or path is ever interpreted) and never blocks the event loop; the
stages that call these helpers also consume Kafka and must keep heartbeating while a video encodes.
Outputs are written to a temporary file next to the target and renamed into place, so a reader
(the uploader, the API, a retry) never sees half an MP4.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import tempfile
import textwrap
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import imageio_ffmpeg

from schemas.events import ClipSpec

log = logging.getLogger(__name__)

__all__ = [
    "MediaError",
    "NotAVideo",
    "VideoInfo",
    "concat",
    "ffmpeg_exe",
    "finish_args",
    "finish_clip",
    "piece_frames",
    "piece_tag",
    "probe",
    "render_clip",
    "run_ffmpeg",
    "thumbnail",
]

#: Encoder threads per ffmpeg process: the workers share small machines, and several clips may
#: render at once, so one encode must not take every core.
THREADS = 2

#: Palette for a brand that gave no colours: a calm blue-violet-pink gradient.
DEFAULT_COLORS: tuple[str, ...] = ("#1E3A8A", "#7C3AED", "#DB2777")

#: How much of ffmpeg's stderr ends up in an exception message (the tail carries the actual error).
STDERR_TAIL_CHARS = 2000

#: Where a font for captions is looked for when the usual DejaVu path is missing.
FONT_DIRS: tuple[Path, ...] = (
    Path("/usr/share/fonts"),
    Path("/usr/local/share/fonts"),
    Path("/Library/Fonts"),
    Path("/System/Library/Fonts"),
    Path.home() / ".fonts",
)
DEJAVU_SANS = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")

#: Average advance width of a DejaVu Sans glyph as a fraction of the font size, slightly generous so
#: a wrapped line of capitals still fits (DejaVu is a wide face).
_CHAR_WIDTH_EM = 0.6
_LINE_SPACING_EM = 0.25


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


@functools.cache
def _find_font() -> Path | None:
    """A TrueType font for captions: DejaVu Sans if installed, else the first DejaVu/any TTF found.

    A file is passed explicitly because fontconfig setups differ between hosts and containers;
    ``None`` means drawtext falls back to fontconfig's default.
    """
    if DEJAVU_SANS.is_file():
        return DEJAVU_SANS
    fallback: Path | None = None
    for root in FONT_DIRS:
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*.ttf")):
            if path.name == "DejaVuSans.ttf":
                return path
            if fallback is None:
                fallback = path
    return fallback


def _wrap_caption(caption: str, width: int, height: int) -> tuple[str, int]:
    """Wrap ``caption`` to fit the frame and pick a font size; returns (text, font size).

    drawtext does not wrap, so lines are broken here with an estimated glyph width. The font shrinks
    until the block fits in 80% of the height, so a long caption stays readable rather than clipped.
    Explicit newlines in the caption are kept as paragraph breaks.
    """
    paragraphs = [
        " ".join(line.split()) for line in caption.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    ]
    while paragraphs and not paragraphs[-1]:
        paragraphs.pop()
    while paragraphs and not paragraphs[0]:
        paragraphs.pop(0)
    if not paragraphs:
        return "", 0
    size = max(12, round(min(width, height) / 13))
    while True:
        max_chars = max(4, int(width * 0.88 / (size * _CHAR_WIDTH_EM)))
        lines: list[str] = []
        for para in paragraphs:
            lines.extend(textwrap.wrap(para, max_chars, break_long_words=True) or [""])
        block = len(lines) * size * (1 + _LINE_SPACING_EM)
        if block <= height * 0.8 or size <= 12:
            return "\n".join(lines), size
        size -= 2


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


def _drawtext_filter(textfile: Path, fontsize: int, font: Path | None) -> str:
    """drawtext reading the caption from a file, centred on a translucent box.

    ``textfile=`` with ``expansion=none`` means quotes, colons, percent signs and backslashes in the
    caption are drawn literally with no escaping to get wrong.
    """
    opts = [
        f"textfile={_escape_filter_value(str(textfile))}",
        "expansion=none",
        "fontcolor=white",
        f"fontsize={fontsize}",
        f"line_spacing={round(fontsize * _LINE_SPACING_EM)}",
        "text_align=C",
        "box=1",
        "boxcolor=black@0.35",
        f"boxborderw={max(4, fontsize // 2)}",
        "x=(w-text_w)/2",
        "y=(h-text_h)/2",
        "fix_bounds=1",
    ]
    if font is not None:
        opts.insert(0, f"fontfile={_escape_filter_value(str(font))}")
    return "drawtext=" + ":".join(opts)


# --------------------------------------------------------------------------- public operations


async def render_clip(spec: ClipSpec, out: Path, *, fps: int = 16) -> VideoInfo:
    """Render the local provider's clip for ``spec``: moving brand gradient plus the caption.

    This stands in for a video model (development, tests, provider outage), so it must honour the
    spec exactly: size, and a length of ``round(duration * fps)`` frames. If drawing the caption
    fails (no usable font on the host) the clip is rendered without it rather than failing.
    """
    _check_size(spec.width, spec.height)
    frames = _frame_count(spec.duration_seconds, fps)
    source = _background_source(spec, fps, frames)
    text, fontsize = _wrap_caption(spec.caption, spec.width, spec.height)

    async def encode(vf: str | None) -> None:
        with _atomic_target(out, ".mp4") as tmp:
            args = ["-f", "lavfi", "-i", source]
            if vf:
                args += ["-vf", vf, "-filter_threads", str(THREADS)]
            await run_ffmpeg(*args, *_x264_output_args(fps, frames), str(tmp))

    if text:
        with tempfile.TemporaryDirectory(prefix="reelstream-caption-") as tmpdir:
            textfile = Path(tmpdir) / "caption.txt"
            textfile.write_text(text, encoding="utf-8")
            try:
                await encode(_drawtext_filter(textfile, fontsize, _find_font()))
            except MediaError as exc:
                log.warning("caption drawing failed for clip %s, rendering without it: %s", spec.clip_id, exc)
                await encode(None)
    else:
        await encode(None)
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


def piece_tag(width: int, height: int, frames: int, fps: int = FPS) -> str:
    """What a finished piece says of itself (its ``comment`` tag): made here, to this exact format."""
    return f"reelstream-piece/1 {width}x{height} {fps}fps {frames}f"


def finish_args(clip: Path, out: Path, *, frames: int, width: int, height: int, fps: int = FPS) -> list[str]:
    """The ffmpeg arguments of :func:`finish_clip` (the benchmarks run the same graph bare)."""
    hold = frames / fps
    video_filter = (
        "setpts=PTS-STARTPTS,"
        f"scale={width}:{height}:force_original_aspect_ratio=increase,crop={width}:{height},"
        f"setsar=1,fps={fps},tpad=stop_mode=clone:stop_duration={hold:.4f},format=yuv420p,"
        # Tagged on the frames: the encoder takes colour tags from them, not from output options.
        "setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709:range=tv"
    )
    return [
        "-i", str(clip),
        "-vf", video_filter,
        "-filter_threads", str(THREADS),
        "-video_track_timescale", str(TIMESCALE),
        "-metadata", f"comment={piece_tag(width, height, frames, fps)}",
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
) -> VideoInfo:
    """Turn one provider clip into a finished piece of the final video, as soon as the clip lands.

    Providers return clips of varying size, rate and length. The piece is the delivery size with the
    frame filled (scaled to cover and centre-cropped, never padded), ``fps`` constant, yuv420p tagged
    BT.709, and exactly ``frames`` long (cut, or held on its last frame when the clip falls short).
    Every piece is encoded alike, so the final video is a stream-copy join (:func:`concat`) and only
    the last clip's own finishing remains once its webhook arrives. A clip that already is such a
    piece (``source``, its probe, carries the very tag this call would write) is copied as it is.
    """
    _check_size(width, height)
    if source is not None and source.comment == piece_tag(width, height, frames, fps):
        with _atomic_target(out, ".mp4") as tmp:
            await asyncio.to_thread(shutil.copyfile, clip, tmp)
        return await asyncio.to_thread(probe, out)
    async with _encoder_slot():
        with _atomic_target(out, ".mp4") as tmp:
            await run_ffmpeg(*finish_args(clip, tmp, frames=frames, width=width, height=height, fps=fps))
    return await asyncio.to_thread(probe, out)


async def concat(pieces: list[Path], out: Path) -> VideoInfo:
    """Join finished pieces (:func:`finish_clip`) in order without re-encoding: a stream copy."""
    if not pieces:
        raise ValueError("concat needs at least one piece")
    with tempfile.TemporaryDirectory(prefix="reelstream-concat-") as tmp:
        listing = Path(tmp) / "pieces.txt"
        lines = "".join(f"file '{_concat_path(p)}'\n" for p in pieces)
        await asyncio.to_thread(listing.write_text, lines)
        with _atomic_target(out, ".mp4") as target:
            await run_ffmpeg(
                "-f", "concat", "-safe", "0", "-i", str(listing),
                "-c", "copy", "-movflags", "+faststart", "-f", "mp4",
                str(target),
            )  # fmt: skip
    return await asyncio.to_thread(probe, out)


def _concat_path(path: Path) -> str:
    """A path quoted for the concat demuxer's list file (single quotes escaped its way)."""
    return os.path.abspath(path).replace("'", "'\\''")


async def thumbnail(video: Path, out: Path, *, at_seconds: float = 1.0) -> None:
    """Write one JPEG frame of ``video`` taken at ``at_seconds`` (clamped into the video).

    Clamped to the last frames because ffmpeg fails (with a misleading encoder error) when a seek
    lands past the last frame, and a short video still deserves a poster image. Should the seek
    still find nothing, the first frame is used.
    """
    info = await asyncio.to_thread(probe, video)
    at = max(0.0, at_seconds)
    if info.duration_seconds > 0:
        frame = 1 / info.fps if info.fps > 0 else 0.1
        at = min(at, max(0.0, info.duration_seconds - 2 * frame))
    try:
        await _grab_frame(video, out, at)
    except MediaError:
        if at == 0:
            raise
        await _grab_frame(video, out, 0.0)


async def _grab_frame(video: Path, out: Path, at: float) -> None:
    """Encode the frame at ``at`` seconds as a JPEG, atomically."""
    with _atomic_target(out, ".jpg") as tmp:
        await run_ffmpeg(
            "-ss", f"{at:.3f}",
            "-i", str(video),
            "-frames:v", "1",
            "-q:v", "3",
            "-threads", str(THREADS),
            "-f", "image2",
            "-update", "1",
            "-c:v", "mjpeg",
            str(tmp),
        )  # fmt: skip
