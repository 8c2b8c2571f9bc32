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

from reelstream import db, embedded, service, supervisor
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
    """The whole stack in the foreground (broker, Postgres, gateway, stages) until Ctrl-C or SIGTERM."""
    settings = Settings()
    service.log_setup(settings.log_level)
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

        async def on_ready() -> None:
            if not await _gateway_ready(settings, stop):
                return
            _started()
            print(f"ready: {settings.gateway_url}", flush=True)
            if demo_prompt is not None:
                demo_task = asyncio.create_task(_demo_client(settings, demo_prompt, out, stop))
                stack.push_async_callback(_cancel, demo_task)

        if demo_prompt is None:
            await supervisor.supervise(
                children, stop=stop, on_ready=on_ready, state_file=_children_file(settings)
            )
        else:
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
    service.log_setup(settings.log_level)
    supervisor.end_leftovers(_children_file(settings))
    if not _port_free(settings.http_host, settings.http_port):
        settings = settings.model_copy(update={"http_port": embedded.free_port()})
    raise typer.Exit(_run_stack(settings, demo_prompt=prompt, out=out))


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
    if metrics_port and not _port_free("127.0.0.1", metrics_port):
        raise typer.BadParameter(f"metrics port {metrics_port} is already in use")
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
            _started()
            print(f"ready: stage {name}", flush=True)

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
    async with service.infrastructure(settings) as (pool, producer, deps):
        ready = asyncio.Event()
        task = asyncio.create_task(service.run_gateway_task(settings, pool, producer, deps, ready, stop))
        await asyncio.wait([asyncio.create_task(ready.wait()), task], return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            _started()
            print(f"ready: {settings.gateway_url}", flush=True)
        await task


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
    from reelstream import client  # here: rich is for the client alone

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
    service.log_setup("WARNING" if settings.log_level == "INFO" else settings.log_level)
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
