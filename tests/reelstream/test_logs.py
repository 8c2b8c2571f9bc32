"""Log lines are written by a thread: an event loop never waits for a stderr pipe nobody is reading."""

import select
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Logs far more than a pipe holds (64 KiB) from inside an event loop, then says so on stdout.
_CHILD = textwrap.dedent(
    """
    import asyncio, logging
    from reelstream import logs

    async def main() -> None:
        logs.setup("INFO")
        for n in range(2000):
            logging.getLogger("reelstream.test").info("line %d %s", n, "x" * 100)
        await asyncio.sleep(0)
        print("logged", flush=True)

    asyncio.run(main())
    """
)


def test_an_unread_stderr_pipe_does_not_stop_the_event_loop() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,  # not read until the child has said it logged everything
        text=True,
    )
    try:
        assert child.stdout is not None and child.stderr is not None
        # With the handler writing in the event loop, the child stopped in a write after ~500 lines.
        said, _, _ = select.select([child.stdout], [], [], 30)
        assert said, "the event loop waited on the stderr pipe: nothing was logged past a full pipe"
        assert child.stdout.readline().strip() == "logged"
        written = child.stderr.read()  # now the pipe drains, and every queued line follows
        assert child.wait(timeout=30) == 0
    finally:
        child.kill()
        child.wait()
    lines = written.splitlines()
    assert len(lines) == 2000
    assert lines[0].endswith("INFO reelstream.test: line 0 " + "x" * 100)
    assert "line 1999 " in lines[-1]
