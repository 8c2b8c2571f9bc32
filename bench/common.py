"""What every benchmark shares: the machine, ``reelstream serve`` as a subprocess, helper servers, wrk.

The benchmarks treat ``reelstream serve`` as a black box: they start it as a subprocess (its own
session, its own data dir and port), wait for the line containing ``ready`` and stop it with SIGTERM,
whatever it runs inside (one process today, a supervisor of one process per stage tomorrow). Processes
are found by walking ``/proc`` from the pid we started, never by name, so nothing another engineer runs
on the same machine is touched.

Figures are only comparable within one run on one machine, so every figure is printed beside its
ceiling measured in the same run (:func:`ratio`), and :func:`machine` says what the machine was.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
PYTHON = sys.executable
#: A secret the benchmarks know, so they can sign provider webhooks the gateway accepts.
WEBHOOK_SECRET = "whsec_" + "YmVuY2htYXJrLXNlY3JldC1ub3QtZm9yLXByb2R1Y3Rpb24h"
REPLICATE_TOKEN = "r8_bench_token"
#: What POST /api/v1/generations gets in the accept benchmarks: a typical order, brand included.
ORDER: dict[str, Any] = {
    "prompt": "A sunrise run through a coastal city, energetic and hopeful, for a running shoe",
    "duration_seconds": 15,
    "aspect_ratio": "9:16",
    "brand": {"name": "Acme", "colors": ["#0A84FF", "#FF375F"], "tone": "playful"},
}


# -- the machine and the report --------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "wrk": wrk_version(),
    }


def header(title: str, command: str) -> dict[str, Any]:
    """Print what is measured, on what, by which command; returns the machine for the results file."""
    info = machine()
    print(f"== {title}", flush=True)
    print(
        f"machine: {info['cores']} cores, {info['cpu']}, Python {info['python']}, {info['platform']};"
        f" load average at start {info['load_average']} (a shared machine: other work may run beside)"
    )
    print(f"command: {command}", flush=True)
    return info


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio(value: float, ceiling: float) -> str:
    return f"{value / ceiling:.0%}" if ceiling else "n/a"


def save(name: str, payload: dict[str, Any]) -> Path:
    """Results as JSON under ``bench/results/`` (not committed): the numbers behind BENCHMARKS.md."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"results: {path.relative_to(ROOT)}", flush=True)
    return path


# -- processes -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from ``/proc``), deepest last."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    frontier = [pid]
    while frontier:
        nxt = [c for p in frontier for c in parents.get(p, [])]
        found += nxt
        frontier = nxt
    return found


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent's ``wait`` counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def rss_mb(pid: int) -> float:
    """Resident set size in MB (VmRSS), 0 for a process that is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time used so far by ``pid``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d|^\{|^\[[\w.-]+\] ")


@dataclass
class Proc:
    """A helper subprocess we started: output to a log file, stopped by its own pid and descendants."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    known: set[int] = field(default_factory=set)

    @classmethod
    def start(cls, name: str, argv: Sequence[str], env: dict[str, str] | None, log_dir: Path) -> Proc:
        log_path = log_dir / f"{name}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=ROOT,
                start_new_session=True,  # a Ctrl-C of the benchmark is ours to hand on, in order
            )
        return cls(name, popen, log_path)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float) -> str:
        """The first output line containing ``text``, log lines aside; raises if it dies or time runs out.

        Log lines (``2026-01-01 00:00:00,000 INFO ...``) and lines a supervisor copies from its children
        (``[gateway] ready: ...``) are skipped: "embedded Kafka ready" is not the contract's ``ready``.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.output().splitlines():
                if text in line and not _LOG_LINE.match(line):
                    self.remember()
                    return line
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n{self.tail()}")
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} printed no {text!r} within {timeout:.0f}s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def remember(self) -> set[int]:
        """Record the current descendants, so they can be checked (and cleaned up) after a stop."""
        self.known |= set(children(self.pid))
        return self.known

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> float:
        """Signal our process, wait for it; returns the seconds until it *and every descendant* was gone.

        Anything still alive after ``timeout`` is SIGKILLed by pid (they are all processes we started).
        """
        self.remember()
        started = time.monotonic()
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)
        deadline = started + timeout
        while time.monotonic() < deadline:
            self.popen.poll()
            if self.popen.returncode is not None and not any(alive(p) for p in self.known):
                return time.monotonic() - started
            time.sleep(0.02)
        elapsed = time.monotonic() - started
        for pid in [self.pid, *self.known]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        return elapsed


def reelstream_argv(*args: str) -> list[str]:
    """The ``reelstream`` script of this interpreter's environment (the venv), else ``-m reelstream.cli``."""
    script = Path(PYTHON).parent / "reelstream"
    if script.exists():
        return [str(script), *args]
    return [PYTHON, "-m", "reelstream.cli", *args]


def base_env(tree: Path = ROOT, **extra: str) -> dict[str, str]:
    """Our environment without any ``REELSTREAM_*``, importing reelstream from ``tree`` first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELSTREAM_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tree), os.environ.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


@dataclass
class Stack:
    """A running ``reelstream serve`` and its helpers (the held Replicate stand-in)."""

    serve: Proc
    provider: Proc
    url: str
    data_dir: Path
    stack: dict[str, Any]
    log_dir: Path
    env: dict[str, str]

    def processes(self) -> dict[int, str]:
        """pid → command line of serve and everything it started."""
        pids = [self.serve.pid, *children(self.serve.pid)]
        return {p: cmdline(p) for p in pids if alive(p)}

    def reelstream_processes(self) -> dict[int, str]:
        """The Python processes of reelstream (serve, and its stage/gateway children if it has any)."""
        return {p: c for p, c in self.processes().items() if _program(c).startswith(("python", "reelstream"))}

    def gateway_shares_stages(self) -> bool:
        """Whether the gateway runs in the same process as the stages (serve before the supervisor)."""
        return self.gateway_pid() == self.serve.pid

    def gateway_pid(self) -> int:
        """The process serving HTTP: a child whose command line names the gateway, else serve itself."""
        for pid, line in self.reelstream_processes().items():
            if pid != self.serve.pid and "gateway" in line.split():
                return pid
        return self.serve.pid


def _program(command_line: str) -> str:
    """The program's name: ``python3.11`` for ``/usr/bin/python3.11 -m ...``, ``postgres:`` for a backend."""
    return command_line.split(" ", 1)[0].rsplit("/", 1)[-1] if command_line else ""


def start_provider(log_dir: Path, **options: str) -> tuple[Proc, str]:
    """The Replicate stand-in (tests/support/fake_replicate.py) as a process: holding every prediction,
    or, with ``BENCH_PRERENDERED`` (and ``BENCH_PROVIDER_DELAY``) in ``options``, finishing each after a
    fixed delay with that file as its output (see fake_provider.py)."""
    proc = Proc.start(
        "fake_replicate",
        [PYTHON, str(BENCH / "fake_provider.py")],
        base_env(BENCH_WEBHOOK_SECRET=WEBHOOK_SECRET, BENCH_REPLICATE_TOKEN=REPLICATE_TOKEN, **options),
        log_dir,
    )
    line = proc.wait_for("listening on", 30)
    return proc, line.rsplit(" ", 1)[1]


def start_bare(log_dir: Path, *args: str) -> tuple[Proc, str]:
    """The ceiling: a bare aiohttp server (see bare_server.py), in its own process."""
    port = free_port()
    argv = [PYTHON, str(BENCH / "bare_server.py"), str(port), *args]
    proc = Proc.start("bare", argv, base_env(), log_dir)
    proc.wait_for("listening", 30)
    return proc, f"http://127.0.0.1:{port}"


def compare_trees() -> dict[str, Path]:
    """``BENCH_COMPARE``: other source trees to measure in the same runs, for before/after figures.

    ``DIR`` (named "before") or ``NAME=DIR,NAME=DIR`` (say, exports of main and of each fix's commit).
    """
    value = os.environ.get("BENCH_COMPARE", "").strip()
    trees: dict[str, Path] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, _, path = item.rpartition("=")
        trees[name or "before"] = Path(path).resolve()
    return trees


@contextlib.contextmanager
def stack(
    log_dir: Path,
    *,
    tree: Path = ROOT,
    ready_within: float = 180.0,
    provider: dict[str, str] | None = None,
    **settings: str,
) -> Iterator[Stack]:
    """``reelstream serve`` on a fresh data dir and port, with Replicate pointed at the held stand-in.

    The rate limit is raised out of the way and the sweeps that would re-drive or poll the waiting
    generations are pushed past the benchmark (each can be overridden through ``settings``). ``tree``:
    the source tree serve imports reelstream from (another one gives a before/after in the same run).
    """
    stand_in, provider_url = start_provider(log_dir, **(provider or {}))
    data_dir = Path(tempfile.mkdtemp(prefix="reelstream-bench-"))
    port = free_port()
    chosen = {
        "REELSTREAM_DATA_DIR": str(data_dir),
        "REELSTREAM_HTTP_PORT": str(port),
        "REELSTREAM_REPLICATE_API_TOKEN": REPLICATE_TOKEN,
        "REELSTREAM_REPLICATE_BASE_URL": provider_url,
        "REELSTREAM_REPLICATE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "REELSTREAM_RATE_LIMIT_PER_MINUTE": "100000000",
        "REELSTREAM_PREDICTION_POLL_SECONDS": "3600",
        "REELSTREAM_RECONCILE_SECONDS": "3600",
    }
    chosen.update({f"REELSTREAM_{k.upper()}": v for k, v in settings.items()})
    env = base_env(tree, **chosen)
    serve = Proc.start("serve", reelstream_argv("serve"), env, log_dir)
    try:
        serve.wait_for("ready", ready_within)
        info = json.loads((data_dir / "stack.json").read_text())
        yield Stack(serve, stand_in, f"http://127.0.0.1:{port}", data_dir, info, log_dir, env)
    finally:
        serve.stop()
        stand_in.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@contextlib.contextmanager
def lone_gateway(stack_: Stack, *, tree: Path = ROOT) -> Iterator[tuple[Proc, str]]:
    """``reelstream gateway`` as a process of its own beside ``stack_`` (it finds it by stack.json).

    While ``serve`` runs the gateway in the stages' process, this is the gateway as a supervisor of one
    process per stage (or docker-compose) runs it: same code, a core not shared with the stages' loop.
    """
    port = free_port()
    env = {**stack_.env, "REELSTREAM_HTTP_PORT": str(port), "PYTHONPATH": base_env(tree)["PYTHONPATH"]}
    proc = Proc.start("gateway", reelstream_argv("gateway"), env, stack_.log_dir)
    try:
        proc.wait_for("ready", 60)
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


# -- wrk -------------------------------------------------------------------------------------------

_WRK_REPORT = r"""
-- appended by bench/common.py: number the threads, count statuses, print one JSON line at the end
local _threads = {}
function setup(thread)
  thread:set("tid", #_threads)  -- 0, 1, ...: scripts that share out precomputed requests use it
  table.insert(_threads, thread)
end
_statuses = {}
function response(status, headers, body) _statuses[status] = (_statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local counts = {}
  for _, t in ipairs(_threads) do
    for k, v in pairs(t:get("_statuses")) do counts[tostring(k)] = (counts[tostring(k)] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(counts) do table.insert(parts, string.format('"%s":%d', k, v)) end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,'
    .. '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d},"statuses":{%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.timeout, e.status,
    table.concat(parts, ",")))
end
"""


def wrk_version() -> str:
    path = shutil.which("wrk")
    if path is None:
        return "missing"
    out = subprocess.run([path, "-v"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else "wrk"


def wrk_script(path: Path, body: str) -> Path:
    """A wrk Lua script: ``body`` (setting ``wrk.method`` etc. or defining ``request``) + our reporter."""
    path.write_text(body.rstrip() + "\n" + _WRK_REPORT)
    return path


def post_script(path: Path, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Path:
    """POST the same JSON body on every request."""
    lines = ['wrk.method = "POST"', f"wrk.body = {lua_string(json.dumps(payload))}"]
    for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
        lines.append(f"wrk.headers[{lua_string(name)}] = {lua_string(value)}")
    return wrk_script(path, "\n".join(lines))


def lua_string(text: str) -> str:
    """A Lua string literal: printable ASCII as is, every other byte as a decimal escape."""
    out = []
    for byte in text.encode():
        char = chr(byte)
        out.append("\\" + char if char in '"\\' else char if 32 <= byte < 127 else f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


@dataclass
class WrkResult:
    rps: float
    requests: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[str, int]
    errors: dict[str, int]
    #: CPU wrk itself used, in cores: on a 2-core machine the load generator is part of the picture.
    wrk_cores: float = 0.0

    def ok(self, status: str) -> int:
        return self.statuses.get(status, 0)

    def line(self) -> str:
        other = dict(self.statuses)
        errors = {k: v for k, v in self.errors.items() if v and k != "status"}
        return (
            f"{self.rps:8.0f} req/s  p50 {self.p50_ms:7.1f} ms  p99 {self.p99_ms:7.1f} ms"
            f"  max {self.max_ms:7.1f} ms  statuses {other}" + (f"  socket errors {errors}" if errors else "")
        )


WRK_THREADS = 2


def wrk(url: str, script: Path, *, connections: int, seconds: int, threads: int = WRK_THREADS) -> WrkResult:
    """Run wrk against ``url``; the request rate counts every answer, so check ``statuses`` too."""
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    for line in out.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            data = json.loads(line[len("WRK_JSON ") :])
            seconds_run = data["duration_us"] / 1e6
            return WrkResult(
                rps=data["requests"] / seconds_run if seconds_run else 0.0,
                requests=data["requests"],
                p50_ms=data["p50_us"] / 1000,
                p90_ms=data["p90_us"] / 1000,
                p99_ms=data["p99_us"] / 1000,
                max_ms=data["max_us"] / 1000,
                statuses=data["statuses"],
                errors=data["errors"],
                wrk_cores=wrk_cpu / seconds_run if seconds_run else 0.0,
            )
    raise RuntimeError(f"wrk printed no report (exit {out.returncode}):\n{out.stdout}\n{out.stderr}")


def require_wrk() -> None:
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: `apt-get install -y wrk` (make bench installs it when root)")


def log_dir(name: str) -> Path:
    """Where this benchmark's helper processes write their output (kept for a post-mortem)."""
    path = RESULTS / "logs" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- profiling -------------------------------------------------------------------------------------


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    return found if Path(found).exists() else None


def start_profile(pid: int, seconds: int, out: Path, rate: int = 100) -> subprocess.Popen[bytes] | None:
    """``py-spy record`` of ``pid`` for ``seconds``, as collapsed stacks (``--format raw``) in ``out``.

    ``--nonblocking``: the process is never paused, so the profile costs it (almost) nothing.
    """
    spy = py_spy()
    if spy is None:
        print("py-spy is not installed: no profile (pip install py-spy)", flush=True)
        return None
    argv = [spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", str(rate)]
    argv += ["--format", "raw", "--nonblocking", "--output", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _frame_name(frame: str) -> str:
    """``handler (gateway/generations.py:12)`` → ``handler (gateway/generations.py)``: lines merged."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        path = path.removeprefix(str(ROOT) + "/")
    return f"{name} ({path})"


#: Frames every sample goes through (CLI, event loop): left out of the inclusive list, which they would top.
_BOILERPLATE = (
    "(typer/",
    "(click/",
    "(asyncio/runners.py)",
    "run_forever (",
    "run_until_complete (",
    "_run_once (",
    "Handle._run (",
    "(reelstream/cli.py)",
)


def top_frames(raw: Path, limit: int = 25) -> str:
    """The heaviest functions of a collapsed-stack profile: inclusive (on the stack) and self (leaf) %."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame_name(f) for f in stack.split(";") if not f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("<module>") and "(threading.py)" not in f]
        for name in set(frames):
            inclusive[name] = inclusive.get(name, 0) + count
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + count
    if not total:
        return "(no samples)"
    lines = [f"{total} samples (busy only; idle waits are not sampled)", "", "inclusive  function"]
    heavy = sorted(inclusive.items(), key=lambda kv: -kv[1])
    for name, count in [kv for kv in heavy if not any(b in kv[0] for b in _BOILERPLATE)][:limit]:
        lines.append(f"{count / total:8.1%}   {name}")
    lines += ["", "self       function"]
    for name, count in sorted(own.items(), key=lambda kv: -kv[1])[:limit]:
        lines.append(f"{count / total:8.1%}   {name}")
    return "\n".join(lines)


def cpu_by_kind(stack_: Stack) -> dict[str, float]:
    """CPU seconds used so far by the stack's processes, summed by kind (reelstream, postgres, tansu)."""
    kinds: dict[str, float] = {}
    for pid, line in stack_.processes().items():
        kind = "postgres" if "postgres" in line else "tansu" if "tansu" in line else "reelstream"
        kinds[kind] = kinds.get(kind, 0.0) + cpu_seconds(pid)
    kinds["fake replicate"] = cpu_seconds(stack_.provider.pid)
    return kinds


def cpu_by_role(stack_: Stack, extra_pids: Sequence[int] = ()) -> dict[str, float]:
    """CPU seconds used so far by every process of the stack, by role.

    Roles: ``gateway``, ``stage NAME`` (each Python stage, instances summed), ``ffmpeg`` (the stages'
    finished child processes: joins, thumbnails, encodes), ``postgres`` (every backend, and the ones
    that exited, through the postmaster), ``tansu``, ``supervisor`` and ``stand-in`` (the provider's).
    """
    roles: dict[str, float] = {}

    def add(role: str, seconds: float) -> None:
        roles[role] = roles.get(role, 0.0) + seconds

    lines = {**stack_.processes(), **{pid: cmdline(pid) for pid in extra_pids}}
    for pid, line in lines.items():
        own, finished_children = _cpu_split(pid)
        words = line.split()
        if "postgres" in line:
            add("postgres", own + finished_children)
        elif "tansu" in line:
            add("tansu", own)
        elif "stage" in words:
            add(f"stage {words[words.index('stage') + 1]}", own)
            add("ffmpeg", finished_children)
        elif "gateway" in words:
            add("gateway", own)
        elif pid == stack_.serve.pid:
            add("supervisor", own)
        else:
            add("other", own + finished_children)
    add("stand-in", cpu_seconds(stack_.provider.pid))
    return roles


def _cpu_split(pid: int) -> tuple[float, float]:
    """(own CPU seconds, CPU seconds of its children that have exited) of ``pid``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def cpu_share(before: dict[str, float], after: dict[str, float], seconds: float) -> str:
    """``reelstream 1.21 cores, postgres 0.30, ...``: what each kind used during ``seconds``."""
    parts = [f"{k} {(after.get(k, 0.0) - v) / seconds:.2f}" for k, v in before.items()]
    return "cores used: " + ", ".join(parts)


def metric(url: str, name: str, labels: str = "") -> float:
    """One sample of the Prometheus text at ``url`` (``/metrics``): ``name{labels}``, 0 when absent."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0
