"""The video, clip video and thumbnail routes: 404 until stored, then bytes with Range support."""

from pathlib import Path

from gateway_harness import Gateway

from reelstream.storage import clip_key, final_key, thumbnail_key

CONTENT = bytes(range(256)) * 40  # 10240 bytes


def _store(gw: Gateway, key: str, content: bytes) -> Path:
    path = gw.storage.local_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


async def test_final_video_is_404_until_completed_then_served_with_ranges(gw: Gateway) -> None:
    gid = await gw.create("Video ad")
    url = f"/api/v1/generations/{gid}/video"
    resp = await gw.client.get(url)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"

    _store(gw, final_key(gid), CONTENT)
    resp = await gw.client.get(url)
    assert resp.status == 404  # stored but not completed yet (still assembling, say)

    await gw.pool.execute("UPDATE generations SET status = 'completed' WHERE id = $1", gid)
    resp = await gw.client.get(url)
    assert resp.status == 200
    assert resp.content_type == "video/mp4"
    assert resp.headers.get("Accept-Ranges") == "bytes"
    assert await resp.read() == CONTENT

    resp = await gw.client.get(url, headers={"Range": "bytes=100-199"})
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes 100-199/{len(CONTENT)}"
    assert await resp.read() == CONTENT[100:200]

    resp = await gw.client.get(url, headers={"Range": "bytes=-16"})
    assert resp.status == 206
    assert await resp.read() == CONTENT[-16:]

    resp = await gw.client.get(url, headers={"Range": f"bytes={len(CONTENT) + 10}-"})
    assert resp.status == 416


async def test_completed_but_missing_file_is_404(gw: Gateway) -> None:
    gid = await gw.create("Lost video")
    await gw.pool.execute("UPDATE generations SET status = 'completed' WHERE id = $1", gid)
    resp = await gw.client.get(f"/api/v1/generations/{gid}/video")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"


async def test_clip_video_needs_a_stored_clip(gw: Gateway) -> None:
    gid = await gw.create("Clip video ad")
    url = f"/api/v1/generations/{gid}/clips/clip_01/video"
    assert (await gw.client.get(url)).status == 404
    await gw.pool.execute(
        "INSERT INTO clips (generation_id, clip_id, scene_id, idx, status, duration_seconds)"
        " VALUES ($1, 'clip_01', 'scene_1', 0, 'processing', 5.0)",
        gid,
    )
    assert (await gw.client.get(url)).status == 404
    _store(gw, clip_key(gid, "clip_01"), CONTENT[:1000])
    await gw.pool.execute(
        "UPDATE clips SET status = 'succeeded', storage_key = $2 WHERE generation_id = $1",
        gid,
        clip_key(gid, "clip_01"),
    )
    resp = await gw.client.get(url, headers={"Range": "bytes=0-9"})
    assert resp.status == 206
    assert resp.content_type == "video/mp4"
    assert await resp.read() == CONTENT[:10]
    for bad in ("clip_1", "clip_01.mp4", "..", "clip_0001"):
        resp = await gw.client.get(f"/api/v1/generations/{gid}/clips/{bad}/video")
        assert resp.status == 404, bad


async def test_thumbnail(gw: Gateway) -> None:
    gid = await gw.create("Thumbnail ad")
    url = f"/api/v1/generations/{gid}/thumbnail"
    assert (await gw.client.get(url)).status == 404
    _store(gw, thumbnail_key(gid), b"\xff\xd8\xff\xe0jpeg")
    await gw.pool.execute("UPDATE generations SET status = 'completed' WHERE id = $1", gid)
    resp = await gw.client.get(url)
    assert resp.status == 200
    assert resp.content_type == "image/jpeg"
    assert await resp.read() == b"\xff\xd8\xff\xe0jpeg"
