"""A small API client: submit, follow the WebSocket with a live progress bar, download the MP4."""

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

TERMINAL = {"completed", "failed", "canceled"}


class ClientError(Exception):
    pass


async def generate(api: str, body: dict[str, Any], *, out: Path | None = None, quiet: bool = False) -> Path:
    """Returns the path of the downloaded final video; raises ClientError if the generation fails."""
    api = api.rstrip("/")
    console = Console(stderr=True, quiet=quiet)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.post(f"{api}/api/v1/generations", json=body) as resp:
            created = await resp.json()
            if resp.status not in (200, 202):
                raise ClientError(_describe(created))
        generation_id = created["generation_id"]
        console.print(f"generation [bold]{generation_id}[/bold] queued")
        final = await _follow(session, api, created["links"]["websocket"], console)
        if final["status"] != "completed":
            error = final.get("error") or {}
            raise ClientError(f"generation {final['status']}: {error.get('message', 'no details')}")
        dest = out or Path(f"{generation_id}.mp4")
        dest.parent.mkdir(parents=True, exist_ok=True)
        async with session.get(f"{api}/api/v1/generations/{generation_id}/video") as resp:
            if resp.status != 200:
                raise ClientError(f"download answered {resp.status}")
            with dest.open("wb") as fh:
                async for chunk in resp.content.iter_chunked(1 << 16):
                    fh.write(chunk)
    return dest.resolve()


async def _follow(session: aiohttp.ClientSession, api: str, ws_path: str, console: Console) -> dict[str, Any]:
    """Progress from the WebSocket; falls back to polling the detail if the socket drops."""
    columns = (
        TextColumn("{task.description:<12}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[clips]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("queued", total=100, clips="")
        status = "queued"
        try:
            async with session.ws_connect(f"{api}{ws_path}", heartbeat=20) as ws:
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    data = json.loads(msg.data)
                    if data["type"] == "snapshot":
                        status = data["generation"]["status"]
                        progress = data["generation"]["progress"]
                    elif data["type"] == "status":
                        status, progress = data["status"], data["progress"]
                    else:
                        continue
                    clips = (
                        f"clips {progress['clips_completed']}/{progress['clips_total']}"
                        if progress["clips_total"]
                        else ""
                    )
                    bar.update(task, description=status, completed=progress["percent"], clips=clips)
                    if status in TERMINAL:
                        break
        except aiohttp.ClientError:
            pass
        while True:
            async with session.get(f"{api}/api/v1/generations/{ws_path.rsplit('/', 1)[-1]}") as resp:
                detail: dict[str, Any] = await resp.json()
            if detail.get("status") in TERMINAL:
                bar.update(task, description=detail["status"], completed=detail["progress"]["percent"])
                return detail
            await asyncio.sleep(1)


def _describe(body: Any) -> str:
    try:
        err = body["error"]
        details = "; ".join(f"{d['field']}: {d['message']}" for d in err.get("details") or [])
        return f"{err['code']}: {err['message']}" + (f" ({details})" if details else "")
    except (KeyError, TypeError):
        return str(body)
