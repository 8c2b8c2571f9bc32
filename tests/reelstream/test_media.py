"""Tests for reelstream.media: real ffmpeg renders, kept to 1-3 s clips (the CI box has 2 cores)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import av
import pytest
from PIL import Image, ImageChops, ImageStat

from reelstream import media
from reelstream.media import (
    MediaError,
    NotAVideo,
    VideoInfo,
    probe,
    render_clip,
    run_ffmpeg,
    thumbnail,
)
from schemas.api import DELIVERY_SIZES
from schemas.events import ClipSpec

TRICKY_CAPTION = 'Say "hello": 50% off!\nIt\'s {x} \\ %{pts} & more; [a],b'


def make_spec(aspect: str = "16:9", duration: float = 1.0, **overrides: Any) -> ClipSpec:
    width, height = DELIVERY_SIZES[(aspect, "480p")]
    fields: dict[str, Any] = {
        "clip_id": f"clip-{aspect}-{duration}",
        "scene_id": "scene-1",
        "scene_kind": "intro",
        "index": 0,
        "duration_seconds": duration,
        "aspect_ratio": aspect,
        "width": width,
        "height": height,
        "prompt": "a product shot",
        "negative_prompt": "",
        "caption": TRICKY_CAPTION,
        "colors": ["#FF6600", "#003366"],
        "seed": 7,
    }
    fields.update(overrides)
    return ClipSpec(**fields)


def assert_h264(info: VideoInfo, width: int, height: int, duration: float) -> None:
    assert info.codec == "h264"
    assert info.pix_fmt == "yuv420p"
    assert (info.width, info.height) == (width, height)
    assert info.duration_seconds == pytest.approx(duration, abs=0.1)
    assert info.size_bytes > 0


def assert_faststart(path: Path) -> None:
    data = path.read_bytes()
    moov, mdat = data.find(b"moov"), data.find(b"mdat")
    assert moov != -1 and mdat != -1
    assert moov < mdat, "moov atom must precede mdat (+faststart)"


def count_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".part" in p.name)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
async def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three clips of different sizes and lengths (3 s, 3 s, 2 s), rendered once for the module."""
    directory = tmp_path_factory.mktemp("clips")
    out = []
    for i, (aspect, duration) in enumerate((("16:9", 3.0), ("9:16", 3.0), ("1:1", 2.0))):
        path = directory / f"clip{i}.mp4"
        await render_clip(make_spec(aspect, duration, index=i), path)
        out.append(path)
    return out


# --------------------------------------------------------------------------- render_clip


@pytest.mark.parametrize(("aspect", "duration"), [("16:9", 1.5), ("9:16", 2.0), ("1:1", 1.0)])
async def test_render_clip_matches_spec(tmp_path: Path, aspect: str, duration: float) -> None:
    spec = make_spec(aspect, duration)
    out = tmp_path / "clip.mp4"
    info = await render_clip(spec, out)
    assert_h264(info, spec.width, spec.height, duration)
    assert info.fps == pytest.approx(16)
    assert info == probe(out)
    assert_faststart(out)
    assert count_frames(out) == round(duration * 16)
    assert leftovers(tmp_path) == []


async def test_render_clip_frame_count_rounds_duration(tmp_path: Path) -> None:
    out = tmp_path / "odd.mp4"
    info = await render_clip(make_spec("1:1", 1.3, caption="", colors=[]), out, fps=10)
    assert count_frames(out) == 13
    assert info.duration_seconds == pytest.approx(1.3, abs=0.05)


async def test_render_clip_background_moves(tmp_path: Path) -> None:
    out = tmp_path / "moving.mp4"
    await render_clip(make_spec("1:1", 1.0, caption=""), out)
    with av.open(str(out)) as container:
        lumas = [bytes(f.planes[0]) for f in container.decode(video=0)]
    assert lumas[0] != lumas[-1]


async def test_render_clip_single_colour_and_no_caption(tmp_path: Path) -> None:
    info = await render_clip(make_spec("16:9", 1.0, caption="   \n ", colors=["#123456"]), tmp_path / "c.mp4")
    assert_h264(info, 854, 480, 1.0)


async def test_render_clip_into_directory_with_filter_special_characters(tmp_path: Path) -> None:
    directory = tmp_path / "we:ird's [dir],x;y"
    info = await render_clip(make_spec("1:1", 1.0), directory / "c.mp4")
    assert_h264(info, 480, 480, 1.0)


async def test_render_clip_draws_no_text(tmp_path: Path) -> None:
    """The renderer stands in for a model: plain clips; captions are the finishing step's."""
    with_caption = tmp_path / "a.mp4"
    without = tmp_path / "b.mp4"
    await render_clip(make_spec("16:9", 0.5, caption="BIG WORDS"), with_caption)
    await render_clip(make_spec("16:9", 0.5, caption=""), without)
    with av.open(str(with_caption)) as a, av.open(str(without)) as b:
        assert [bytes(f.planes[0]) for f in a.decode(video=0)] == [
            bytes(f.planes[0]) for f in b.decode(video=0)
        ]


def child_processes() -> list[int]:
    """PIDs of this process's children (Linux /proc), to prove ffmpeg was not left running."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
                children.append(int(entry))
    return children


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_cancelled_render_kills_ffmpeg_and_leaves_nothing(tmp_path: Path) -> None:
    before = set(child_processes())
    out = tmp_path / "long.mp4"
    task = asyncio.create_task(render_clip(make_spec("16:9", 120.0), out))
    await asyncio.sleep(0.5)
    assert set(child_processes()) - before, "ffmpeg should be running"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert set(child_processes()) - before == set()
    assert not out.exists()
    assert leftovers(tmp_path) == []


async def test_render_clip_rejects_odd_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        await render_clip(make_spec("16:9", 1.0, width=831), tmp_path / "c.mp4")


async def test_render_clip_replaces_existing_file(tmp_path: Path) -> None:
    out = tmp_path / "c.mp4"
    out.write_text("old")
    info = await render_clip(make_spec("1:1", 1.0), out)
    assert info.codec == "h264"


def test_escape_filter_value() -> None:
    assert media._escape_filter_value("a:b'c") == "a\\\\:b\\\\\\'c"
    assert media._escape_filter_value("[x],y;z") == "\\[x\\]\\,y\\;z"


# --------------------------------------------------------------------------- finish_clip and concat


def edge_is_black(frame: av.VideoFrame) -> bool:
    """True when the outer rows or columns of a frame are uniformly black (letterbox or pillarbox).

    Read on the luma plane: black is 16 in the TV range the pieces use.
    """
    plane = frame.planes[0]
    data, stride, width, height = bytes(plane), plane.line_size, frame.width, frame.height
    rows = [data[r * stride : r * stride + width] for r in range(height)]
    edges = (
        b"".join(rows[:2]),
        b"".join(rows[-2:]),
        bytes(row[i] for row in rows for i in (0, 1)),
        bytes(row[i] for row in rows for i in (width - 2, width - 1)),
    )
    return any(max(edge) < 24 for edge in edges)


def test_piece_frames_add_up_to_the_whole_video_to_the_frame() -> None:
    durations = [1.7, 2.45, 3.333, 0.5, 4.999, 2.018]  # what a planner may cut 15 s into
    starts = [sum(durations[:i]) for i in range(len(durations))]
    frames = [media.piece_frames(s, d) for s, d in zip(starts, durations, strict=True)]
    assert sum(frames) == round(sum(durations) * media.FPS)


@pytest.mark.parametrize(("source", "aspect"), [(0, "9:16"), (1, "16:9"), (2, "16:9")])
async def test_a_finished_piece_fills_the_delivery_frame_at_a_constant_rate(
    tmp_path: Path, clips: list[Path], source: int, aspect: str
) -> None:
    width, height = DELIVERY_SIZES[(aspect, "480p")]
    out = tmp_path / "piece.mp4"
    info = await media.finish_clip(clips[source], out, frames=60, width=width, height=height)
    assert_h264(info, width, height, 2.5)
    assert info.fps == pytest.approx(24)
    assert count_frames(out) == 60
    assert_faststart(out)
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.color_primaries == 1  # BT.709
        frames = list(container.decode(video=0))
    assert not any(edge_is_black(frame) for frame in frames[::10]), "letterboxed or pillarboxed"
    assert leftovers(tmp_path) == []


async def test_a_short_clip_is_held_on_its_last_frame(tmp_path: Path, clips: list[Path]) -> None:
    out = tmp_path / "piece.mp4"
    # The 2 s clip, 3 s asked: the last frame is held for the last second.
    await media.finish_clip(clips[2], out, frames=72, width=480, height=480)
    with av.open(str(out)) as container:
        lumas = [bytes(f.planes[0]) for f in container.decode(video=0)]
    assert len(lumas) == 72

    def difference(a: bytes, b: bytes) -> float:
        return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)

    # The held tail repeats one frame (up to the encoder's noise); the clip itself moves.
    assert difference(lumas[-1], lumas[-20]) < 0.5
    assert difference(lumas[0], lumas[-1]) > 2


async def test_pieces_join_by_stream_copy_into_exactly_the_requested_length(
    tmp_path: Path, clips: list[Path]
) -> None:
    durations = [3.0, 2.6, 1.4]  # 7 s in all, cut unevenly
    starts = [0.0, 3.0, 5.6]
    pieces = []
    for i, (clip, start, duration) in enumerate(zip(clips, starts, durations, strict=True)):
        piece = tmp_path / f"piece{i}.mp4"
        frames = media.piece_frames(start, duration)
        await media.finish_clip(clip, piece, frames=frames, width=854, height=480)
        pieces.append(piece)
    out = tmp_path / "final.mp4"
    info = await media.concat(pieces, out)
    assert_h264(info, 854, 480, 7.0)
    assert info.duration_seconds == pytest.approx(7.0, abs=0.001)
    assert count_frames(out) == 168
    assert_faststart(out)
    with av.open(str(out)) as joined, av.open(str(pieces[1])) as second:
        # Stream copy: the second piece's coded frames are in the final video bit for bit.
        inner = [bytes(p) for p in second.demux(video=0) if p.size][5:10]
        packets = {bytes(p) for p in joined.demux(video=0) if p.size}
        assert all(frame in packets for frame in inner)
    assert leftovers(tmp_path) == []


async def test_a_clip_that_already_is_the_piece_is_copied_not_encoded_again(
    tmp_path: Path, clips: list[Path]
) -> None:
    piece = tmp_path / "piece.mp4"
    await media.finish_clip(clips[0], piece, frames=48, width=854, height=480)
    again = tmp_path / "again.mp4"
    source = probe(piece)
    assert source.comment == media.piece_tag(854, 480, 48)
    await media.finish_clip(piece, again, frames=48, width=854, height=480, source=source)
    assert again.read_bytes() == piece.read_bytes()
    # Another share of the frames is another piece: encoded anew.
    other = tmp_path / "other.mp4"
    await media.finish_clip(piece, other, frames=40, width=854, height=480, source=source)
    assert count_frames(other) == 40 and probe(other).comment == media.piece_tag(854, 480, 40)


async def test_concat_failure_leaves_no_output(tmp_path: Path, clips: list[Path]) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    out = tmp_path / "final.mp4"
    with pytest.raises(MediaError):
        await media.concat([bad], out)
    assert not out.exists()
    assert leftovers(tmp_path) == []


async def test_concat_requires_pieces(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        await media.concat([], tmp_path / "f.mp4")


# --------------------------------------------------------------------------- thumbnail


async def test_thumbnail_is_jpeg(tmp_path: Path, clips: list[Path]) -> None:
    out = tmp_path / "thumb.jpg"
    await thumbnail(clips[0], out, at_seconds=1.0)
    data = out.read_bytes()
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    with av.open(str(out)) as container:
        frame = next(container.decode(video=0))
    assert (frame.width, frame.height) == (854, 480)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("at", [60.0, 1.999, 1.97, -1.0])
async def test_thumbnail_outside_the_video_is_clamped(tmp_path: Path, clips: list[Path], at: float) -> None:
    out = tmp_path / "thumb.jpg"
    await thumbnail(clips[2], out, at_seconds=at)
    assert out.read_bytes()[:2] == b"\xff\xd8"


async def test_thumbnail_of_non_video_raises(tmp_path: Path) -> None:
    text = tmp_path / "x.mp4"
    text.write_text("hello")
    with pytest.raises(NotAVideo):
        await thumbnail(text, tmp_path / "t.jpg")


# --------------------------------------------------------------------------- probe / run_ffmpeg


def test_probe_text_file(tmp_path: Path) -> None:
    path = tmp_path / "a.mp4"
    path.write_text("this is not a video\n")
    with pytest.raises(NotAVideo):
        probe(path)


def test_probe_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp4"
    path.touch()
    with pytest.raises(NotAVideo):
        probe(path)


def test_probe_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(NotAVideo):
        probe(tmp_path / "nope.mp4")
    with pytest.raises(NotAVideo):
        probe(tmp_path)


async def test_probe_audio_only(tmp_path: Path) -> None:
    path = tmp_path / "tone.m4a"
    await run_ffmpeg("-f", "lavfi", "-i", "sine=duration=0.5", "-c:a", "aac", str(path))
    with pytest.raises(NotAVideo, match="no video stream"):
        probe(path)


def test_probe_truncated_video(tmp_path: Path, clips: list[Path]) -> None:
    path = tmp_path / "cut.mp4"
    path.write_bytes(clips[0].read_bytes()[:2000])
    with pytest.raises(NotAVideo):
        probe(path)


def test_not_a_video_is_media_error() -> None:
    assert issubclass(NotAVideo, MediaError)


async def test_run_ffmpeg_error_carries_stderr(tmp_path: Path) -> None:
    with pytest.raises(MediaError) as excinfo:
        await run_ffmpeg("-i", str(tmp_path / "missing.mp4"), str(tmp_path / "o.mp4"))
    assert "missing.mp4" in str(excinfo.value)
    assert excinfo.value.stderr


def test_ffmpeg_exe_is_cached() -> None:
    assert media.ffmpeg_exe() is media.ffmpeg_exe()
    assert Path(media.ffmpeg_exe()).is_file()


async def test_thumbnail_is_the_frame_at_the_moment_asked(tmp_path: Path, clips: list[Path]) -> None:
    """The poster is the frame 1 s in (what a viewer sees there), not the first or a nearby keyframe."""
    out = tmp_path / "thumb.jpg"
    await thumbnail(clips[0], out, at_seconds=1.0)
    with av.open(str(clips[0])) as container:
        frames = [f.to_image() for f in container.decode(video=0)]
        rate = float(container.streams.video[0].average_rate or 24)
    poster = Image.open(out).convert("RGB")
    distances = [sum(ImageStat.Stat(ImageChops.difference(poster, f)).mean) for f in frames]
    assert min(range(len(frames)), key=distances.__getitem__) == round(1.0 * rate)


# --------------------------------------------------------------------------- crossfades made early


async def crossfade_pieces(work: Path, clips: list[Path]) -> tuple[list[Path], list[int]]:
    """The three clips finished into 2 s pieces with the keyframes a crossfade cuts at."""
    frames = [media.piece_frames(2.0 * i, 2.0) for i in range(len(clips))]
    pieces = []
    for i, clip in enumerate(clips):
        piece = work / f"piece{i}.mp4"
        await media.finish_clip(
            clip, piece, frames=frames[i], width=640, height=360, keyframes=media.crossfade_cuts(frames[i])
        )
        pieces.append(piece)
    return pieces, frames


def decoded(path: Path) -> list[Image.Image]:
    with av.open(str(path)) as container:
        return [f.to_image() for f in container.decode(video=0)]


def same(a: Image.Image, b: Image.Image) -> bool:
    return ImageChops.difference(a.convert("RGB"), b.convert("RGB")).getbbox() is None


async def test_a_crossfade_made_before_the_join_is_the_one_the_join_would_make(
    tmp_path: Path, clips: list[Path]
) -> None:
    pieces, frames = await crossfade_pieces(tmp_path, clips)
    await media.assemble(pieces, frames, tmp_path / "joined.mp4", crossfade=True)
    early = tmp_path / "early.mp4"
    await media.transition(pieces[1], frames[1], pieces[2], frames[2], early)
    await media.assemble(pieces, frames, tmp_path / "given.mp4", crossfade=True, transitions={1: early})
    joined, given = decoded(tmp_path / "joined.mp4"), decoded(tmp_path / "given.mp4")
    assert len(joined) == len(given) == sum(frames)
    assert all(same(a, b) for a, b in zip(joined, given, strict=True))


async def test_the_join_takes_a_crossfade_given_to_it_as_it_is(tmp_path: Path, clips: list[Path]) -> None:
    """The join uses what it is given for that boundary (it does not make it again), and only there."""
    pieces, frames = await crossfade_pieces(tmp_path, clips)
    await media.assemble(pieces, frames, tmp_path / "joined.mp4", crossfade=True)
    other = tmp_path / "other.mp4"  # a dissolve of other pieces: visibly not the boundary's own
    await media.transition(pieces[2], frames[2], pieces[0], frames[0], other)
    await media.assemble(pieces, frames, tmp_path / "given.mp4", crossfade=True, transitions={1: other})
    joined, given = decoded(tmp_path / "joined.mp4"), decoded(tmp_path / "given.mp4")
    assert len(given) == sum(frames)
    boundary, half = frames[0] + frames[1], media.CROSSFADE_HALF
    fade = range(boundary - half, boundary + half)
    assert [i for i in range(len(given)) if not same(joined[i], given[i])] == list(fade)
    assert all(same(given[boundary - half + k], f) for k, f in enumerate(decoded(other)))


async def test_pieces_too_short_for_a_crossfade_have_none_made(tmp_path: Path, clips: list[Path]) -> None:
    with pytest.raises(ValueError):
        await media.transition(clips[0], 12, clips[1], 12, tmp_path / "x.mp4")
