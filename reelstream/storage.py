"""Where clips and final videos live: a local folder (embedded default) or S3.

Keys follow the contract's layout and are built only from validated ids, never from user text.
"""

import asyncio
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiohttp

_KEY_RE = re.compile(r"^generations/gen_[0-9a-f]{32}/(clips/clip_[0-9]{2,3}\.mp4|final\.mp4|thumbnail\.jpg)$")


class StorageError(Exception):
    pass


def clip_key(generation_id: str, clip_id: str) -> str:
    return _checked(f"generations/{generation_id}/clips/{clip_id}.mp4")


def final_key(generation_id: str) -> str:
    return _checked(f"generations/{generation_id}/final.mp4")


def thumbnail_key(generation_id: str) -> str:
    return _checked(f"generations/{generation_id}/thumbnail.jpg")


def _checked(key: str) -> str:
    if not _KEY_RE.match(key):
        raise StorageError(f"refusing storage key {key!r}")
    return key


class Storage(Protocol):
    async def put_file(self, key: str, path: Path, content_type: str) -> None: ...
    async def get_file(self, key: str, dest: Path) -> None: ...
    async def upload_from_url(self, key: str, url: str, *, content_type: str = "video/mp4") -> int: ...
    async def exists(self, key: str) -> bool: ...
    def local_path(self, key: str) -> Path | None: ...


@dataclass
class LocalStorage:
    """Files under ``root``; the gateway serves them with Range support."""

    root: Path
    max_bytes: int = 512 * 1024 * 1024

    def local_path(self, key: str) -> Path:
        return self.root / _checked(key)

    async def exists(self, key: str) -> bool:
        return self.local_path(key).is_file()

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        await asyncio.to_thread(self._copy_in, path, self.local_path(key))

    @staticmethod
    def _copy_in(path: Path, dest: Path) -> None:
        """Copy to a temporary name, then rename: readers never see a half-written file."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        if path.resolve() != dest.resolve():
            tmp = dest.with_name(dest.name + ".part")
            shutil.copyfile(path, tmp)
            os.replace(tmp, dest)

    async def get_file(self, key: str, dest: Path) -> None:
        src = self.local_path(key)
        if not src.is_file():
            raise StorageError(f"{key} not found")
        await asyncio.to_thread(shutil.copyfile, src, dest)

    async def upload_from_url(self, key: str, url: str, *, content_type: str = "video/mp4") -> int:
        """Stream ``url`` into storage in chunks, never holding the file in memory; returns its size."""
        dest = self.local_path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        size = await download(url, tmp, max_bytes=self.max_bytes)
        os.replace(tmp, dest)
        return size


async def download(url: str, dest: Path, *, max_bytes: int) -> int:
    """Stream an http(s) URL to ``dest`` in chunks, with a size cap."""
    if not url.startswith(("http://", "https://")):
        raise StorageError("only http(s) URLs are fetched")
    size = 0
    timeout = aiohttp.ClientTimeout(total=600, sock_connect=15, sock_read=60)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
        if resp.status != 200:
            raise StorageError(f"GET {url} answered {resp.status}")
        with dest.open("wb") as out:
            async for chunk in resp.content.iter_chunked(1 << 16):
                size += len(chunk)
                if size > max_bytes:
                    raise StorageError(f"{url} is larger than {max_bytes} bytes")
                out.write(chunk)
    return size
