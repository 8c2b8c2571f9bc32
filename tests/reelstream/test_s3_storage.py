"""S3Storage against a moto server, and the SSRF guard shared with LocalStorage."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import imageio_ffmpeg
import loopback
import pytest
import pytest_asyncio
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from aiohttp import web

from reelstream import service, storage
from reelstream.s3 import PART_SIZE, S3Storage
from reelstream.settings import Settings
from reelstream.storage import LocalStorage, StorageError

GEN = "gen_" + "a" * 32
FINAL = storage.final_key(GEN)
CLIP = storage.clip_key(GEN, "clip_01")


def _fake_mp4(size: int) -> bytes:
    head = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"
    return head + bytes(range(256)) * ((size - len(head)) // 256 + 1)


@pytest.fixture(scope="session")
def tiny_mp4(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    out = tmp_path_factory.mktemp("mp4") / "tiny.mp4"
    argv = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=64x36:d=0.5:r=8"]
    argv += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-y", str(out)]
    subprocess.run(argv, check=True, timeout=60)
    return out.read_bytes()


def _client(endpoint: str) -> Any:
    return get_session().create_client(
        "s3", endpoint_url=endpoint, config=AioConfig(signature_version="s3v4")
    )


@pytest_asyncio.fixture
async def bucket(s3_endpoint: str) -> str:
    name = f"b-{uuid.uuid4().hex[:12]}"
    async with _client(s3_endpoint) as s3:
        await s3.create_bucket(Bucket=name)
    return name


@pytest_asyncio.fixture
async def store(s3_endpoint: str, bucket: str) -> AsyncIterator[S3Storage]:
    s = S3Storage(bucket, s3_endpoint, max_bytes=64 * 1024 * 1024, allow_private=True)
    yield s
    await s.close()


@pytest_asyncio.fixture
async def origin() -> AsyncIterator[tuple[str, dict[str, bytes]]]:
    """A local HTTP server serving ``bodies[name]`` at ``/name`` (and a redirect at /redirect/name)."""
    bodies: dict[str, bytes] = {}

    async def serve(request: web.Request) -> web.StreamResponse:
        body = bodies.get(request.match_info["name"])
        if body is None:
            raise web.HTTPNotFound()
        resp = web.StreamResponse(headers={"Content-Type": "video/mp4"})
        await resp.prepare(request)
        for i in range(0, len(body), 1 << 20):
            await resp.write(body[i : i + (1 << 20)])
        await resp.write_eof()
        return resp

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(request.query["to"])

    app = web.Application()
    app.router.add_get("/f/{name}", serve)
    app.router.add_get("/redirect", redirect)
    runner, port = await loopback.serve(app)
    yield f"http://127.0.0.1:{port}", bodies
    await runner.cleanup()


async def _uploads_in_progress(endpoint: str, bucket: str) -> list[Any]:
    async with _client(endpoint) as s3:
        resp = await s3.list_multipart_uploads(Bucket=bucket)
    return list(resp.get("Uploads", []))


async def test_put_get_exists_round_trip(store: S3Storage, tmp_path: Path, tiny_mp4: bytes) -> None:
    src = tmp_path / "in.mp4"
    src.write_bytes(tiny_mp4)
    assert store.local_path(FINAL) is None
    assert not await store.exists(FINAL)
    await store.put_file(FINAL, src, "video/mp4")
    assert await store.exists(FINAL)
    dest = tmp_path / "out" / "got.mp4"
    await store.get_file(FINAL, dest)
    assert dest.read_bytes() == tiny_mp4
    with pytest.raises(StorageError):
        await store.get_file(CLIP, tmp_path / "missing.mp4")
    with pytest.raises(StorageError):
        await store.exists("generations/../etc/passwd")


async def test_put_file_multipart(store: S3Storage, s3_endpoint: str, bucket: str, tmp_path: Path) -> None:
    body = _fake_mp4(PART_SIZE * 2 + 12345)
    src = tmp_path / "big.mp4"
    src.write_bytes(body)
    await store.put_file(FINAL, src, "video/mp4")
    async with _client(s3_endpoint) as s3:
        head = await s3.head_object(Bucket=bucket, Key=FINAL)
    assert head["ContentLength"] == len(body)
    assert head["ETag"].strip('"').endswith("-3")  # three parts
    await store.get_file(FINAL, tmp_path / "back.mp4")
    assert (tmp_path / "back.mp4").read_bytes() == body


async def test_upload_from_url_small_real_mp4(
    store: S3Storage,
    origin: tuple[str, dict[str, bytes]],
    tmp_path: Path,
    tiny_mp4: bytes,
    s3_endpoint: str,
    bucket: str,
) -> None:
    base, bodies = origin
    bodies["tiny.mp4"] = tiny_mp4
    size = await store.upload_from_url(CLIP, f"{base}/f/tiny.mp4")
    assert size == len(tiny_mp4)
    async with _client(s3_endpoint) as s3:
        resp = await s3.get_object(Bucket=bucket, Key=f"generations/{GEN}/clips/clip_01.mp4")
        async with resp["Body"] as stream:
            assert await stream.read() == tiny_mp4
        assert resp["ContentType"] == "video/mp4"


async def test_upload_from_url_multipart(
    store: S3Storage, origin: tuple[str, dict[str, bytes]], tmp_path: Path, s3_endpoint: str, bucket: str
) -> None:
    base, bodies = origin
    body = _fake_mp4(PART_SIZE + 3 * 1024 * 1024)
    bodies["big.mp4"] = body
    # Through a redirect too: each hop is followed by hand.
    url = f"{base}/redirect?to={base}/f/big.mp4"
    assert await store.upload_from_url(FINAL, url) == len(body)
    async with _client(s3_endpoint) as s3:
        head = await s3.head_object(Bucket=bucket, Key=FINAL)
    assert head["ETag"].strip('"').endswith("-2")
    await store.get_file(FINAL, tmp_path / "back.mp4")
    assert (tmp_path / "back.mp4").read_bytes() == body
    assert await _uploads_in_progress(s3_endpoint, bucket) == []


async def test_size_cap_aborts_and_leaves_nothing(
    s3_endpoint: str, bucket: str, origin: tuple[str, dict[str, bytes]]
) -> None:
    base, bodies = origin
    bodies["huge.mp4"] = _fake_mp4(PART_SIZE * 2 + 100)
    capped = S3Storage(bucket, s3_endpoint, max_bytes=PART_SIZE + 1024 * 1024, allow_private=True)
    try:
        with pytest.raises(StorageError, match="larger than"):
            await capped.upload_from_url(FINAL, f"{base}/f/huge.mp4")
        assert not await capped.exists(FINAL)
    finally:
        await capped.close()
    assert await _uploads_in_progress(s3_endpoint, bucket) == []


async def test_non_mp4_rejected(store: S3Storage, origin: tuple[str, dict[str, bytes]]) -> None:
    base, bodies = origin
    bodies["page.html"] = b"<!doctype html><html><body>not a video</body></html>" * 10
    bodies["short"] = b"abc"
    with pytest.raises(StorageError, match="not an MP4"):
        await store.upload_from_url(CLIP, f"{base}/f/page.html")
    with pytest.raises(StorageError, match="not an MP4"):
        await store.upload_from_url(CLIP, f"{base}/f/short")
    with pytest.raises(StorageError, match="404"):
        await store.upload_from_url(CLIP, f"{base}/f/nothing")
    assert not await store.exists(CLIP)


async def test_presigned_url_fetches_bytes(store: S3Storage, tmp_path: Path, tiny_mp4: bytes) -> None:
    src = tmp_path / "in.mp4"
    src.write_bytes(tiny_mp4)
    await store.put_file(FINAL, src, "video/mp4")
    url = await store.presigned_url(FINAL)
    assert "X-Amz-Signature=" in url and "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url
    assert f"/{store.bucket}/generations/{GEN}/final.mp4" in url  # path style
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        assert await resp.read() == tiny_mp4


async def test_missing_bucket_is_a_clear_error(s3_endpoint: str) -> None:
    s = S3Storage(f"missing-{uuid.uuid4().hex[:8]}", s3_endpoint)
    with pytest.raises(StorageError, match="does not exist"):
        await s.exists(FINAL)
    await s.close()


def test_build_storage_chooses_backend(tmp_path: Path) -> None:
    local = service.build_storage(Settings(data_dir=tmp_path, replicate_api_token=None))
    assert isinstance(local, LocalStorage) and local.allow_private  # the local provider serves 127.0.0.1
    strict = service.build_storage(Settings(data_dir=tmp_path, replicate_api_token="r8_x"))
    assert isinstance(strict, LocalStorage) and not strict.allow_private
    s3 = service.build_storage(
        Settings(data_dir=tmp_path, s3_bucket="b", s3_endpoint_url="http://x", replicate_api_token="r8_x")
    )
    assert isinstance(s3, S3Storage) and not s3.allow_private and s3.bucket == "b"
    opted = service.build_storage(
        Settings(data_dir=tmp_path, replicate_api_token="r8_x", storage_allow_private_urls=True)
    )
    assert isinstance(opted, LocalStorage) and opted.allow_private


# --------------------------------------------------------------------------------------------------
# SSRF guard

REFUSED = [
    "http://127.0.0.1/x.mp4",
    "http://localhost:8080/x.mp4",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.5/x.mp4",
    "http://[::1]/x.mp4",
    "http://[::ffff:127.0.0.1]/x.mp4",
    "http://0.0.0.0/x.mp4",
    "http://224.0.0.1/x.mp4",
]
BAD_SCHEMES = ["file:///etc/passwd", "ftp://example.com/x.mp4", "gopher://127.0.0.1/", "http:///nohost"]


@pytest.mark.parametrize("url", REFUSED + BAD_SCHEMES)
async def test_s3_refuses_private_and_non_http(store: S3Storage, url: str) -> None:
    strict = S3Storage(store.bucket, store.endpoint_url, allow_private=False)
    try:
        with pytest.raises(StorageError):
            await strict.upload_from_url(CLIP, url)
        assert not await strict.exists(CLIP)
    finally:
        await strict.close()


@pytest.mark.parametrize("url", REFUSED + BAD_SCHEMES)
async def test_local_refuses_private_and_non_http(tmp_path: Path, url: str) -> None:
    with pytest.raises(StorageError):
        await LocalStorage(tmp_path).upload_from_url(CLIP, url)
    assert not (tmp_path / CLIP).exists()


@pytest.mark.parametrize("url", BAD_SCHEMES)
async def test_schemes_refused_even_when_private_allowed(tmp_path: Path, url: str) -> None:
    with pytest.raises(StorageError):
        await storage.download(url, tmp_path / "x", max_bytes=100, allow_private=True)


async def test_redirect_to_private_refused(
    origin: tuple[str, dict[str, bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A public-looking first hop cannot bounce the fetch to a private address."""
    base, bodies = origin
    bodies["tiny"] = _fake_mp4(1000)
    checked: list[str] = []
    real_check = storage.check_url

    async def first_hop_public(url: str, *, allow_private: bool) -> None:
        checked.append(url)
        if len(checked) > 1:
            await real_check(url, allow_private=allow_private)

    monkeypatch.setattr(storage, "check_url", first_hop_public)
    url = f"{base}/redirect?to=http://169.254.169.254/latest/meta-data/"
    # aiohttp connects to the loopback origin for the first hop only because the resolver is not used for
    # IP literals; the second hop is checked and refused before any connection.
    with pytest.raises(StorageError, match="non-public"):
        await storage.download(url, tmp_path / "x", max_bytes=10_000, allow_private=False)
    assert len(checked) == 2


async def test_local_allowed_private_still_downloads(
    origin: tuple[str, dict[str, bytes]], tmp_path: Path, tiny_mp4: bytes
) -> None:
    base, bodies = origin
    bodies["tiny.mp4"] = tiny_mp4
    local = LocalStorage(tmp_path, allow_private=True)
    assert await local.upload_from_url(CLIP, f"{base}/f/tiny.mp4") == len(tiny_mp4)
    assert (tmp_path / CLIP).read_bytes() == tiny_mp4
