"""Media: finishing clips as they land, and the final stream-copy join, each beside bare ffmpeg.

1. **Finishing**, in output seconds per CPU-second: :func:`reelstream.media.finish_clip` on twelve
   5 s provider-like clips (832x480, 16 fps) into 720x1280 pieces of a branded 60 s order, the way the
   completion stage finishes them: the brand's caption layer on every clip, the end card on the last,
   keyframes where the crossfades will cut; beside the same ffmpeg command line run bare (the ceiling:
   what the filters and the encoder themselves cost). Target ≥ 0.8x of it. The layers are drawn once
   beforehand (Pillow; their time per clip is printed apart), so both sides composite the same PNGs.
2. **The join**: :func:`reelstream.media.concat` of the twelve finished 5 s pieces, beside a bare
   ``ffmpeg -f concat -c copy`` of the same list. Target ≤ 1.5x of its wall time.

Run: ``python bench/bench_media.py`` (``make bench`` runs it with the others).
"""

import asyncio
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

from reelstream import finishing, media
from schemas.events import ClipSpec

CLIPS = 12
SECONDS = 5.0
WIDTH, HEIGHT = 720, 1280  # 9:16 at 720p: scale-to-cover plus a crop, like a real order
RUNS = 2  # two runs keep make bench under 15 minutes; the ratio to bare moved < 5 % between runs


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def sources(directory: Path) -> list[Path]:
    """Clips like a provider's: 16 fps, another size, a little longer than their share."""
    out = []
    for i in range(CLIPS):
        spec = ClipSpec(
            clip_id=f"clip_{i:02d}",
            scene_id="scene_00",
            scene_kind="development",
            index=i,
            duration_seconds=5.06,
            aspect_ratio="16:9",
            width=832,
            height=480,
            prompt="bench",
            negative_prompt="",
            caption=f"Scene {i}: a caption drawn into the provider's clip",
            colors=["#0A84FF", "#FF375F"],
            seed=i,
        )
        path = directory / f"source_{i:02d}.mp4"
        await media.render_clip(spec, path, fps=16)
        out.append(path)
    return out


FRAMES = media.piece_frames(0.0, SECONDS)
LOOK = finishing.Look(
    width=WIDTH, height=HEIGHT, total_frames=CLIPS * FRAMES, captions=True, crossfade=True,
    brand_name="Reelstream", tagline="Prompt in, video out", cta="Order yours today",
    disclaimer="Benchmark footage made by reelstream. Not a real offer.", colour="#0A84FF",
)  # fmt: skip


async def layers(directory: Path) -> tuple[list[list[media.Overlay]], float]:
    """Each clip's overlays as the completion stage draws them, and the drawing's seconds per clip."""
    boundaries = [FRAMES * (i + 1) for i in range(CLIPS - 1)]
    t0, drawn = time.monotonic(), []
    for i in range(CLIPS):
        made = await finishing.clip_layers(
            LOOK, caption=f"Scene {i + 1}: the product, up close and in use", start=i * FRAMES,
            frames=FRAMES, boundaries=boundaries, work_dir=directory, allow_private=False, name=f"clip{i}",
        )  # fmt: skip
        drawn.append(made.overlays)
    return drawn, (time.monotonic() - t0) / CLIPS


async def ours(
    clips: list[Path], drawn: list[list[media.Overlay]], directory: Path
) -> tuple[float, float, list[Path]]:
    """(wall, CPU seconds) of finishing every clip through reelstream, one after another."""
    pieces = []
    cpu0, own0, t0 = children_cpu(), own_cpu(), time.monotonic()
    for i, clip in enumerate(clips):
        piece = directory / f"piece_{i:02d}.mp4"
        await media.finish_clip(
            clip, piece, frames=FRAMES, width=WIDTH, height=HEIGHT, overlays=drawn[i],
            keyframes=media.crossfade_cuts(FRAMES),
        )  # fmt: skip
        pieces.append(piece)
    return time.monotonic() - t0, children_cpu() - cpu0 + own_cpu() - own0, pieces


def bare(clips: list[Path], drawn: list[list[media.Overlay]], directory: Path) -> tuple[float, float]:
    """(wall, CPU seconds) of the same ffmpeg command lines, run directly."""
    cpu0, t0 = children_cpu(), time.monotonic()
    for i, clip in enumerate(clips):
        out = directory / f"bare_{i:02d}.mp4"
        args = media.finish_args(
            clip, out, frames=FRAMES, width=WIDTH, height=HEIGHT, overlays=drawn[i],
            keyframes=media.crossfade_cuts(FRAMES),
        )  # fmt: skip
        subprocess.run([media.ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", *args], check=True)
    return time.monotonic() - t0, children_cpu() - cpu0


async def join_ours(pieces: list[Path], directory: Path) -> float:
    t0 = time.monotonic()
    await media.concat(pieces, directory / "final.mp4")
    return time.monotonic() - t0


def join_bare(pieces: list[Path], directory: Path) -> float:
    listing = directory / "bare_list.txt"
    listing.write_text("".join(f"file '{p}'\n" for p in pieces))
    t0 = time.monotonic()
    subprocess.run(
        [media.ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-f", "concat", "-safe", "0",
         "-i", str(listing), "-c", "copy", str(directory / "bare_final.mp4")],
        check=True,
    )  # fmt: skip
    return time.monotonic() - t0


async def main() -> int:
    info = common.header("media: finishing and the final join", "python bench/bench_media.py")
    output_seconds = CLIPS * SECONDS
    finish_ours: list[float] = []
    finish_bare: list[float] = []
    joins_ours: list[float] = []
    joins_bare: list[float] = []
    with tempfile.TemporaryDirectory(prefix="reelstream-bench-media-") as tmp:
        directory = Path(tmp)
        clips = await sources(directory)
        drawn, drawing = await layers(directory)
        print(f"the brand's layers drawn in {drawing * 1000:.0f} ms per clip (Pillow, once)", flush=True)
        for run in range(1, RUNS + 1):
            wall, cpu, pieces = await ours(clips, drawn, directory)
            bare_wall, bare_cpu = bare(clips, drawn, directory)
            finish_ours.append(output_seconds / cpu)
            finish_bare.append(output_seconds / bare_cpu)
            print(
                f"run {run}: finishing {output_seconds:.0f} s of video: reelstream {wall:.2f} s wall,"
                f" {cpu:.2f} CPU-s ({finish_ours[-1]:.2f} out-s/CPU-s); bare ffmpeg {bare_wall:.2f} s wall,"
                f" {bare_cpu:.2f} CPU-s ({finish_bare[-1]:.2f} out-s/CPU-s)",
                flush=True,
            )
        for _ in range(5):
            joins_ours.append(await join_ours(pieces, directory))
            joins_bare.append(join_bare(pieces, directory))
    finishing, ceiling = common.median(finish_ours), common.median(finish_bare)
    join, join_ceiling = common.median(joins_ours), common.median(joins_bare)
    print(
        f"finishing: median {finishing:.2f} output-s per CPU-s beside bare ffmpeg {ceiling:.2f}:"
        f" {common.ratio(finishing, ceiling)} of it (target >= 80%)"
    )
    print(
        f"join of {CLIPS} pieces: median {join * 1000:.0f} ms beside bare ffmpeg concat copy"
        f" {join_ceiling * 1000:.0f} ms: {join / join_ceiling:.2f}x (target <= 1.5x)"
    )
    common.save(
        "media",
        {
            "machine": info,
            "finishing_output_seconds_per_cpu_second": finish_ours,
            "bare_output_seconds_per_cpu_second": finish_bare,
            "join_seconds": joins_ours,
            "bare_join_seconds": joins_bare,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
