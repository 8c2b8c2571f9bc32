"""Crossfades made before the join (reelstream/transitions.py): found by their pieces, made once."""

import asyncio
import shutil
from pathlib import Path

import pytest

from reelstream import media, metrics, transitions
from schemas.events import ClipSpec


def made_early() -> float:
    return metrics.REGISTRY.get_sample_value("reelstream_transitions_total", {"when": "early"}) or 0.0


@pytest.fixture(scope="module")
async def pieces(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[int]]:
    """Three finished 1.5 s pieces with the keyframes a crossfade cuts at."""
    work = tmp_path_factory.mktemp("pieces")
    frames = [media.piece_frames(1.5 * i, 1.5) for i in range(3)]
    out = []
    for i in range(3):
        spec = ClipSpec(
            clip_id=f"clip_0{i}", scene_id="scene_1", scene_kind="intro", index=i, duration_seconds=1.5,
            aspect_ratio="16:9", width=640, height=360, prompt="x", negative_prompt="", caption="",
            colors=["#FF6600", "#003366"], seed=i,
        )  # fmt: skip
        raw, piece = work / f"raw{i}.mp4", work / f"piece{i}.mp4"
        await media.render_clip(spec, raw)
        await media.finish_clip(
            raw, piece, frames=frames[i], width=640, height=360, keyframes=media.crossfade_cuts(frames[i])
        )
        out.append(piece)
    return out, frames


async def test_a_crossfade_made_early_is_found_by_the_join_and_forgotten_after(
    pieces: tuple[list[Path], list[int]],
) -> None:
    paths, frames = pieces
    assert await transitions.prepare(paths[0], frames[0], paths[1], frames[1])
    found = await transitions.ready(paths, frames)
    assert list(found) == [0]  # the first boundary; the second's is not made
    await transitions.forget(list(found.values()))
    assert await transitions.ready(paths, frames) == {}


async def test_two_neighbours_finishing_at_once_make_their_crossfade_once(
    pieces: tuple[list[Path], list[int]],
) -> None:
    paths, frames = pieces
    before = made_early()
    both = await asyncio.gather(
        transitions.prepare(paths[1], frames[1], paths[2], frames[2]),
        transitions.prepare(paths[1], frames[1], paths[2], frames[2]),
    )
    assert both == [True, True]
    assert made_early() - before == 1
    await transitions.forget(list((await transitions.ready(paths, frames)).values()))


async def test_a_piece_finished_again_does_not_meet_the_old_crossfade(
    pieces: tuple[list[Path], list[int]], tmp_path: Path
) -> None:
    """Another attempt's piece has other bytes: the crossfade made with the old one is not its own."""
    paths, frames = pieces
    assert await transitions.prepare(paths[0], frames[0], paths[1], frames[1])
    again = tmp_path / "piece1-again.mp4"
    shutil.copyfile(paths[2], again)  # different frames where piece 1 stood
    assert await transitions.ready([paths[0], again], frames[:2]) == {}
    await transitions.forget(list((await transitions.ready(paths, frames)).values()))


async def test_pieces_too_short_for_a_crossfade_get_none(pieces: tuple[list[Path], list[int]]) -> None:
    paths, _ = pieces
    assert not await transitions.prepare(paths[0], 12, paths[1], 12)
