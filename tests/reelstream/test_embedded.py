"""The embedded services of ``reelstream serve`` and the shared fixtures, against the real programs."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from reelstream import embedded


def _gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie left for a non-reaping PID 1 counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state == "Z"


def _port_closed(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _processes_under(path: Path) -> list[str]:
    """Command lines of running processes that mention ``path``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or _gone(int(proc.name)):
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmd:
            found.append(cmd)
    return found


async def test_kafka_round_trip_and_clean_stop(tmp_path: Path, topic_name: str) -> None:
    started = time.monotonic()
    service = await embedded.start_kafka(tmp_path)
    startup = time.monotonic() - started
    try:
        assert service.url == f"127.0.0.1:{service.port}"
        producer = AIOKafkaProducer(bootstrap_servers=service.url)
        await producer.start()
        try:
            await producer.send_and_wait(topic_name, b"hello", key=b"k1")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic_name,
            bootstrap_servers=service.url,
            group_id=f"{topic_name}.group",
            auto_offset_reset="earliest",
            session_timeout_ms=2000,
            heartbeat_interval_ms=500,
        )
        await consumer.start()
        try:
            record = await asyncio.wait_for(consumer.getone(), 15)
        finally:
            await consumer.stop()
        assert (record.key, record.value) == (b"k1", b"hello")
    finally:
        started = time.monotonic()
        await service.stop()
        stopping = time.monotonic() - started
    assert _gone(service.pid)
    assert _port_closed(service.port)
    assert not (tmp_path / "run" / "kafka.pid").exists()
    assert startup < 10 and stopping < 10
    await service.stop()  # idempotent


async def test_postgres_keeps_state_across_restarts(tmp_path: Path) -> None:
    first = await embedded.start_postgres(tmp_path)
    try:
        conn = await asyncpg.connect(first.url)
        try:
            assert await conn.fetchval("select 1") == 1
            assert await conn.fetchval("select current_database()") == "reelstream"
            await conn.execute("create table kept (v text)")
            await conn.execute("insert into kept values ('still here')")
        finally:
            await conn.close()
    finally:
        await first.stop()
    assert _gone(first.pid)
    assert _port_closed(first.port)
    assert _processes_under(tmp_path / "postgres") == []
    assert not (tmp_path / "postgres" / "postmaster.pid").exists()

    second = await embedded.start_postgres(tmp_path)
    try:
        conn = await asyncpg.connect(second.url)
        try:
            assert await conn.fetchval("select v from kept") == "still here"
        finally:
            await conn.close()
    finally:
        await second.stop()
    assert _processes_under(tmp_path / "postgres") == []


async def test_postgres_refuses_a_second_owner_of_the_data_dir(tmp_path: Path) -> None:
    service = await embedded.start_postgres(tmp_path)
    try:
        with pytest.raises(embedded.EmbeddedServiceError, match="already run by another process"):
            await embedded.start_postgres(tmp_path)
    finally:
        await service.stop()


_ORPHAN_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys, threading
    from pathlib import Path
    from reelstream import embedded

    async def main():
        data = Path(sys.argv[1])
        kafka = await embedded.start_kafka(data)
        postgres = await embedded.start_postgres(data)
        print(json.dumps({"kafka": kafka.pid, "postgres": postgres.pid}), flush=True)
        await asyncio.sleep(3600)

    if sys.argv[2] == "thread":
        # Spawned from a non-main thread no parent-death signal is armed: the children survive a
        # SIGKILL of this process and the next start must clean them up.
        worker = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
        worker.start()
        worker.join()
    else:
        asyncio.run(main())
    """
)


def _run_and_kill(data_dir: Path, mode: str) -> dict[str, int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _ORPHAN_SCRIPT, str(data_dir), mode], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        pids: dict[str, int] = json.loads(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()
    return pids


async def test_children_die_with_a_killed_parent(tmp_path: Path) -> None:
    pids = await asyncio.to_thread(_run_and_kill, tmp_path, "main")
    for _ in range(300):  # the kernel signals at once; postgres takes a moment to shut down
        if all(_gone(pid) for pid in pids.values()):
            break
        await asyncio.sleep(0.05)
    assert all(_gone(pid) for pid in pids.values())


async def test_next_start_stops_leftovers_of_a_killed_run(tmp_path: Path) -> None:
    pids = await asyncio.to_thread(_run_and_kill, tmp_path, "thread")
    assert not any(_gone(pid) for pid in pids.values())
    kafka = await embedded.start_kafka(tmp_path)
    postgres = await embedded.start_postgres(tmp_path)
    try:
        assert all(_gone(pid) for pid in pids.values())
        conn = await asyncpg.connect(postgres.url)
        await conn.close()
    finally:
        await postgres.stop()
        await kafka.stop()
    assert _processes_under(tmp_path) == []


async def test_an_immediate_restart_after_a_sigkill_waits_out_the_leftovers(
    tmp_path: Path,
) -> None:
    """The parent-death signals may still be at work (Postgres' fast shutdown): the start waits them out."""
    pids = await asyncio.to_thread(_run_and_kill, tmp_path, "main")
    started = time.monotonic()
    kafka = await embedded.start_kafka(tmp_path)
    postgres = await embedded.start_postgres(tmp_path)
    restart = time.monotonic() - started
    try:
        assert all(_gone(pid) for pid in pids.values())
        assert (tmp_path / "run" / "kafka.pid").read_text().split()[0] == str(kafka.pid)
        assert (tmp_path / "postgres" / "postmaster.pid").read_text().split()[0] == str(postgres.pid)
        conn = await asyncpg.connect(postgres.url)
        await conn.close()
    finally:
        await postgres.stop()
        await kafka.stop()
    assert _processes_under(tmp_path) == []
    print(f"\nbroker and Postgres restarted {restart:.2f} s after a SIGKILL of their parent")


def test_stack_file_is_written_atomically_and_removed(tmp_path: Path) -> None:
    path = embedded.write_stack_file(tmp_path, "127.0.0.1:9092", "postgresql://x@127.0.0.1:1/db", "http://g")
    assert json.loads(path.read_text()) == {
        "kafka_bootstrap": "127.0.0.1:9092",
        "database_url": "postgresql://x@127.0.0.1:1/db",
        "gateway_url": "http://g",
    }
    assert path.stat().st_mode & 0o077 == 0
    assert [p.name for p in tmp_path.iterdir()] == ["stack.json"]
    embedded.remove_stack_file(tmp_path)
    embedded.remove_stack_file(tmp_path)
    assert not path.exists()


def test_free_port_is_bindable() -> None:
    port = embedded.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


async def test_database_url_fixture(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        assert (await conn.fetchval("select current_database()")).startswith("reelstream_test_")
        await conn.execute("create table t (id int)")
    finally:
        await conn.close()


async def test_s3_endpoint_fixture(s3_endpoint: str) -> None:
    from aiobotocore.session import get_session

    session = get_session()
    async with session.create_client("s3", endpoint_url=s3_endpoint) as s3:
        await s3.create_bucket(Bucket="reelstream-test")
        await s3.put_object(Bucket="reelstream-test", Key="a/b.txt", Body=b"payload")
        got = await s3.get_object(Bucket="reelstream-test", Key="a/b.txt")
        async with got["Body"] as body:
            assert await body.read() == b"payload"


async def test_redis_fixture(redis_url: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        assert await client.ping()
        await client.set(b"reelstream:test", b"1")
        assert await client.get(b"reelstream:test") == b"1"
    finally:
        await client.aclose()


def test_topic_name_fixture(topic_name: str) -> None:
    assert topic_name.startswith("t_") and len(topic_name) == 14
