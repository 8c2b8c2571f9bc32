"""The ``reelstream`` command: the embedded stack, single stages, the gateway, and a client."""

import asyncio
import json
import socket
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Annotated

import typer

from reelstream import client, db, embedded, service
from reelstream.settings import Settings

app = typer.Typer(
    help="reelstream: a text prompt in, a finished short video out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _settings() -> Settings:
    settings = Settings().with_stack()
    service.log_setup(settings.log_level)
    return settings


def _port_free(host: str, port: int) -> bool:
    """Whether the gateway could listen on ``host:port``, tested the way aiohttp binds it.

    With ``SO_REUSEADDR``, like aiohttp's own listener: connections of a run that just stopped linger
    in TIME_WAIT for a minute and must not keep a restart off its port; a listener still refuses.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


@app.command()
def serve() -> None:
    """The whole stack in the foreground (broker, Postgres, stages, gateway) until Ctrl-C or SIGTERM."""
    settings = Settings()
    service.log_setup(settings.log_level)
    if not _port_free(settings.http_host, settings.http_port):
        raise typer.BadParameter(
            f"{settings.http_host}:{settings.http_port} is already in use; set REELSTREAM_HTTP_PORT"
            " (is another `reelstream serve` running?)"
        )
    asyncio.run(_serve(settings))


async def _serve(settings: Settings, *, demo_prompt: str | None = None, out: Path | None = None) -> int:
    stop = asyncio.Event()
    service.install_signal_handlers(stop)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    exit_code = 0
    async with AsyncExitStack() as stack:
        if settings.kafka_bootstrap is None:
            broker = await embedded.start_kafka(settings.data_dir)
            stack.push_async_callback(broker.stop)
            settings = settings.model_copy(update={"kafka_bootstrap": broker.url})
        if settings.database_url is None:
            postgres = await embedded.start_postgres(settings.data_dir)
            stack.push_async_callback(postgres.stop)
            settings = settings.model_copy(update={"database_url": postgres.url})
        assert settings.kafka_bootstrap and settings.database_url
        print(f"kafka bootstrap: {settings.kafka_bootstrap}", flush=True)
        pool, producer, deps = await stack.enter_async_context(service.infrastructure(settings))

        async def on_ready() -> None:
            embedded.write_stack_file(
                settings.data_dir,
                settings.kafka_bootstrap or "",
                settings.database_url or "",
                settings.gateway_url,
            )
            print(f"ready: {settings.gateway_url}", flush=True)
            if demo_prompt is not None:
                demo_task = asyncio.create_task(_demo_client(settings, demo_prompt, out, stop))
                stack.push_async_callback(_cancel, demo_task)

        stack.callback(embedded.remove_stack_file, settings.data_dir)
        await service.run_everything(
            settings, pool=pool, producer=producer, deps=deps, stop=stop, on_ready=on_ready
        )
        if demo_prompt is not None:
            exit_code = _DEMO_RESULT.get("code", 1)
    return exit_code


_DEMO_RESULT: dict[str, int] = {}


async def _cancel(task: "asyncio.Task[None]") -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _demo_client(settings: Settings, prompt: str, out: Path | None, stop: asyncio.Event) -> None:
    try:
        path = await client.generate(
            settings.gateway_url,
            {
                "prompt": prompt,
                "duration_seconds": 10,
                "aspect_ratio": "16:9",
                "brand": {
                    "name": "Reelstream",
                    "colors": ["#0A84FF", "#FF375F"],
                    "tagline": "Prompt in, video out",
                },
            },
            out=out or settings.data_dir / "demo.mp4",
        )
        print(f"final video: {path}", flush=True)
        _DEMO_RESULT["code"] = 0
    except Exception as exc:
        print(f"demo failed: {exc}", file=sys.stderr, flush=True)
        _DEMO_RESULT["code"] = 1
    finally:
        stop.set()


@app.command()
def demo(
    prompt: Annotated[str, typer.Argument()] = (
        "A sunrise run through a coastal city, energetic and hopeful, "
        "for a running shoe that feels like flying"
    ),
    out: Annotated[Path | None, typer.Option(help="where to write the MP4")] = None,
) -> None:
    """Start the embedded stack, make one video, print its path, stop everything."""
    settings = Settings()
    service.log_setup("WARNING" if settings.log_level == "INFO" else settings.log_level)
    if not _port_free(settings.http_host, settings.http_port):
        settings = settings.model_copy(update={"http_port": embedded.free_port()})
    raise typer.Exit(asyncio.run(_serve(settings, demo_prompt=prompt, out=out)))


@app.command()
def stage(
    name: Annotated[str, typer.Argument(help="intake, analysis, planning, prompting, clips or completion")],
    metrics_port: Annotated[int, typer.Option(help="serve /metrics on this port (0: off)")] = 0,
) -> None:
    """Run one stage as its own process (its own consumer group member)."""
    settings = _settings()
    try:
        service.load_stage(name)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    asyncio.run(_stage(settings, name, metrics_port))


async def _stage(settings: Settings, name: str, metrics_port: int) -> None:
    _require_external(settings)
    assert settings.kafka_bootstrap
    stop = asyncio.Event()
    service.install_signal_handlers(stop)
    async with AsyncExitStack() as stack:
        pool, producer, deps = await stack.enter_async_context(service.infrastructure(settings))
        await service.serve_metrics(metrics_port, stack)

        async def on_ready() -> None:
            print(f"ready: stage {name}", flush=True)

        await service.run_stages(
            [name], settings, pool=pool, producer=producer, deps=deps, stop=stop, on_ready=on_ready
        )


@app.command()
def gateway() -> None:
    """Run the HTTP/WebSocket gateway alone."""
    settings = _settings()
    asyncio.run(_gateway(settings))


async def _gateway(settings: Settings) -> None:
    _require_external(settings)
    assert settings.kafka_bootstrap
    stop = asyncio.Event()
    service.install_signal_handlers(stop)
    async with service.infrastructure(settings) as (pool, producer, deps):
        ready = asyncio.Event()
        task = asyncio.create_task(service.run_gateway_task(settings, pool, producer, deps, ready, stop))
        await asyncio.wait([asyncio.create_task(ready.wait()), task], return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            print(f"ready: {settings.gateway_url}", flush=True)
        await task


def _require_external(settings: Settings) -> None:
    if not settings.kafka_bootstrap or not settings.database_url:
        raise typer.BadParameter(
            "no broker or database: set REELSTREAM_KAFKA_BOOTSTRAP and REELSTREAM_DATABASE_URL, "
            "or run `reelstream serve` first so its stack.json can be used"
        )


@app.command()
def migrate() -> None:
    """Apply the database migrations (also done by every process at start-up)."""
    settings = _settings()
    if not settings.database_url:
        raise typer.BadParameter("set REELSTREAM_DATABASE_URL (or run beside `reelstream serve`)")
    applied = asyncio.run(db.migrate(settings.database_url))
    print(json.dumps({"applied": applied}))


@app.command()
def generate(
    prompt: str,
    duration: Annotated[int, typer.Option("--duration", help="seconds, 5..120")] = 15,
    aspect_ratio: Annotated[str, typer.Option("--aspect-ratio", help="16:9, 9:16 or 1:1")] = "16:9",
    brand: Annotated[Path | None, typer.Option("--brand", help="brand JSON file")] = None,
    api: Annotated[str | None, typer.Option("--api", help="gateway URL")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="where to write the MP4")] = None,
) -> None:
    """Submit a generation, follow its progress live, and download the final MP4."""
    settings = Settings().with_stack()
    body: dict[str, object] = {"prompt": prompt, "duration_seconds": duration, "aspect_ratio": aspect_ratio}
    if brand is not None:
        try:
            body["brand"] = json.loads(brand.read_text())
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(f"cannot read brand file: {exc}") from exc
    try:
        path = asyncio.run(client.generate(api or settings.gateway_url, body, out=out))
    except client.ClientError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(str(path))


@app.command()
def replay(
    generation: Annotated[str | None, typer.Option(help="reprocess one generation by id")] = None,
    topic: Annotated[str | None, typer.Option(help="reprocess the jobs of a topic")] = None,
) -> None:
    """Reprocess jobs from the topics (by generation id, or by topic and time range)."""
    typer.echo("replay is not available yet in this version", err=True)
    raise typer.Exit(2)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
