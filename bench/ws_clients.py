"""WebSocket clients for the fan-out benchmark, in a process of their own.

``python bench/ws_clients.py BASE_URL IDS_FILE COUNT EXPECT TIMEOUT OUT_FILE``: opens COUNT WebSockets to
``BASE_URL/ws/generations/{id}``, spread evenly over the ids in IDS_FILE (one per line), prints
``connected N`` once all are open and have their snapshot, then listens until every socket has had
EXPECT ``status`` messages (or TIMEOUT seconds have passed), and writes JSON to OUT_FILE: for every
``status`` message, the delay from its ``at`` (stamped by the publisher just before it published) to
its receipt here, and how many sockets were closed early and why.
Same machine, same clock: no synchronisation needed.
"""

import asyncio
import json
import sys
import time
from datetime import datetime
from pathlib import Path

import aiohttp


class Clients:
    def __init__(self, count: int, expect: int) -> None:
        self.count, self.expect = count, expect
        self.delays: list[float] = []
        #: generation id -> messages received per socket on it (to see where messages went missing)
        self.received: dict[str, list[int]] = {}
        self.closes: list[str] = []
        self.ready = 0
        self.finished = 0
        self.all_ready = asyncio.Event()
        self.all_done = asyncio.Event()

    def _check(self) -> None:
        if self.ready + len(self.closes) >= self.count:
            self.all_ready.set()
        if self.finished + len(self.closes) >= self.count:
            self.all_done.set()

    async def run(self, session: aiohttp.ClientSession, url: str) -> None:
        got = 0
        try:
            async with session.ws_connect(url, heartbeat=None, max_msg_size=0) as ws:
                first = await ws.receive()
                if first.type != aiohttp.WSMsgType.TEXT:
                    self.closes.append(f"no snapshot: {first.type.name} {ws.close_code}")
                    return
                self.ready += 1
                self._check()
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    now = time.time()
                    data = json.loads(msg.data)
                    if data.get("type") == "status":
                        sent = datetime.fromisoformat(data["at"].replace("Z", "+00:00")).timestamp()
                        self.delays.append(now - sent)
                        got += 1
                        if got == self.expect:
                            self.finished += 1
                            self._check()
                if ws.close_code not in (None, 1000):
                    self.closes.append(f"closed {ws.close_code}")
        except (aiohttp.ClientError, OSError) as exc:
            self.closes.append(type(exc).__name__)
        finally:
            self.received.setdefault(url.rsplit("/", 1)[1], []).append(got)
            self._check()


async def listen(base: str, ids: list[str], count: int, expect: int, within: float) -> Clients:
    clients = Clients(count, expect)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = []
        for i in range(count):
            url = f"{base}/ws/generations/{ids[i % len(ids)]}"
            tasks.append(asyncio.create_task(clients.run(session, url)))
            if i % 50 == 49:
                await asyncio.sleep(0.05)  # a ramp, not a SYN flood
        try:
            await asyncio.wait_for(clients.all_ready.wait(), 60)
        except TimeoutError:
            pass
        print(f"connected {clients.ready}", flush=True)
        try:
            await asyncio.wait_for(clients.all_done.wait(), within)
        except TimeoutError:
            pass
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return clients


def main() -> None:
    base, ids_file, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[6])
    count, expect, timeout = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    ids = [line.strip() for line in ids_file.read_text().splitlines() if line.strip()]
    clients = asyncio.run(listen(base, ids, count, expect, timeout))
    result = {
        "delays": clients.delays, "closes": clients.closes, "connected": clients.ready,
        "received": clients.received,
    }  # fmt: skip
    out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
