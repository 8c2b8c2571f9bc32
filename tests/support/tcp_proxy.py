"""A TCP proxy to put between a process under test and a shared server, to cut and restore the link.

Outage tests must never stop the shared Postgres or Redis (CI runs right after, against them as they
were left). Instead the process under test is pointed at this proxy, and the test breaks the link:

* ``await proxy.cut()`` ("refuse"): what a stopped server looks like. Live connections are dropped and
  the port stops listening, so new connections are refused at once.
* ``await proxy.cut("blackhole")``: what a partitioned network looks like. Connections stay open and
  new ones are accepted, but not a byte goes through either way: clients hang until their own timeouts.
* ``await proxy.restore()``: listening and forwarding again; the connections that lived through a
  blackhole are dropped (their streams lost bytes), so clients reconnect cleanly.

Usage::

    proxy = await TcpProxy("127.0.0.1", 5432).start()
    url = proxy.url(database_url)     # same URL, host and port replaced by the proxy's
    ...
    await proxy.stop()
"""

import asyncio
import contextlib
import logging
import socket
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

CutMode = Literal["refuse", "blackhole"]
_CHUNK = 64 * 1024


class TcpProxy:
    """Forwards ``127.0.0.1:port`` (picked by the OS on first start, then kept) to ``host:port``."""

    def __init__(self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self.port = 0
        self.mode: CutMode | None = None
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._open = asyncio.Event()  # cleared in a blackhole
        self._open.set()

    @classmethod
    def for_url(cls, url: str) -> "TcpProxy":
        """A proxy in front of the server a ``scheme://user@host:port/...`` URL names."""
        parts = urlsplit(url)
        assert parts.hostname and parts.port, f"the URL needs an explicit host and port: {url}"
        return cls(parts.hostname, parts.port)

    def url(self, url: str) -> str:
        """``url`` with its host and port replaced by this proxy's (user, path and query kept)."""
        parts = urlsplit(url)
        user = f"{parts.username}@" if parts.username else ""
        if parts.password:
            user = f"{parts.username}:{parts.password}@"
        return urlunsplit(parts._replace(netloc=f"{user}{self.listen_host}:{self.port}"))

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> "TcpProxy":
        await self._listen()
        return self

    async def stop(self) -> None:
        await self._close_listener()
        self._drop_all()
        await self._wait_links()

    async def cut(self, mode: CutMode = "refuse") -> None:
        """Break the link (see the module docstring); cutting again switches the mode."""
        self.mode = mode
        if mode == "blackhole":
            self._open.clear()
        if mode == "refuse":
            await self._close_listener()
            self._drop_all()
            await self._wait_links()
        log.info("proxy :%d cut (%s)", self.port, mode)

    async def restore(self) -> None:
        was = self.mode
        self.mode = None
        if was == "blackhole":
            self._drop_all()
            await self._wait_links()
        self._open.set()
        if self._server is None:
            await self._listen()
        log.info("proxy :%d restored", self.port)

    # -- internals -----------------------------------------------------------------------------------
    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.listen_host, self.port, reuse_address=True, family=socket.AF_INET
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close_listener(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), timeout=1.0)

    def _drop_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._links):
            task.cancel()

    async def _wait_links(self) -> None:
        if self._links:
            await asyncio.wait(list(self._links), timeout=2.0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._links.add(task)
        self._writers.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            await self._open.wait()  # in a blackhole: accepted, going nowhere until restored (then dropped)
            if self.mode == "refuse":
                return
            up_reader, upstream = await asyncio.open_connection(self.target_host, self.target_port)
            self._writers.add(upstream)
            await asyncio.gather(self._pipe(reader, upstream), self._pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # dropped by cut/restore/stop; the task ends here
        finally:
            for w in (writer, upstream):
                if w is not None:
                    self._writers.discard(w)
                    w.transport.abort()
            self._links.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy bytes one way; in a blackhole they are read and dropped, as a dead network would."""
        while True:
            data = await reader.read(_CHUNK)
            if not data:
                writer.transport.abort()
                return
            if self.mode == "blackhole":
                continue
            writer.write(data)
            await writer.drain()
