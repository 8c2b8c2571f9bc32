"""The API from the shell: submit and follow a generation, list, show, cancel, estimate.

Every expected failure becomes a :class:`ClientError` with one plain sentence and an exit code (see
``EXIT_*``), so the CLI never shows a traceback for an unreachable server, a refused key or a failed
generation. Following a generation uses the WebSocket; when it drops, the detail is read over HTTP and
the socket reopened (with a growing pause), so a restarted gateway or a flaky network costs nothing.
"""

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

TERMINAL = {"completed", "failed", "canceled"}

#: Exit codes: a generation that failed (or any other error the server named), bad input on the command
#: line (typer's own code), server unreachable, key refused, no such generation.
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_UNAUTHORIZED = 4
EXIT_NOT_FOUND = 5

#: Longest pause between two attempts to reopen a dropped WebSocket.
MAX_RECONNECT_PAUSE = 8.0


class ClientError(Exception):
    """An expected failure: ``str(exc)`` is the message for the user, ``exit_code`` the process's."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED, *, body: Any = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.body = body


def _describe(body: Any) -> str:
    try:
        err = body["error"]
        details = "; ".join(f"{d['field']}: {d['message']}" for d in err.get("details") or [])
        return f"{err['code']}: {err['message']}" + (f" ({details})" if details else "")
    except (KeyError, TypeError):
        return str(body)


class Api:
    """One gateway, one key: JSON requests that raise :class:`ClientError` for anything but success."""

    def __init__(self, session: aiohttp.ClientSession, base: str, key: str | None) -> None:
        self.session = session
        self.base = base.rstrip("/")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            async with self.session.request(
                method, f"{self.base}{path}", headers=self.headers, **kwargs
            ) as resp:
                body = await resp.json(content_type=None) if resp.status != 204 else None
                status = resp.status
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise ClientError(self.unreachable(exc), EXIT_UNREACHABLE) from None
        except ValueError:  # not JSON: not our gateway, or a proxy's error page
            raise ClientError(f"{self.base} did not answer like a reelstream gateway", EXIT_FAILED) from None
        if status == 401:
            raise ClientError(
                "the API key was refused: set REELSTREAM_API_KEY or pass --api-key", EXIT_UNAUTHORIZED
            )
        if status == 404:
            raise ClientError(_describe(body), EXIT_NOT_FOUND, body=body)
        if status >= 300:
            raise ClientError(_describe(body), EXIT_FAILED, body=body)
        return body

    def unreachable(self, exc: BaseException) -> str:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error.errno:
            reason = os.strerror(exc.os_error.errno)
        return f"cannot reach the server at {self.base} ({reason}); is `reelstream serve` running?"

    async def detail(self, generation_id: str) -> dict[str, Any]:
        detail: dict[str, Any] = await self.request("GET", f"/api/v1/generations/{generation_id}")
        return detail

    async def download(self, path: str, dest: Path) -> Path:
        """Stream ``path`` into ``dest`` (file work in a thread, so the progress never stalls)."""
        dest = await asyncio.to_thread(_prepared, dest)
        try:
            async with self.session.get(f"{self.base}{path}", headers=self.headers) as resp:
                if resp.status != 200:
                    raise ClientError(f"the download of {path} answered {resp.status}")
                fh = await asyncio.to_thread(dest.open, "wb")
                try:
                    async for chunk in resp.content.iter_chunked(1 << 16):
                        await asyncio.to_thread(fh.write, chunk)
                finally:
                    await asyncio.to_thread(fh.close)
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise ClientError(self.unreachable(exc), EXIT_UNREACHABLE) from None
        return dest


def _prepared(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest.resolve()


@asynccontextmanager
async def connect(base: str, key: str | None = None) -> AsyncIterator[Api]:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        yield Api(session, base, key)


async def generate(
    api: str,
    body: dict[str, Any],
    *,
    out: Path | None = None,
    quiet: bool = False,
    key: str | None = None,
) -> Path:
    """Submit, follow, download; returns the MP4's path. Raises ClientError if the generation fails."""
    path, _ = await generate_detail(api, body, out=out, quiet=quiet, key=key)
    return path


async def generate_detail(
    api: str,
    body: dict[str, Any],
    *,
    out: Path | None = None,
    quiet: bool = False,
    key: str | None = None,
) -> tuple[Path, dict[str, Any]]:
    """:func:`generate`, also returning the final detail (``--json``); a failure carries it as ``body``."""
    console = Console(stderr=True, quiet=quiet)
    async with connect(api, key) as client:
        created = await client.request("POST", "/api/v1/generations", json=body)
        generation_id = created["generation_id"]
        console.print(f"generation [bold]{generation_id}[/bold] queued")
        final = await follow(client, generation_id, console)
        if final["status"] != "completed":
            error = final.get("error") or {}
            raise ClientError(
                f"generation {generation_id} {final['status']}: {error.get('message', 'no details')}",
                body=final,
            )
        path = await client.download(
            f"/api/v1/generations/{generation_id}/video", out or Path(f"{generation_id}.mp4")
        )
    return path, final


async def follow(client: Api, generation_id: str, console: Console) -> dict[str, Any]:
    """Progress from the WebSocket until a terminal status; returns the final detail.

    A dropped socket (or one that cannot be opened) is not an error: the detail is read over HTTP,
    which may already be terminal, and the socket reopened after a pause that doubles up to
    :data:`MAX_RECONNECT_PAUSE`. Only a server that stays unreachable through a whole round of that
    is given up on, with its plain message.
    """
    columns = (
        TextColumn("{task.description:<12}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[clips]}"),
        TimeElapsedColumn(),
    )
    ws_url = f"{client.base}/ws/generations/{generation_id}"
    pause = 0.5
    unreachable_since: float | None = None
    loop = asyncio.get_running_loop()
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("queued", total=100, clips="")
        while True:
            try:
                async with client.session.ws_connect(ws_url, headers=client.headers, heartbeat=20) as ws:
                    pause = 0.5
                    unreachable_since = None
                    if await _read_socket(ws, bar, task):
                        break
                    if ws.close_code == 4404:
                        raise ClientError(f"no generation {generation_id}", EXIT_NOT_FOUND)
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status == 401:
                    raise ClientError(
                        "the API key was refused: set REELSTREAM_API_KEY or pass --api-key",
                        EXIT_UNAUTHORIZED,
                    ) from None
            except (aiohttp.ClientError, TimeoutError):
                pass
            console.print(f"[yellow]connection lost; reconnecting in {pause:g}s[/yellow]")
            try:
                detail = await client.detail(generation_id)
                unreachable_since = None
                _show(bar, task, detail["status"], detail["progress"])
                if detail["status"] in TERMINAL:
                    return detail
            except ClientError as exc:
                if exc.exit_code != EXIT_UNREACHABLE:
                    raise
                unreachable_since = unreachable_since or loop.time()
                if loop.time() - unreachable_since > 120:
                    raise
            await asyncio.sleep(pause)
            pause = min(MAX_RECONNECT_PAUSE, pause * 2)
    return await client.detail(generation_id)


async def _read_socket(ws: aiohttp.ClientWebSocketResponse, bar: Progress, task: TaskID) -> bool:
    """Show the socket's messages; True once a terminal status came, False when the socket ended first."""
    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.TEXT:
            break
        data = json.loads(msg.data)
        if data["type"] == "snapshot":
            status, progress = data["generation"]["status"], data["generation"]["progress"]
        elif data["type"] == "status":
            status, progress = data["status"], data["progress"]
        else:
            continue
        _show(bar, task, status, progress)
        if status in TERMINAL:
            return True
    return False


def _show(bar: Progress, task: TaskID, status: str, progress: dict[str, Any]) -> None:
    clips = (
        f"clips {progress['clips_completed']}/{progress['clips_total']}" if progress["clips_total"] else ""
    )
    bar.update(task, description=status, completed=progress["percent"], clips=clips)
