"""Operations, as an operator meets them: `reelstream serve` runs one generation, then every process's
/metrics, the JSON logs, the exported trace and a real Prometheus scraping the stack are checked.

One stack per module (the processes of `serve`, on the session's broker and a database of its own), one
generation through it; each test reads a different side of that same run.
"""

import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from prometheus_client.parser import text_string_to_metric_families

from reelstream.embedded import free_port

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent / "reelstream"
ROOT = Path(__file__).resolve().parents[2]
STAGES = ("intake", "analysis", "planning", "prompting", "clips", "completion")
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "reelstream.json"
API_KEY = "ops-test-key-" + secrets.token_hex(8)


@dataclass
class Span:
    service: str
    name: str
    trace_id: str


@dataclass
class Run:
    stack: dict[str, Any]
    generation_id: str
    trace_id: str
    log_path: Path
    spans: list[Span] = field(default_factory=list)


async def _otlp_receiver(spans: list[Span]) -> tuple[web.AppRunner, int]:
    """A local OTLP/HTTP endpoint: what `serve`'s processes export their spans to."""

    async def traces(request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        for resource_spans in export.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    spans.append(Span(attributes.get("service.name", ""), span.name, span.trace_id.hex()))
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


@pytest.fixture(scope="module")
async def run(
    kafka_bootstrap: str, new_database: Callable[[], Awaitable[str]], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Run]:
    data_dir = tmp_path_factory.mktemp("ops")
    spans: list[Span] = []
    receiver, receiver_port = await _otlp_receiver(spans)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REELSTREAM_", "OTEL_"))}
    env.update(
        REELSTREAM_DATA_DIR=str(data_dir),
        REELSTREAM_HTTP_PORT=str(port),
        REELSTREAM_KAFKA_BOOTSTRAP=kafka_bootstrap,
        REELSTREAM_DATABASE_URL=await new_database(),
        REELSTREAM_KAFKA_SESSION_TIMEOUT_MS="2000",
        REELSTREAM_KAFKA_HEARTBEAT_INTERVAL_MS="500",
        REELSTREAM_LOG_FORMAT="json",
        REELSTREAM_API_KEYS=API_KEY,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver_port}",
        OTEL_BSP_SCHEDULE_DELAY="200",
    )
    log_path = data_dir / "serve.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            str(BIN), "serve", env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=log_file
        )
    assert proc.stdout is not None
    try:
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), 120)).decode()
            assert line, f"serve exited before ready; its log:\n{log_path.read_text()[-3000:]}"
            if line.startswith("ready"):
                break
        stack = json.loads((data_dir / "stack.json").read_text())
        trace_id = secrets.token_hex(16)
        headers = {"Authorization": f"Bearer {API_KEY}", "traceparent": f"00-{trace_id}-{'ab' * 8}-01"}
        api = stack["gateway_url"]
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as session:
            body = {"prompt": "A lighthouse at dawn, calm and bright", "duration_seconds": 5}
            async with session.post(f"{api}/api/v1/generations", json=body, headers=headers) as resp:
                assert resp.status == 202, await resp.text()
                generation_id = (await resp.json())["generation_id"]
            detail: dict[str, Any] = {}
            for _ in range(480):
                async with session.get(f"{api}/api/v1/generations/{generation_id}") as resp:
                    detail = await resp.json()
                if detail["status"] in ("completed", "failed", "canceled"):
                    break
                await asyncio.sleep(0.25)
            assert detail["status"] == "completed", detail
        yield Run(stack, generation_id, trace_id, log_path, spans)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 60)
        await receiver.cleanup()


def _families(text: str) -> dict[str, list[Any]]:
    """Samples by metric family name (counters under their name without ``_total``)."""
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def _value(families: dict[str, list[Any]], sample_name: str, **labels: str) -> float:
    """The sum of the samples named ``sample_name`` whose labels include ``labels``."""
    return sum(
        sample.value
        for samples in families.values()
        for sample in samples
        if sample.name == sample_name and labels.items() <= sample.labels.items()
    )


async def _scrape(stack: dict[str, Any]) -> dict[str, str]:
    async with aiohttp.ClientSession() as session:
        texts = {}
        for process, url in stack["metrics"].items():
            async with session.get(url) as resp:
                assert resp.status == 200, process
                texts[process] = await resp.text()
    return texts


async def test_every_process_serves_its_own_metrics_all_reelstream(run: Run) -> None:
    assert set(run.stack["metrics"]) == {"gateway", *STAGES}
    texts = await _scrape(run.stack)
    for process, text in texts.items():
        names = set(re.findall(r"^# TYPE (\S+)", text, re.M))
        assert names, process
        assert {n for n in names if not n.startswith("reelstream_")} == set(), process
        families = _families(text)
        assert _value(families, "reelstream_process_cpu_seconds_total") > 0, process
        assert _value(families, "reelstream_process_resident_memory_bytes") > 0, process

    for name in STAGES:
        families = _families(texts[name])
        assert _value(families, "reelstream_events_handled_total", stage=name, outcome="handled") > 0, name
        assert _value(families, "reelstream_handler_seconds_count", stage=name) > 0, name
        assert _value(families, "reelstream_events_emitted_total") > 0, name
        assert any(s.name == "reelstream_consumer_lag" for s in families["reelstream_consumer_lag"]), name
        for series in ("reelstream_errors_total", "reelstream_dead_lettered_total"):
            assert any(s.labels.get("stage") == name for s in families[series.removesuffix("_total")])

    clips = _families(texts["clips"])
    assert _value(clips, "reelstream_provider_call_seconds_count", provider="local", call="create") > 0
    assert _value(clips, "reelstream_provider_calls_total", call="create", outcome="ok") > 0
    assert _value(clips, "reelstream_predictions_total", status="succeeded") > 0
    assert _value(clips, "reelstream_prediction_compute_seconds_total") > 0
    assert "reelstream_prediction_cost_usd" in clips  # the local renderer is free: 0, but there

    completion = _families(texts["completion"])
    assert _value(completion, "reelstream_generation_duration_seconds_count", status="completed") == 1
    assert _value(completion, "reelstream_generation_duration_seconds_sum", status="completed") > 0
    assert _value(completion, "reelstream_generations_total", status="completed") == 1
    intake = _families(texts["intake"])
    assert "reelstream_reconciler_actions" in intake
    census = {s.labels["status"] for s in intake["reelstream_generations_in_progress"]}
    assert census == {"queued", "analyzing", "planning", "prompting", "generating", "assembling"}

    gateway = _families(texts["gateway"])
    route = "/api/v1/generations/{generation_id}"
    assert _value(gateway, "reelstream_http_requests_total", route=route, status="200") > 0
    assert _value(gateway, "reelstream_http_request_seconds_count", route=route, status="200") > 0
    assert _value(gateway, "reelstream_http_requests_total", route="/api/v1/generations", status="202") == 1
    assert _value(gateway, "reelstream_webhooks_total", outcome="accepted") >= 1
    assert _value(gateway, "reelstream_events_emitted_total", topic="generation.requested") == 1
    assert "reelstream_websocket_connections" in gateway
    assert run.generation_id not in texts["gateway"]  # ids are never labels


def _log_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for raw in path.read_text().splitlines():
        if raw.startswith("{"):
            lines.append(json.loads(raw))  # every JSON-looking line is one whole object
    return lines


async def test_json_logs_follow_the_generation_through_every_stage(run: Run) -> None:
    text = run.log_path.read_text()
    assert API_KEY not in text
    lines = _log_lines(run.log_path)
    assert lines, text[-2000:]
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line), line
    ours = [line for line in lines if line.get("generation_id") == run.generation_id]
    steps = {(line.get("stage"), line.get("process")) for line in ours if line.get("event_id")}
    assert {stage for stage, _ in steps} >= set(STAGES)
    assert all(stage == process for stage, process in steps)  # each step logged by its own process
    assert any(line.get("prediction_id") for line in ours)
    assert all(line.get("trace_id") == run.trace_id for line in ours if line.get("event_id"))


async def test_one_generation_is_one_trace_with_a_span_per_handler(run: Run) -> None:
    expected = {
        ("reelstream-gateway", "POST /api/v1/generations"),
        ("reelstream-intake", "intake generation.requested"),
        ("reelstream-analysis", "analysis generation.accepted"),
        ("reelstream-planning", "planning generation.analyzed"),
        ("reelstream-prompting", "prompting generation.planned"),
        ("reelstream-clips", "clips generation.prompted"),
        ("reelstream-clips", "provider create"),
        ("reelstream-gateway", "webhook clip.completed"),
        ("reelstream-clips", "clips clip.completed"),
        ("reelstream-completion", "completion clip.completed"),
    }
    for _ in range(100):  # spans leave each process in batches
        seen = {(s.service, s.name) for s in run.spans if s.trace_id == run.trace_id}
        if expected <= seen:
            break
        await asyncio.sleep(0.1)
    assert expected <= seen, sorted(expected - seen)
    handler_traces = {s.trace_id for s in run.spans if s.name in {name for _, name in expected}}
    assert handler_traces == {run.trace_id}  # nothing of this generation in another trace


@pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="needs the Debian package prometheus (tests/system-packages.txt)",
)
async def test_prometheus_scrapes_the_stack_and_every_dashboard_query_has_data(
    run: Run, tmp_path: Path
) -> None:
    targets = {
        process: re.match(r"https?://([^/]+)(/.*)", url).groups()  # type: ignore[union-attr]
        for process, url in run.stack["metrics"].items()
    }
    config = {
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [
            {"job_name": process, "metrics_path": path, "static_configs": [{"targets": [address]}]}
            for process, (address, path) in targets.items()
        ],
    }
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        "prometheus",
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        async with aiohttp.ClientSession() as session:
            up: dict[str, float] = {}
            for _ in range(300):  # every target up, with a few scrapes each (rate() needs two)
                await asyncio.sleep(0.1)
                try:
                    async with session.get(f"{api}/query", params={"query": "count_over_time(up[1m])"}) as r:
                        result = (await r.json())["data"]["result"]
                        up = {item["metric"]["job"]: float(item["value"][1]) for item in result}
                except (aiohttp.ClientError, KeyError, ValueError):
                    continue
                if set(up) == set(targets) and min(up.values()) >= 3:
                    break
            assert set(up) == set(targets) and min(up.values()) >= 3, up
            async with session.get(f"{api}/query", params={"query": "min(up)"}) as r:
                assert (await r.json())["data"]["result"][0]["value"][1] == "1"

            dashboard = json.loads(DASHBOARD.read_text())
            expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
            assert len(expressions) >= 15
            empty = []
            for expr in expressions:
                async with session.get(f"{api}/query", params={"query": expr}) as r:
                    answer = await r.json()
                assert answer["status"] == "success", (expr, answer)
                if not answer["data"]["result"]:
                    empty.append(expr)
            assert empty == [], empty
            # The stages' throughput is what happened: every stage handled this generation's events.
            query = "sum by (stage) (reelstream_events_handled_total)"
            async with session.get(f"{api}/query", params={"query": query}) as r:
                handled = {
                    i["metric"]["stage"]: float(i["value"][1]) for i in (await r.json())["data"]["result"]
                }
            assert set(handled) == set(STAGES) and min(handled.values()) > 0, handled
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
