"""S3 storage (any S3-compatible endpoint) with aiobotocore.

One client is created lazily on first use and reused; :meth:`S3Storage.close` releases it. Objects are
never held whole in memory: files and downloads go up in 8 MiB multipart parts. The gateway serves
objects with a 302 to a SigV4, path-style presigned URL (:meth:`S3Storage.presigned_url`).
"""

from __future__ import annotations

import asyncio
import os
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from reelstream.storage import StorageError, _checked, open_url

#: Part size of multipart uploads (S3's minimum is 5 MiB for every part but the last).
PART_SIZE = 8 * 1024 * 1024
_CHUNK = 1 << 16


def _looks_like_mp4(head: bytes) -> bool:
    """ISO-BMFF files start with a box whose type, at offset 4, is ``ftyp``."""
    return len(head) >= 8 and head[4:8] == b"ftyp"


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3Storage:
    """Objects in ``bucket``; ``local_path`` is None, so the gateway redirects to presigned URLs."""

    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None = None,
        *,
        max_bytes: int = 512 * 1024 * 1024,
        allow_private: bool = False,
    ) -> None:
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.max_bytes = max_bytes
        self.allow_private = allow_private
        self._client: Any = None
        self._stack: AsyncExitStack | None = None
        self._lock = asyncio.Lock()

    async def _s3(self) -> Any:
        """The shared client, created on first use; fails clearly when the bucket does not exist."""
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                stack = AsyncExitStack()
                # Few retries inside the client: an outage longer than a blip is the stage runtime's to
                # retry (bounded, logged, counted), not something to wait out silently in here.
                config = AioConfig(
                    signature_version="s3v4",
                    s3={"addressing_style": "path"},
                    retries={"mode": "standard", "max_attempts": 3},
                )
                try:
                    client = await stack.enter_async_context(
                        get_session().create_client("s3", endpoint_url=self.endpoint_url, config=config)
                    )
                    await client.head_bucket(Bucket=self.bucket)
                except ClientError as exc:
                    await stack.aclose()
                    raise StorageError(
                        f"S3 bucket {self.bucket!r} does not exist or is not accessible"
                        f" ({_error_code(exc) or exc}); create it first"
                    ) from exc
                except BaseException:
                    await stack.aclose()
                    raise
                self._client, self._stack = client, stack
        return self._client

    async def close(self) -> None:
        async with self._lock:
            stack, self._stack, self._client = self._stack, None, None
            if stack is not None:
                await stack.aclose()

    def local_path(self, key: str) -> Path | None:
        return None

    async def exists(self, key: str) -> bool:
        s3 = await self._s3()
        try:
            await s3.head_object(Bucket=self.bucket, Key=_checked(key))
        except ClientError as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise StorageError(f"HEAD {key}: {exc}") from exc
        return True

    async def presigned_url(self, key: str, expires: int = 3600) -> str:
        s3 = await self._s3()
        url: str = await s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": _checked(key)}, ExpiresIn=expires
        )
        return url

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        key = _checked(key)
        size = (await asyncio.to_thread(os.stat, path)).st_size
        if size <= PART_SIZE:
            body = await asyncio.to_thread(path.read_bytes)
            s3 = await self._s3()
            await s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type)
            return
        upload = await _Multipart.start(self, key, content_type)
        try:
            with path.open("rb") as src:
                while part := await asyncio.to_thread(src.read, PART_SIZE):
                    await upload.add(part)
            await upload.complete()
        except BaseException:
            await upload.abort()
            raise

    async def get_file(self, key: str, dest: Path) -> None:
        s3 = await self._s3()
        try:
            resp = await s3.get_object(Bucket=self.bucket, Key=_checked(key))
        except ClientError as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                raise StorageError(f"{key} not found") from exc
            raise StorageError(f"GET {key}: {exc}") from exc
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        try:
            async with resp["Body"] as stream:
                with tmp.open("wb") as out:
                    while chunk := await stream.read(_CHUNK):
                        out.write(chunk)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    async def upload_from_url(self, key: str, url: str, *, content_type: str = "video/mp4") -> int:
        """Stream ``url`` into S3 (8 MiB parts, never the whole file in memory); returns its size.

        Refuses bodies over ``max_bytes`` and, for ``video/mp4``, bodies that are not ISO-BMFF; a
        multipart upload started meanwhile is aborted, so no partial object is left behind.
        """
        key = _checked(key)
        s3 = await self._s3()
        size = 0
        buffer = bytearray()
        checked = content_type != "video/mp4"
        upload: _Multipart | None = None
        try:
            async with open_url(url, allow_private=self.allow_private) as resp:
                if resp.content_length is not None and resp.content_length > self.max_bytes:
                    raise StorageError(f"{url} is larger than {self.max_bytes} bytes")
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise StorageError(f"{url} is larger than {self.max_bytes} bytes")
                    buffer += chunk
                    if not checked and len(buffer) >= 8:
                        if not _looks_like_mp4(bytes(buffer[:8])):
                            raise StorageError(f"{url} is not an MP4 (no ftyp box)")
                        checked = True
                    if len(buffer) >= PART_SIZE:
                        if upload is None:
                            upload = await _Multipart.start(self, key, content_type)
                        await upload.add(bytes(buffer[:PART_SIZE]))
                        del buffer[:PART_SIZE]
            if not checked:
                raise StorageError(f"{url} is not an MP4 (only {size} bytes)")
            if upload is None:
                await s3.put_object(Bucket=self.bucket, Key=key, Body=bytes(buffer), ContentType=content_type)
            else:
                if buffer:
                    await upload.add(bytes(buffer))
                await upload.complete()
        except BaseException:
            if upload is not None:
                await upload.abort()
            raise
        return size


class _Multipart:
    """One multipart upload in progress."""

    def __init__(self, s3: Any, bucket: str, key: str, upload_id: str) -> None:
        self.s3, self.bucket, self.key, self.upload_id = s3, bucket, key, upload_id
        self.parts: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, storage: S3Storage, key: str, content_type: str) -> _Multipart:
        s3 = await storage._s3()
        resp = await s3.create_multipart_upload(Bucket=storage.bucket, Key=key, ContentType=content_type)
        return cls(s3, storage.bucket, key, str(resp["UploadId"]))

    async def add(self, data: bytes) -> None:
        number = len(self.parts) + 1
        resp = await self.s3.upload_part(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=data
        )
        self.parts.append({"ETag": resp["ETag"], "PartNumber": number})

    async def complete(self) -> None:
        await self.s3.complete_multipart_upload(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": self.parts}
        )

    async def abort(self) -> None:
        try:
            await asyncio.shield(
                self.s3.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
            )
        except (ClientError, BotoCoreError, OSError, asyncio.CancelledError):
            pass  # best effort: a bucket lifecycle rule cleans up what is left
