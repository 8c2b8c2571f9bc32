"""Where clips and final videos live: a local folder (embedded default) or S3.

Keys follow the contract's layout and are built only from validated ids, never from user text.
"""

import asyncio
import ipaddress
import os
import re
import shutil
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import ResolveResult
from aiohttp.resolver import ThreadedResolver

_KEY_RE = re.compile(
    r"^generations/gen_[0-9a-f]{32}/(clips/clip_[0-9]{2,3}\.mp4|final\.mp4|thumbnail\.jpg)\Z"
)


class StorageError(Exception):
    """A fetch or store that failed for good: refused URL, 4xx, too large, not a video."""


class TransientStorageError(StorageError):
    """A fetch that may work if tried again: the host answered 5xx/429/408 or did not resolve."""


#: Statuses of an output host that say "try again later" rather than "no".
_RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def clip_key(generation_id: str, clip_id: str) -> str:
    return _checked(f"generations/{generation_id}/clips/{clip_id}.mp4")


def final_key(generation_id: str) -> str:
    return _checked(f"generations/{generation_id}/final.mp4")


def thumbnail_key(generation_id: str) -> str:
    return _checked(f"generations/{generation_id}/thumbnail.jpg")


def _checked(key: str) -> str:
    if not _KEY_RE.fullmatch(key):
        raise StorageError(f"refusing storage key {key!r}")
    return key


class Storage(Protocol):
    #: Largest file fetched from a URL, and whether private addresses may be fetched (SSRF guard).
    max_bytes: int
    allow_private: bool

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
    #: Fetch from private/loopback/link-local hosts too (the local provider serves from 127.0.0.1).
    allow_private: bool = False

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
        size = await download(url, tmp, max_bytes=self.max_bytes, allow_private=self.allow_private)
        os.replace(tmp, dest)
        return size


#: Redirects followed by :func:`open_url`; each hop is checked like the first URL.
MAX_REDIRECTS = 5
_TIMEOUT = aiohttp.ClientTimeout(total=600, sock_connect=15, sock_read=60)


#: The NAT64 well-known prefix (RFC 6052): the last 32 bits are the IPv4 address reached.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
#: Local-use NAT64 (RFC 8215): an operator's own translator, its embedding not ours to decode.
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, NAT64, IPv4-compatible), else None."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64 or int(ip) >> 32 == 0:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Globally routable unicast. ``is_global`` alone lets multicast through (224.0.1.0/24 is "global")."""
    if isinstance(ip, ipaddress.IPv6Address) and (ip.is_site_local or ip in _LOCAL_NAT64):
        return False
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)


def _forbidden(address: str) -> bool:
    """True for addresses a fetch of a user-influenced URL must never reach (SSRF).

    Anything not globally routable: private, loopback, link-local, shared address space (100.64.0.0/10,
    where cloud metadata services live), documentation, benchmarking, reserved, multicast. An IPv6
    address that carries an IPv4 one is judged by that IPv4 address too: IPv4-mapped, NAT64
    (64:ff9b::/96; the local-use 64:ff9b:1::/48 is refused) and 6to4 (2002::/16, whose relay would
    deliver to the embedded address, say 2002:7f00:1:: → 127.0.0.1).
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_v4(ip)
        if embedded is not None:
            return not _public(embedded)
        if ip.sixtofour is not None and not _public(ip.sixtofour):
            return True
        if ip.teredo is not None:
            return True  # a tunnel to an address we cannot judge from here
    return not _public(ip)


def public_address(address: str) -> bool:
    """Whether ``address`` (an IP literal) is globally routable: what the SSRF guard lets through."""
    return not _forbidden(address)


async def check_url(url: str, *, allow_private: bool) -> None:
    """Refuse anything but http(s), and (unless ``allow_private``) hosts resolving to non-public addresses."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StorageError("only http(s) URLs are fetched")
    if allow_private:
        return
    loop = asyncio.get_running_loop()
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = await loop.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError) as exc:
        raise TransientStorageError(f"cannot resolve {parts.hostname!r}: {exc}") from exc
    if not infos or any(_forbidden(str(info[4][0])) for info in infos):
        raise StorageError(f"refusing to fetch {parts.hostname!r}: it resolves to a non-public address")


class PublicOnlyResolver(ThreadedResolver):
    """Re-checks at connect time what :func:`check_url` checked, so DNS rebinding cannot slip past it."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await super().resolve(host, port, family)
        if not results or any(_forbidden(r["host"]) for r in results):
            raise StorageError(f"refusing to connect to {host!r}: it resolves to a non-public address")
        return results


@asynccontextmanager
async def open_url(url: str, *, allow_private: bool) -> AsyncIterator[aiohttp.ClientResponse]:
    """GET an http(s) URL with the SSRF guard; redirects are followed by hand, each hop checked."""
    connector = aiohttp.TCPConnector(resolver=None if allow_private else PublicOnlyResolver())
    async with aiohttp.ClientSession(timeout=_TIMEOUT, connector=connector) as session:
        for _ in range(MAX_REDIRECTS + 1):
            await check_url(url, allow_private=allow_private)
            async with session.get(url, allow_redirects=False) as resp:
                if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                    url = urljoin(url, resp.headers["Location"])
                    continue
                if resp.status != 200:
                    kind = TransientStorageError if resp.status in _RETRYABLE_STATUSES else StorageError
                    raise kind(f"GET {url} answered {resp.status}")
                yield resp
                return
        raise StorageError(f"too many redirects fetching {url}")


async def download(url: str, dest: Path, *, max_bytes: int, allow_private: bool = False) -> int:
    """Stream an http(s) URL to ``dest`` in chunks, with a size cap and the SSRF guard."""
    size = 0
    async with open_url(url, allow_private=allow_private) as resp:
        with dest.open("wb") as out:
            async for chunk in resp.content.iter_chunked(1 << 16):
                size += len(chunk)
                if size > max_bytes:
                    raise StorageError(f"{url} is larger than {max_bytes} bytes")
                out.write(chunk)
    return size
