"""A scriptable Replicate-compatible server for tests, on 127.0.0.1, that really renders MP4s.

Point the real ``replicate`` client at it (``replicate.Client(api_token=..., base_url=fake.base_url)``).
It speaks the parts of the HTTP API the pipeline uses: model lookup with an OpenAPI input schema,
official-model predictions (input validated against that schema, 422 like Replicate), get, list
(cursor pages), cancel, the default webhook secret, and Standard Webhooks deliveries signed exactly
as Replicate signs them. Each prediction renders a real H.264 clip with :func:`reelstream.media.render_clip`
and its ``output`` is the URL of that file, served without auth like Replicate's delivery URLs.

Only "completed" webhooks are sent: a filter with "start", "output" or "logs" is accepted and ignored
(the pipeline subscribes to "completed" only). ``Prefer: wait`` is ignored: creates answer at once.
Fault knobs are plain attributes and methods (see ``FakeReplicate``); :meth:`reset` clears them.
"""

import asyncio
import contextlib
import hashlib
import json
import os
import random
import secrets
import shutil
import string
import tempfile
import time
from base64 import b64encode
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import loopback
from aiohttp import web

from reelstream.media import render_clip
from reelstream.webhooks import sign
from schemas.events import ClipSpec

WAN_22_T2V_FAST = "wan-video/wan-2.2-t2v-fast"
WAN_25_T2V = "wan-video/wan-2.5-t2v"
TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})
_ALNUM = string.ascii_lowercase + string.digits


def _prop(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, **extra}


def _input(**properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "title": "Input", "required": ["prompt"], "properties": properties}


#: Input schemas as Replicate publishes them (enums inlined rather than ``allOf: [{"$ref"}]``).
WAN_22_T2V_FAST_INPUT: dict[str, Any] = _input(
    prompt=_prop("string", description="Prompt for video generation"),
    aspect_ratio=_prop("string", enum=["16:9", "9:16"], default="16:9"),
    num_frames=_prop("integer", minimum=81, maximum=121, default=81),
    frames_per_second=_prop("integer", minimum=5, maximum=30, default=16),
    resolution=_prop("string", enum=["480p", "720p"], default="480p"),
    seed=_prop("integer"),
    go_fast=_prop("boolean", default=True),
    sample_shift=_prop("number"),
    disable_safety_checker=_prop("boolean"),
)
WAN_25_T2V_INPUT: dict[str, Any] = _input(
    prompt=_prop("string"),
    negative_prompt=_prop("string"),
    size=_prop("string", enum=["832*480", "480*832", "1280*720", "720*1280", "1920*1080", "1080*1920"]),
    duration=_prop("integer", enum=[5, 10], default=5),
    seed=_prop("integer"),
    enable_prompt_expansion=_prop("boolean"),
)
MODELS: dict[str, dict[str, Any]] = {WAN_22_T2V_FAST: WAN_22_T2V_FAST_INPUT, WAN_25_T2V: WAN_25_T2V_INPUT}
_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "integer": (int,), "number": (int, float)}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _rand(n: int) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(n))


def version_id(model: str) -> str:
    """A stable 64-hex version id per model, so tests can compare it across calls."""
    return hashlib.sha256(model.encode()).hexdigest()


def validate_input(schema: dict[str, Any], value: Any) -> list[dict[str, str]]:
    """Replicate-style ``invalid_fields`` for ``value`` against an Input schema (empty when valid)."""
    if not isinstance(value, dict):
        return [{"type": "invalid_type", "field": "input", "description": "Invalid type. Expected: object"}]
    errors: list[dict[str, str]] = []

    def bad(kind: str, name: str, description: str) -> None:
        errors.append({"type": kind, "field": f"input.{name}", "description": description})

    props: dict[str, Any] = schema["properties"]
    for name in schema.get("required", []):
        if name not in value:
            bad("required", name, f"{name} is required")
    for name, item in value.items():
        prop = props.get(name)
        if prop is None:
            bad("additional_property_not_allowed", name, "Additional property is not allowed")
            continue
        kind = prop["type"]
        ok = isinstance(item, bool) if kind == "boolean" else isinstance(item, _TYPES.get(kind, (object,)))
        if not ok or (kind != "boolean" and isinstance(item, bool)):
            bad("invalid_type", name, f"Invalid type. Expected: {kind}, given: {type(item).__name__}")
        elif "enum" in prop and item not in prop["enum"]:
            bad("enum", name, "Must be one of: " + ", ".join(map(str, prop["enum"])))
        elif "minimum" in prop and item < prop["minimum"]:
            bad("greater_equal", name, f"Must be greater than or equal to {prop['minimum']}")
        elif "maximum" in prop and item > prop["maximum"]:
            bad("less_equal", name, f"Must be less than or equal to {prop['maximum']}")
    return errors


@dataclass
class Job:
    """Server-side state of one prediction: its scripted fate and clocks for ``metrics``."""

    outcome: str = "succeeded"
    error: str | None = None
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    task: asyncio.Task[None] | None = None


class FakeReplicate:
    """The server; every public attribute is a knob or a record (see the module docstring)."""

    def __init__(
        self,
        token: str = "r8_test_token",
        *,
        secret: str | None = None,
        render_delay: float = 0.05,
        page_size: int = 100,
        webhook_retries: int = 5,
        max_render_seconds: float | None = None,
    ) -> None:
        self.token = token
        self.secret = secret or "whsec_" + b64encode(secrets.token_bytes(32)).decode()
        self.render_delay = render_delay
        #: Each prediction takes ``render_delay`` plus up to this many seconds more (uniform, the same
        #: sequence every run): real renders vary, so an order's clips land apart.
        self.render_jitter = 0.0
        self._jitter = random.Random(0)
        self.page_size = page_size
        self.webhook_retries = webhook_retries
        #: Renders are cut to this length (None: the full requested length, ~0.4 s of CPU per 5 s clip).
        self.max_render_seconds = max_render_seconds
        #: Serve this file as every prediction's output instead of rendering one: a provider whose
        #: work costs this machine nothing (the benchmarks measure our overhead, not the fake's CPU).
        self.prerendered: Path | None = None
        #: Like ``prerendered``, by the prediction's ``seed`` (clip i of an order asking for seed s
        #: gets s + i): a clip already cut to its share, for orders whose clips differ in length.
        self.prerendered_by_seed: dict[int, Path] = {}
        self.models: dict[str, dict[str, Any]] = dict(MODELS)
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._files = Path(tempfile.mkdtemp(prefix="fake-replicate-"))
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self.reset()

    @property
    def base_url(self) -> str:
        """Without ``/v1``: the replicate client puts ``/v1/...`` in every path itself."""
        return f"http://127.0.0.1:{self.port}"

    # -- scripting -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Clear fault knobs and records and drop in-flight work; token, secret and timings stay."""
        for task in self._tasks:
            task.cancel()
        self.throttled = 0
        self.drop_webhooks = False
        self.duplicate_webhooks = False
        self.webhook_before_response = False
        self.hold_predictions = False
        #: Whether list results carry ``webhook`` (Replicate's docs do not promise it).
        self.list_shows_webhook = True
        self.predictions: dict[str, dict[str, Any]] = {}
        self.create_requests: list[dict[str, Any]] = []
        self.canceled_ids: list[str] = []
        self.webhook_deliveries: list[tuple[str, int | str]] = []
        self._jobs: dict[str, Job] = {}
        self._throttle: list[int] = []
        self._hangs: list[float] = []
        self._fates: list[tuple[str, str | None]] = []
        #: One gate per held prediction, in the order they were created.
        self._held: list[asyncio.Event] = []
        #: Create requests (counted from 1, throttled ones included) answered 422 as if invalid.
        self.reject_creates: set[int] = set()
        #: Statuses the output host answers the next output downloads with, in order.
        self.file_errors: list[int] = []
        #: The next this many predictions whose output is fetched answer 404 for it, every time.
        self.refuse_outputs = 0
        self._refused_outputs: set[str] = set()
        #: Output downloads served, by prediction id.
        self.file_gets: dict[str, int] = {}
        #: Output downloads wait (counted in ``files_waiting``) until ``release_files()``.
        self.hold_files = False
        self.files_waiting = 0
        self._files_released = asyncio.Event()

    def throttle_next(self, n: int = 1, retry_after: int = 1) -> None:
        """The next ``n`` creates answer 429 with ``Retry-After`` and create nothing."""
        self._throttle += [retry_after] * n

    def hang_next_create(self, seconds: float) -> None:
        """The next create happens but its answer waits ``seconds``: a timeout of unknown outcome."""
        self._hangs.append(seconds)

    def fail_next(self, n: int = 1, error: str = "CUDA out of memory") -> None:
        self._fates += [("failed", error)] * n

    def succeed_without_output_next(self, n: int = 1) -> None:
        """End ``succeeded`` with ``output: null``: it happens, and the clip must be made again."""
        self._fates += [("succeeded_null", None)] * n

    def abort_next(self, n: int = 1) -> None:
        """End with ``aborted``: real, yet outside the replicate client's ``Prediction.status`` literal."""
        self._fates += [("aborted", None)] * n

    def release(self) -> None:
        """Let held predictions (``hold_predictions``) finish, and stop holding new ones."""
        self.hold_predictions = False
        for gate in self._held:
            gate.set()
        self._held = []

    def release_next(self) -> None:
        """Let the oldest held prediction finish (the others stay held)."""
        self._held.pop(0).set()

    @property
    def held(self) -> int:
        """Predictions being held now."""
        return len(self._held)

    def release_files(self) -> None:
        """Let held output downloads (``hold_files``) go on, and stop holding new ones."""
        self.hold_files = False
        self._files_released.set()
        self._files_released = asyncio.Event()

    async def wait_idle(self) -> None:
        """Wait for every background render and webhook delivery, including ones they start."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- lifecycle -------------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _finish(self, pid: str, status: str, output: Any = None, error: str | None = None) -> bool:
        """Move to a terminal state, unless already there (a cancel won the race): False then."""
        pred, job, now = self.predictions[pid], self._jobs[pid], time.monotonic()
        if pred["status"] in TERMINAL:
            return False
        metrics: dict[str, float] = {"total_time": round(now - job.created, 3)}
        if job.started is not None:
            metrics["predict_time"] = round(now - job.started, 3)
        pred.update(status=status, output=output, error=error, completed_at=_now(), metrics=metrics)
        return True

    async def _run(self, pid: str) -> None:
        pred, job = self.predictions[pid], self._jobs[pid]
        await asyncio.sleep(self.render_delay + self._jitter.uniform(0.0, self.render_jitter))
        job.started = time.monotonic()
        pred.update(status="processing", started_at=_now())
        if self.hold_predictions:
            gate = asyncio.Event()
            self._held.append(gate)
            await gate.wait()
        if job.outcome == "succeeded_null":
            done = self._finish(pid, "succeeded", output=None)
        elif job.outcome != "succeeded":
            done = self._finish(pid, job.outcome, error=job.error)
        else:
            try:
                await self._render(pid, pred["input"])
                done = self._finish(pid, "succeeded", output=f"{self.base_url}/files/{pid}.mp4")
            except Exception as exc:  # a broken render is the prediction's failure, as on Replicate
                done = self._finish(pid, "failed", error=f"{type(exc).__name__}: {exc}")
        if done:
            await self._deliver(pid)

    async def _render(self, pid: str, given: dict[str, Any]) -> None:
        """A clip sized and timed like the model's output: Wan 2.2 from frames/fps, 2.5 from ``size``."""
        props = self.models[self.predictions[pid]["model"]]["properties"]
        inp = {k: p["default"] for k, p in props.items() if "default" in p} | given
        ready = self.prerendered_by_seed.get(inp.get("seed", -1), self.prerendered)
        if ready is not None:
            await asyncio.to_thread(os.link, ready, self._files / f"{pid}.mp4")
            return
        if "size" in inp:
            width, height = (int(v) for v in inp["size"].split("*"))
        else:
            width, height = (1280, 720) if inp.get("resolution") == "720p" else (832, 480)
            if inp.get("aspect_ratio") == "9:16":
                width, height = height, width
        fps = int(inp.get("frames_per_second", 24))
        seconds = inp["num_frames"] / fps if "num_frames" in inp else float(inp.get("duration", 5))
        if self.max_render_seconds is not None:
            seconds = min(seconds, self.max_render_seconds)
        aspect = "9:16" if height > width else "1:1" if height == width else "16:9"
        spec = ClipSpec(
            clip_id=pid, scene_id=pid, scene_kind="intro", index=0, duration_seconds=seconds,
            aspect_ratio=aspect, width=width, height=height, prompt=inp["prompt"],
            negative_prompt=inp.get("negative_prompt", ""), caption=inp["prompt"][:120], colors=[],
            seed=inp.get("seed"),
        )  # fmt: skip
        await render_clip(spec, self._files / f"{pid}.mp4", fps=fps)

    async def _deliver(self, pid: str) -> None:
        """POST the terminal prediction, signed; retried on non-2xx or errors, one webhook-id per event."""
        pred = self.predictions[pid]
        events = pred.get("webhook_events_filter")
        if self.drop_webhooks or not pred.get("webhook") or (events and "completed" not in events):
            return
        assert self._session is not None
        body = json.dumps(pred).encode()
        msg_id = f"msg_{_rand(27)}"
        for _ in range(2 if self.duplicate_webhooks else 1):
            for attempt in range(self.webhook_retries + 1):
                if attempt:
                    await asyncio.sleep(min(1.0, 0.2 * 2 ** (attempt - 1)))
                try:
                    headers = sign(self.secret, body, webhook_id=msg_id)
                    async with self._session.post(pred["webhook"], data=body, headers=headers) as resp:
                        outcome: int | str = resp.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    outcome = type(exc).__name__
                self.webhook_deliveries.append((msg_id, outcome))
                if isinstance(outcome, int) and 200 <= outcome < 300:
                    break

    # -- HTTP ------------------------------------------------------------------------------------

    @staticmethod
    def _error(status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> web.Response:
        body = {"detail": detail, "status": status, **extra}
        return web.json_response(body, status=status, headers=headers)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/v1/") and request.headers.get("Authorization") != f"Bearer {self.token}":
            return self._error(401, "Invalid token.")
        response: web.StreamResponse = await handler(request)
        return response

    async def _get_model(self, request: web.Request) -> web.Response:
        owner, name = request.match_info["owner"], request.match_info["name"]
        schema = self.models.get(f"{owner}/{name}")
        if schema is None:
            return self._error(404, "Not found.")
        schemas = {"Input": schema, "Output": {"type": "string", "format": "uri"}}
        info = {"title": "Cog", "version": "0.1.0"}
        openapi = {"openapi": "3.0.2", "info": info, "paths": {}, "components": {"schemas": schemas}}
        return web.json_response(
            {
                "url": f"https://replicate.com/{owner}/{name}", "owner": owner, "name": name,
                "description": f"Fake {name}", "visibility": "public", "github_url": None,
                "paper_url": None, "license_url": None, "run_count": 0, "cover_image_url": None,
                "default_example": None,
                "latest_version": {
                    "id": version_id(f"{owner}/{name}"), "created_at": "2025-07-28T00:00:00.000000Z",
                    "cog_version": "0.14", "openapi_schema": openapi,
                },
            }
        )  # fmt: skip

    async def _create(self, request: web.Request) -> web.Response:
        try:
            body: Any = await request.json()
        except ValueError:
            return self._error(400, "Request body is not valid JSON.")
        self.create_requests.append(body)
        if self._throttle:
            after = self._throttle.pop(0)
            self.throttled += 1
            detail = f"Request was throttled. Expected available in {after} second."
            return self._error(429, detail, headers={"Retry-After": str(after)})
        model = f"{request.match_info['owner']}/{request.match_info['name']}"
        if model not in self.models:
            return self._error(404, "Not found.")
        invalid = validate_input(self.models[model], body.get("input") if isinstance(body, dict) else None)
        if len(self.create_requests) in self.reject_creates:
            invalid = [{"field": "input", "description": "rejected by the test"}]
        if invalid:
            detail = "".join(f"- {e['field']}: {e['description']}\n" for e in invalid)
            return self._error(422, detail, title="Input validation failed", invalid_fields=invalid)
        pid = _rand(26)
        pred: dict[str, Any] = {
            "id": pid, "model": model, "version": version_id(model), "input": body["input"], "logs": "",
            "output": None, "data_removed": False, "error": None, "status": "starting",
            "created_at": _now(), "started_at": None, "completed_at": None,
            # No "stream": null here: the client's pydantic model types urls as Dict[str, str].
            "urls": {
                "get": f"{self.base_url}/v1/predictions/{pid}",
                "cancel": f"{self.base_url}/v1/predictions/{pid}/cancel",
                "web": f"https://replicate.com/p/{pid}",
            },
            "metrics": {},
        }  # fmt: skip
        if body.get("webhook"):
            pred["webhook"] = body["webhook"]
            events = body.get("webhook_events_filter") or ["start", "output", "logs", "completed"]
            pred["webhook_events_filter"] = events
        outcome, error = self._fates.pop(0) if self._fates else ("succeeded", None)
        self.predictions[pid] = pred
        self._jobs[pid] = job = Job(outcome, error)
        snapshot = json.loads(json.dumps(pred))  # the response shows the state at creation
        if self.webhook_before_response:
            await self._run(pid)
        else:
            job.task = self._spawn(self._run(pid))
        if self._hangs:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._hangs.pop(0))
        return web.json_response(snapshot, status=201)

    async def _get(self, request: web.Request) -> web.Response:
        pred = self.predictions.get(request.match_info["id"])
        return web.json_response(pred) if pred is not None else self._error(404, "Not found.")

    async def _list(self, request: web.Request) -> web.Response:
        """Newest first; the cursor is the creation index the next page starts below."""
        preds = list(self.predictions.values())
        end = min(int(request.query.get("cursor", len(preds))), len(preds))
        start = max(0, end - self.page_size)
        nxt = f"{self.base_url}/v1/predictions?cursor={start}" if start > 0 else None
        results = preds[start:end][::-1]
        if not self.list_shows_webhook:
            results = [{k: v for k, v in p.items() if k != "webhook"} for p in results]
        return web.json_response({"previous": None, "next": nxt, "results": results})

    async def _cancel(self, request: web.Request) -> web.Response:
        pid = request.match_info["id"]
        pred = self.predictions.get(pid)
        if pred is None:
            return self._error(404, "Not found.")
        self.canceled_ids.append(pid)
        task = self._jobs[pid].task
        if self._finish(pid, "canceled"):
            if task is not None:
                task.cancel()
            self._spawn(self._deliver(pid))
        return web.json_response(pred)

    async def _secret(self, request: web.Request) -> web.Response:
        return web.json_response({"key": self.secret})

    async def _file(self, request: web.Request) -> web.StreamResponse:
        if self.file_errors:
            return self._error(self.file_errors.pop(0), "The output host is busy.")
        if self.refuse_outputs and request.match_info["id"] not in self._refused_outputs:
            self.refuse_outputs -= 1
            self._refused_outputs.add(request.match_info["id"])
        if request.match_info["id"] in self._refused_outputs:
            return self._error(404, "This output is gone.")
        path = self._files / f"{request.match_info['id']}.mp4"
        self.file_gets[request.match_info["id"]] = self.file_gets.get(request.match_info["id"], 0) + 1
        if self.hold_files:
            self.files_waiting += 1
            try:
                await self._files_released.wait()
            finally:
                self.files_waiting -= 1
        if not path.is_file():
            return self._error(404, "Not found.")
        return web.FileResponse(path, headers={"Content-Type": "video/mp4"})

    async def start(self) -> "FakeReplicate":
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/v1/models/{owner}/{name}", self._get_model)
        app.router.add_post("/v1/models/{owner}/{name}/predictions", self._create)
        app.router.add_get("/v1/predictions", self._list)
        app.router.add_get("/v1/predictions/{id}", self._get)
        app.router.add_post("/v1/predictions/{id}/cancel", self._cancel)
        app.router.add_get("/v1/webhooks/default/secret", self._secret)
        app.router.add_get("/files/{id}.mp4", self._file)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        self._runner, self.port = await loopback.serve(app, shutdown_timeout=1.0)
        return self

    async def stop(self) -> None:
        """Cancel renders and deliveries (ffmpeg is killed by run_ffmpeg), then close everything."""
        self._stopping.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        shutil.rmtree(self._files, ignore_errors=True)
