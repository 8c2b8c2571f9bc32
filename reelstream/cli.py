"""The ``reelstream`` command: the embedded stack, single stages, the gateway, and a client."""

import asyncio
import contextlib
import gc
import json
import logging
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from reelstream import db, embedded, service, supervisor, tracing
from reelstream.settings import Settings

if TYPE_CHECKING:
    import asyncpg

    from reelstream.replay import ReplayReport

app = typer.Typer(
    help="reelstream: a text prompt in, a finished short video out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _settings() -> Settings:
    settings = Settings().with_stack()
    service.log_setup(settings.log_level, settings.log_format)
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
    """The whole stack in the foreground (broker, Postgres, gateway, stages) until Ctrl-C or SIGTERM."""
    settings = Settings()
    service.log_setup(settings.log_level, settings.log_format)
    supervisor.end_leftovers(_children_file(settings))  # a killed run's gateway may still hold the port
    if not _port_free(settings.http_host, settings.http_port):
        raise typer.BadParameter(
            f"{settings.http_host}:{settings.http_port} is already in use; set REELSTREAM_HTTP_PORT"
            " (is another `reelstream serve` running?)"
        )
    raise typer.Exit(_run_stack(settings))


def _children_file(settings: Settings) -> Path:
    """Where ``serve``'s supervisor records its children (pids, restarts) while it runs."""
    return settings.data_dir / "run" / "children.json"


def _run_stack(settings: Settings, *, demo_prompt: str | None = None, out: Path | None = None) -> int:
    """Run :func:`_serve`; a process of the stack that cannot start ends it with one plain line, exit 1."""
    try:
        return asyncio.run(_serve(settings, demo_prompt=demo_prompt, out=out))
    except supervisor.ChildFailedToStart as exc:
        typer.echo(f"error: {exc} (its output is above, each line prefixed [{exc.name}])", err=True)
        return 1


async def _serve(settings: Settings, *, demo_prompt: str | None = None, out: Path | None = None) -> int:
    """The embedded stack until Ctrl-C or SIGTERM, or until the demo has its video.

    The broker and Postgres first (unless configured), then topics and migrations once and
    ``stack.json``, then the gateway and the stages. ``serve`` runs those as child processes of one
    supervisor (:mod:`reelstream.supervisor`), so the gateway never waits behind stage work for a core;
    they get the addresses in their environment. The demo makes one video, with nothing else to serve,
    and runs them in this process (:func:`service.run_everything`): seven interpreters importing the
    same modules would make it wait about twice as long before it starts. On the way out the gateway
    and the stages stop first, then Postgres and the broker they talk to.
    """
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
        await service.prepare(settings)
        if demo_prompt is None:
            children, metrics = service.processes(settings)
        else:  # one process: its /metrics has every stage's metrics too
            children, metrics = [], {"gateway": f"{service.local_gateway_url(settings)}/metrics"}
        embedded.write_stack_file(
            settings.data_dir,
            settings.kafka_bootstrap,
            settings.database_url,
            settings.gateway_url,
            metrics=metrics,
        )
        stack.callback(embedded.remove_stack_file, settings.data_dir)

        ready_lines: dict[str, str] = {}

        async def on_ready() -> None:
            if not await _gateway_ready(settings, stop):
                return
            if ready_lines:  # the stages chose their metrics ports: stack.json lists them before ready
                embedded.write_stack_file(
                    settings.data_dir,
                    settings.kafka_bootstrap or "",
                    settings.database_url or "",
                    settings.gateway_url,
                    metrics={**metrics, **service.stage_metrics_urls(ready_lines)},
                )
            _started()
            print(f"ready: {settings.gateway_url}", flush=True)
            if demo_prompt is not None:
                demo_task = asyncio.create_task(_demo_client(settings, demo_prompt, out, stop))
                stack.push_async_callback(_cancel, demo_task)

        if demo_prompt is None:
            await supervisor.supervise(
                children,
                stop=stop,
                on_ready=on_ready,
                state_file=_children_file(settings),
                ready_lines=ready_lines,
            )
        else:
            tracing.setup("reelstream")
            stack.callback(tracing.shutdown)
            pool, producer, deps = await stack.enter_async_context(service.infrastructure(settings))
            await service.run_everything(
                settings, pool=pool, producer=producer, deps=deps, stop=stop, on_ready=on_ready
            )
            exit_code = _DEMO_RESULT.get("code", 1)
    return exit_code


async def _gateway_ready(settings: Settings, stop: asyncio.Event) -> bool:
    """Wait until the gateway's ``/readyz`` answers 200 (broker and database reachable from it).

    False if ``stop`` came first. The gateway printed its own ready line already, so this is normally
    one request; while it answers otherwise, say so every 10 s rather than wait in silence.
    """
    import aiohttp

    url = f"{service.local_gateway_url(settings)}/readyz"
    last_said = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while not stop.is_set():
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return True
                    status = f"answers {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = f"does not answer ({type(exc).__name__})"
            if time.monotonic() - last_said >= 10:
                logging.getLogger(__name__).warning("%s %s; waiting", url, status)
                last_said = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)
    return False


_DEMO_RESULT: dict[str, int] = {}


async def _cancel(task: "asyncio.Task[None]") -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _demo_client(settings: Settings, prompt: str, out: Path | None, stop: asyncio.Event) -> None:
    from reelstream import client

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
                    "guidelines": {"required_disclaimer": "Demo video made by reelstream. Not a real offer."},
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
    if settings.log_level == "INFO":  # the progress bar is the demo's output; its processes say only problems
        settings = settings.model_copy(update={"log_level": "WARNING"})
    service.log_setup(settings.log_level, settings.log_format)
    supervisor.end_leftovers(_children_file(settings))
    if not _port_free(settings.http_host, settings.http_port):
        settings = settings.model_copy(update={"http_port": embedded.free_port()})
    raise typer.Exit(_run_stack(settings, demo_prompt=prompt, out=out))


@app.command()
def stage(
    name: Annotated[str, typer.Argument(help="intake, analysis, planning, prompting, clips or completion")],
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="serve /metrics on this port (0: any free one); default REELSTREAM_METRICS_PORT, 9464"
        ),
    ] = None,
) -> None:
    """Run one stage as its own process (its own consumer group member), serving its /metrics."""
    settings = _settings()
    try:
        service.load_stage(name)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    explicit = metrics_port is not None or "metrics_port" in settings.model_fields_set
    port = metrics_port if metrics_port is not None else settings.metrics_port
    # A port asked for must be free; the default one, taken (several stages on one machine), gives way.
    if explicit and port and not _port_free(settings.metrics_host, port):
        raise typer.BadParameter(f"metrics port {port} is already in use; set REELSTREAM_METRICS_PORT")
    asyncio.run(_stage(settings, name, port, or_any_port=not explicit))


async def _stage(settings: Settings, name: str, metrics_port: int, *, or_any_port: bool = False) -> None:
    _require_external(settings)
    assert settings.kafka_bootstrap
    stop = asyncio.Event()
    service.install_signal_handlers(stop)
    tracing.setup(f"reelstream-{name}")
    async with AsyncExitStack() as stack:
        stack.callback(tracing.shutdown)
        pool, producer, deps = await stack.enter_async_context(service.infrastructure(settings))
        url = await service.serve_metrics(metrics_port, stack, settings.metrics_host, or_any_port=or_any_port)

        async def on_ready() -> None:
            _started()
            print(f"ready: stage {name}, metrics {url}", flush=True)

        await service.run_stages(
            [name], settings, pool=pool, producer=producer, deps=deps, stop=stop, on_ready=on_ready
        )


@app.command()
def gateway() -> None:
    """Run the HTTP/WebSocket gateway alone."""
    settings = _settings()
    if not _port_free(settings.http_host, settings.http_port):
        raise typer.BadParameter(
            f"{settings.http_host}:{settings.http_port} is already in use; set REELSTREAM_HTTP_PORT"
        )
    asyncio.run(_gateway(settings))


async def _gateway(settings: Settings) -> None:
    _require_external(settings)
    assert settings.kafka_bootstrap
    stop = asyncio.Event()
    service.install_signal_handlers(stop)
    tracing.setup("reelstream-gateway")
    async with service.infrastructure(settings) as (pool, producer, deps):
        ready = asyncio.Event()
        task = asyncio.create_task(service.run_gateway_task(settings, pool, producer, deps, ready, stop))
        await asyncio.wait([asyncio.create_task(ready.wait()), task], return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            _started()
            gc.set_threshold(GATEWAY_GC_THRESHOLD)
            print(f"ready: {settings.gateway_url}", flush=True)
        try:
            await task
        finally:
            tracing.shutdown()


#: The gateway's first-generation collection threshold (CPython's default: 700). A request allocates
#: and frees hundreds of containers, nearly all freed by reference counting, so at 700 the collector ran
#: every few dozen requests and, every hundred of those, walked the whole heap: 5-7 % of the accept path's
#: CPU (timed with ``gc.callbacks`` under load). At 10,000 it runs about once per 20,000 requests; the
#: cyclic garbage waiting meanwhile is at most that many objects.
GATEWAY_GC_THRESHOLD = 10_000


def _started() -> None:
    """Once a long-running process is up, ``gc.freeze()`` what start-up made (imported modules, mostly).

    That lives as long as the process, so the collector need never walk it again: full collections get
    cheaper, and the exit skips a final collection that cost ~0.5 s of CPU, which the seven processes of
    ``serve``, stopping together on two cores, felt as seconds.
    """
    gc.freeze()


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


@app.command("callback-secret")
def callback_secret() -> None:
    """Print the secret that signs outbound callbacks (REELSTREAM_CALLBACK_SECRET, else the data dir's).

    Receivers verify ``webhook-signature`` with it (any Standard Webhooks library).
    """
    from reelstream import callbacks

    typer.echo(callbacks.callback_secret(Settings()))


# -- the API from the shell -------------------------------------------------------------------------
# Clients of a running gateway (``--api``, default: the stack.json beside, else 127.0.0.1:8080), with
# the key from ``--api-key`` or REELSTREAM_API_KEY. The HTTP work is reelstream/client.py; failures end in
# one plain line on stderr and the exit code client.EXIT_* names.

ApiOption = Annotated[
    str | None,
    typer.Option("--api", help="gateway URL (default: the running stack's, else http://127.0.0.1:8080)"),
]
KeyOption = Annotated[
    str | None,
    typer.Option("--api-key", envvar="REELSTREAM_API_KEY", help="API key (env REELSTREAM_API_KEY)"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="print machine-readable JSON on stdout")]
DurationOption = Annotated[int, typer.Option("--duration", help="seconds, 5..120")]
AspectOption = Annotated[str, typer.Option("--aspect-ratio", help="16:9, 9:16 or 1:1")]
BrandOption = Annotated[Path | None, typer.Option("--brand", help="brand kit JSON file (name, colors, ...)")]
ResolutionOption = Annotated[str | None, typer.Option("--resolution", help="480p, 720p or 1080p")]
TransitionsOption = Annotated[str | None, typer.Option("--transitions", help="cut or crossfade")]
CaptionsOption = Annotated[
    bool | None, typer.Option("--captions/--no-captions", help="burn each scene's line in")
]


def _api_url(api: str | None) -> str:
    return api or Settings().with_stack().gateway_url


def _load_brand(path: Path) -> dict[str, Any]:
    """The brand file, checked here with the API's own model so a typo is named before anything is sent."""
    from pydantic import ValidationError

    from schemas.api import Brand, field_errors

    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise _Fail(f"cannot read the brand file {path}: {exc.strerror or exc}", _USAGE) from None
    except ValueError as exc:
        raise _Fail(f"the brand file {path} is not valid JSON: {exc}", _USAGE) from None
    try:
        Brand.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{e.field}: {e.message}"
            for e in field_errors(exc.errors(include_url=False, include_input=False))
        )
        raise _Fail(f"the brand file {path} is invalid: {problems}", _USAGE) from None
    loaded: dict[str, Any] = data
    return loaded


def _order(
    prompt: str,
    duration: int,
    aspect_ratio: str,
    brand: Path | None,
    resolution: str | None,
    transitions: str | None,
    captions: bool | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": prompt, "duration_seconds": duration, "aspect_ratio": aspect_ratio}
    if brand is not None:
        body["brand"] = _load_brand(brand)
    options = {"resolution": resolution, "transitions": transitions, "captions": captions}
    if any(value is not None for value in options.values()):
        body["options"] = {name: value for name, value in options.items() if value is not None}
    return body


def _client_run(work: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a client command: a ClientError or _Fail is one line on stderr and its exit code."""
    from reelstream import client

    try:
        asyncio.run(work())
    except client.ClientError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except _Fail as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.code) from None


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


@app.command()
def generate(
    prompt: str,
    duration: DurationOption = 15,
    aspect_ratio: AspectOption = "16:9",
    brand: BrandOption = None,
    resolution: ResolutionOption = None,
    transitions: TransitionsOption = None,
    captions: CaptionsOption = None,
    api: ApiOption = None,
    api_key: KeyOption = None,
    out: Annotated[Path | None, typer.Option("--out", help="where to write the MP4")] = None,
    as_json: JsonOption = False,
) -> None:
    """Submit a generation, follow its progress live, and download the final MP4 (prints its path).

    With --json, prints the final detail instead (also when the generation failed, with exit code 1).
    """
    from reelstream import client

    async def run() -> None:
        body = _order(prompt, duration, aspect_ratio, brand, resolution, transitions, captions)
        try:
            path, detail = await client.generate_detail(_api_url(api), body, out=out, key=api_key)
        except client.ClientError as exc:
            if as_json and isinstance(exc.body, dict) and "generation_id" in exc.body:
                _print_json(exc.body)
            raise
        if as_json:
            _print_json(detail)
        else:
            typer.echo(str(path))

    _client_run(run)


@app.command()
def estimate(
    prompt: str,
    duration: DurationOption = 15,
    aspect_ratio: AspectOption = "16:9",
    brand: BrandOption = None,
    resolution: ResolutionOption = None,
    transitions: TransitionsOption = None,
    captions: CaptionsOption = None,
    api: ApiOption = None,
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Plan and price an order without generating anything: scenes, clips, compute and cost."""
    from reelstream import client

    async def run() -> None:
        body = _order(prompt, duration, aspect_ratio, brand, resolution, transitions, captions)
        async with client.connect(_api_url(api), api_key) as gateway:
            planned = await gateway.request("POST", "/api/v1/estimates", json=body)
        if as_json:
            _print_json(planned)
            return
        typer.echo(
            f"{len(planned['clips'])} clip(s) in {len(planned['scenes'])} scene(s) on {planned['model']}:"
            f" ~{planned['estimated_compute_seconds']:g} s of compute, ${planned['estimated_cost_usd']:.2f}"
        )
        for scene in planned["scenes"]:
            typer.echo(
                f"  {scene['scene_id']} {scene['kind']:<11} {scene['start_seconds']:g}s"
                f" +{scene['duration_seconds']:g}s  {scene['description']}"
            )

    _client_run(run)


_STATUS_HELP = "only these statuses (comma-separated: queued, ..., completed, failed, canceled)"


@app.command("list")
def list_generations(
    status: Annotated[str | None, typer.Option("--status", help=_STATUS_HELP)] = None,
    limit: Annotated[int, typer.Option("--limit", help="1..100 per page")] = 20,
    cursor: Annotated[
        str | None, typer.Option("--cursor", help="the next page (printed after a page)")
    ] = None,
    api: ApiOption = None,
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Your generations, newest first, one page at a time."""
    from reelstream import client

    async def run() -> None:
        params: dict[str, str] = {"limit": str(limit)}
        if status:
            params["status"] = status
        if cursor:
            params["cursor"] = cursor
        async with client.connect(_api_url(api), api_key) as gateway:
            page = await gateway.request("GET", "/api/v1/generations", params=params)
        if as_json:
            _print_json(page)
            return
        if not page["items"]:
            typer.echo("no generations")
        else:
            _table(
                ("generation", "status", "created", "length", "aspect", "prompt"),
                [
                    (
                        item["generation_id"],
                        item["status"],
                        item["created_at"][:19].replace("T", " "),
                        f"{item['duration_seconds']}s",
                        item["aspect_ratio"],
                        _shorten(item["prompt"], 60),
                    )
                    for item in page["items"]
                ],
            )
        if page["next_cursor"]:
            typer.echo(f"more: reelstream list --cursor {page['next_cursor']}")

    _client_run(run)


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """A rich table on a terminal; tab-separated lines in a pipe, for grep and cut."""
    if not sys.stdout.isatty():
        for row in (columns, *rows):
            typer.echo("\t".join(row))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table()
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    Console().print(table)


@app.command()
def show(
    generation_id: Annotated[str, typer.Argument(metavar="ID", help="gen_...")],
    api: ApiOption = None,
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """One generation: status, progress, clips, the video; exit 1 if it failed."""
    from reelstream import client

    async def run() -> None:
        async with client.connect(_api_url(api), api_key) as gateway:
            detail = await gateway.detail(generation_id)
        if as_json:
            _print_json(detail)
        else:
            _print_detail(detail, _api_url(api))
        if detail["status"] == "failed":
            error = detail.get("error") or {}
            raise client.ClientError(
                f"generation {generation_id} failed: {error.get('message', 'no details')}"
            )

    _client_run(run)


def _print_detail(detail: dict[str, Any], api: str) -> None:
    progress = detail["progress"]
    typer.echo(f"{detail['generation_id']}  {detail['status']}  {progress['percent']}%")
    typer.echo(f"prompt:   {_shorten(detail['prompt'], 100)}")
    typer.echo(f"order:    {detail['duration_seconds']}s, {detail['aspect_ratio']}")
    if detail.get("brand"):
        typer.echo(f"brand:    {detail['brand']['name']}")
    typer.echo(
        f"clips:    {progress['clips_completed']}/{progress['clips_total']} done,"
        f" {progress['clips_failed']} failed"
    )
    for clip in detail.get("clips") or []:
        typer.echo(f"  {clip['clip_id']}  {clip['status']:<10} {clip['duration_seconds']:g}s")
    if detail.get("video"):
        video = detail["video"]
        typer.echo(
            f"video:    {api.rstrip('/')}/api/v1/generations/{detail['generation_id']}/video"
            f" ({video['width']}x{video['height']}, {video['duration_seconds']:g}s)"
        )
    if detail.get("error"):
        error = detail["error"]
        typer.echo(f"error:    {error['code']}: {error['message']}")


@app.command()
def cancel(
    generation_id: Annotated[str, typer.Argument(metavar="ID", help="gen_...")],
    api: ApiOption = None,
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Cancel a generation that is still running (its outstanding predictions too)."""
    from reelstream import client

    async def run() -> None:
        async with client.connect(_api_url(api), api_key) as gateway:
            detail = await gateway.request("POST", f"/api/v1/generations/{generation_id}/cancel")
        if as_json:
            _print_json(detail)
        else:
            typer.echo(f"{generation_id} canceled")

    _client_run(run)


# -- replay and dead letters ------------------------------------------------------------------------
# Operator tools beside a running stack: they only read topics (without a consumer group), publish, and
# touch Postgres for what they say. Expected problems end in one plain line on stderr and a non-zero exit.

_USAGE = 2


class _Fail(Exception):
    """End the command with ``message`` on one line and exit ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _tool_settings() -> Settings:
    settings = Settings().with_stack()
    service.log_setup("WARNING" if settings.log_level == "INFO" else settings.log_level, settings.log_format)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # its connection errors are ours to report
    return settings


def _bootstrap(settings: Settings) -> str:
    if not settings.kafka_bootstrap:
        raise _Fail(
            "no broker: set REELSTREAM_KAFKA_BOOTSTRAP, or run `reelstream serve` first so its stack.json"
            " can be used"
        )
    return settings.kafka_bootstrap


def _run_tool(make: "Callable[[], Coroutine[Any, Any, None]]") -> None:
    """Run an operator command: its expected failures (and any other) as one line, never a traceback."""
    from reelstream.replay import ReplayError

    try:
        asyncio.run(make())
    except _Fail as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.code) from None
    except ReplayError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except (typer.Exit, KeyboardInterrupt):
        raise
    except Exception as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        text = "; ".join(line for line in lines if not line.startswith("For further information"))
        typer.echo(f"error: {type(exc).__name__}: {text}", err=True)
        raise typer.Exit(1) from None


@asynccontextmanager
async def _database(settings: Settings) -> "AsyncIterator[asyncpg.Pool]":
    """A small migrated pool, or a plain failure saying the database cannot be reached."""
    import asyncpg

    if not settings.database_url:
        raise _Fail(
            "no database: set REELSTREAM_DATABASE_URL, or run `reelstream serve` first so its stack.json"
            " can be used"
        )
    try:
        await asyncio.wait_for(db.migrate(settings.database_url), timeout=30)
        pool = await asyncio.wait_for(db.create_pool(settings.database_url, max_size=2), timeout=30)
    except (OSError, TimeoutError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise _Fail(f"cannot reach the database: {type(exc).__name__}: {exc}") from None
    try:
        yield pool
    finally:
        await pool.close()


_REPLAY_HELP = (
    "Reprocess jobs from the topics: re-publish their events unchanged (same id, key and bytes)."
    "\n\nEvents are selected by their own CloudEvents time, and by subject for --generation, which reads"
    " every pipeline topic but generation.status (notifications only). The stages skip what they already"
    " handled and finished generations stay as they are: a replay is free and idempotent."
    "\n\n--force instead starts a new attempt that pays for new clips, after printing its estimate."
)


@app.command(help=_REPLAY_HELP)
def replay(
    generation: Annotated[
        str | None, typer.Option(help="reprocess one generation: its events on every pipeline topic")
    ] = None,
    topic: Annotated[
        str | None, typer.Option(help="reprocess the events of one topic (with --since)")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="RFC 3339; with --topic: events whose own time is at or after it")
    ] = None,
    until: Annotated[str | None, typer.Option(help="RFC 3339; with --topic: events before it")] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="start a NEW ATTEMPT that pays for new clips (its estimate is printed first), for the"
            " generation, or with --topic for every generation the selected events name; refused while"
            " any of them is still running",
        ),
    ] = False,
) -> None:
    """Replay by generation, or by topic and time range; the user-facing text is ``_REPLAY_HELP``."""
    from reelstream import replay as replaying

    try:
        if (generation is None) == (topic is None):
            raise ValueError("give either --generation ID or --topic TOPIC --since TIME")
        if generation is not None:
            if since is not None or until is not None:
                raise ValueError("--since and --until go with --topic")
            replaying.check_generation_id(generation)
        else:
            assert topic is not None
            replaying.check_replay_topic(topic)
            if since is None:
                raise ValueError("--topic needs --since TIME (RFC 3339)")
        start = replaying.parse_time(since) if since is not None else None
        end = replaying.parse_time(until) if until is not None else None
        if start is not None and end is not None and end <= start:
            raise ValueError("--until must be after --since")
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(_USAGE) from None

    async def run() -> None:
        settings = _tool_settings()  # inside: a bad setting is one plain line too
        bootstrap = _bootstrap(settings)
        async with _database(settings) as pool:
            if generation is not None and force:
                await _force(settings, bootstrap, pool, [generation])
            elif generation is not None:
                report = await replaying.replay_generation(bootstrap, pool, generation)
                _print_replay(f"generation {generation}", report)
            else:
                assert topic is not None and start is not None
                if force:
                    selection = await replaying.select_events(bootstrap, [topic], since=start, until=end)
                    await _force(settings, bootstrap, pool, replaying.generations_of(selection))
                else:
                    report = await replaying.replay_range(bootstrap, pool, topic, start, end)
                    _print_replay(f"{topic} from {since}" + (f" until {until}" if until else ""), report)

    _run_tool(run)


def _print_replay(what: str, report: "ReplayReport") -> None:
    total = sum(report.published.values())
    typer.echo(f"replayed {what}: {total} event(s) re-published unchanged")
    for name, count in sorted(report.published.items()):
        typer.echo(f"  {name}: {count}")
    if report.rebuilt_request:
        typer.echo("  (the current attempt's generation.requested was missing and was rebuilt from Postgres)")
    if report.unknown_generation:
        typer.echo(f"skipped {report.unknown_generation} event(s) of generations not in the database")
    if report.unreadable:
        typer.echo(f"skipped {report.unreadable} record(s) that are not CloudEvents")


async def _force(settings: Settings, bootstrap: str, pool: "asyncpg.Pool", generation_ids: list[str]) -> None:
    """Print each generation's estimate, refuse if any is still running, then start a new attempt of each."""
    from reelstream import estimates, kafka
    from reelstream import replay as replaying
    from schemas.api import TERMINAL

    if not generation_ids:
        typer.echo("no events selected: nothing to start")
        return
    requests = {}
    for generation_id in generation_ids:
        try:
            state, request = await replaying.load_request(pool, generation_id)
        except replaying.UnknownGeneration:
            if len(generation_ids) == 1:
                raise
            typer.echo(f"skipped {generation_id}: not in the database")
            continue
        if state not in TERMINAL:
            raise _Fail(f"generation {generation_id} is still running ({state}); cancel it first")
        requests[generation_id] = request
    total = 0.0
    for generation_id, request in requests.items():
        estimate = estimates.estimate(request, settings)
        total += estimate.estimated_cost_usd
        typer.echo(
            f"estimate for {generation_id}: {len(estimate.clips)} clip(s) on {estimate.model},"
            f" ~{estimate.estimated_compute_seconds:g} s of compute, ${estimate.estimated_cost_usd:.2f}"
        )
        budget = getattr(request.options, "max_cost_usd", None)
        if isinstance(budget, int | float) and estimate.estimated_cost_usd > budget:
            raise _Fail(
                f"the estimate for {generation_id} (${estimate.estimated_cost_usd:.2f}) is above its"
                f" options.max_cost_usd (${budget:.2f}); nothing was started"
            )
    if len(requests) > 1:
        typer.echo(f"total estimate: ${total:.2f} for {len(requests)} generations")
    producer = kafka.Producer(bootstrap)
    try:
        await producer.start()
    except Exception as exc:
        await producer.stop()
        raise _Fail(f"cannot reach the broker at {bootstrap}: {exc}") from None
    try:
        for generation_id in requests:
            started = await replaying.start_new_attempt(pool, producer, generation_id)
            typer.echo(f"started attempt {started.attempt} of {generation_id} (event {started.event_id})")
    finally:
        await producer.stop()


dlq_app = typer.Typer(
    help="Dead letters: what the stages gave up on, and handing it back to them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(dlq_app, name="dlq")

_DLQ_TOPIC_HELP = "one pipeline topic (e.g. generation.accepted); default: every pipeline topic's DLQ"


def _dlq_names(topic: str | None) -> list[str]:
    from reelstream import dlq as dead_letters

    try:
        return dead_letters.dlq_topics(topic)
    except ValueError as exc:
        raise _Fail(str(exc), _USAGE) from None


@dlq_app.command("list")
def dlq_list(
    topic: Annotated[str | None, typer.Option(help=_DLQ_TOPIC_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="a JSON array, for scripts")] = False,
) -> None:
    """Show every dead letter: topic, event id, generation, error and time."""
    from reelstream import dlq as dead_letters

    async def run() -> None:
        settings = _tool_settings()  # inside: a bad setting is one plain line too
        names = _dlq_names(topic)
        letters = await dead_letters.list_dead_letters(_bootstrap(settings), names)
        if as_json:
            typer.echo(json.dumps([letter.as_json() for letter in letters], indent=2))
            return
        if not letters:
            typer.echo("no dead letters")
            return
        columns = ("topic", "event id", "generation", "error", "time")
        rows = [
            (
                letter.original_topic,
                letter.event_id or "-",
                letter.generation_id or "-",
                " ".join(letter.error.split()),
                dead_letters.rfc3339(letter.timestamp),
            )
            for letter in letters
        ]
        if not sys.stdout.isatty():  # a pipe or a file: one tab-separated line per letter, nothing wrapped
            for row in (columns, *rows):
                typer.echo("\t".join(row))
            return
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        table = Table()
        for column in columns:  # folded rather than cut: an id with an ellipsis is no use
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*(escape(cell) for cell in row))  # an error text may contain [brackets]
        Console().print(table)

    _run_tool(run)


@dlq_app.command(
    "redrive",
    help="Hand dead letters back to their stage: the original bytes and key, to the original topic."
    "\n\nA generation that already ended is not revived (`reelstream replay --generation ID --force`"
    " starts a new attempt); a letter its stage has handled since is skipped.",
)
def dlq_redrive(
    topic: Annotated[str | None, typer.Option(help=_DLQ_TOPIC_HELP)] = None,
    event_id: Annotated[
        str | None, typer.Option("--id", help="only the dead letter of this event id")
    ] = None,
) -> None:
    """Redrive dead letters; the user-facing text is the ``help`` above."""
    from reelstream import dlq as dead_letters

    async def run() -> None:
        settings = _tool_settings()  # inside: a bad setting is one plain line too
        names = _dlq_names(topic)
        bootstrap = _bootstrap(settings)
        async with _database(settings) as pool:
            letters = await dead_letters.list_dead_letters(bootstrap, names)
            report = await dead_letters.redrive(bootstrap, pool, letters, event_id=event_id)
        total = sum(report.redriven.values())
        counts = ", ".join(f"{name} {count}" for name, count in sorted(report.redriven.items()))
        typer.echo(f"redrove {total} dead letter(s)" + (f": {counts}" if counts else ""))
        for letter_id, generation_id, state in report.ended:
            typer.echo(
                f"skipped {letter_id or 'a letter'} of {generation_id} ({state}): a generation that ended"
                " is not revived; replay --force starts a new attempt"
                f" (`reelstream replay --generation {generation_id} --force`)"
            )
        if report.handled:
            typer.echo(f"skipped {report.handled} dead letter(s) their stage has handled since")
        if report.repeats:
            typer.echo(f"skipped {report.repeats} repeated copy(ies) of a letter redriven above")

    _run_tool(run)


def main() -> None:
    app(prog_name="reelstream")  # also when run as ``python -m reelstream.cli`` (serve's children)


if __name__ == "__main__":
    main()
