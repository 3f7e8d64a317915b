"""Running a shell command for a run, sans polling: `run_command`.

The shell worker's executor (scheduler/worker.py) and embedded handlers (re-exported by
scheduler/embedded.py) start commands here: `/bin/sh -c` in a process group of its own,
watched by scheduler/reaper.py so the group dies with the worker process, and killed whole
(SIGKILL to the group) on TIMEOUT or when the run's task is cancelled (a fence, a kill by
the cluster).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

from scheduler.reaper import process_reaper

__all__ = ["EXIT_TIMED_OUT", "OUTPUT_TAIL_BYTES", "run_command"]

OUTPUT_TAIL_BYTES = 1024  # of a command's output, reported with its exit code
EXIT_TIMED_OUT = 124  # as timeout(1)


async def run_command(command: str, env: dict[str, str], timeout_s: int) -> tuple[int, bytes]:
    """Run `command` with /bin/sh in its own process group; (exit code, output tail).
    On timeout the whole group gets SIGKILL and the code is EXIT_TIMED_OUT."""
    proc = await asyncio.create_subprocess_shell(
        command, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    reaper = process_reaper()
    reaper.watch(proc.pid)  # the group dies with this process (scheduler/reaper.py)
    try:
        async with asyncio.timeout(timeout_s or None):
            output, _ = await proc.communicate()
    except TimeoutError:
        await _kill_group(proc)
        return EXIT_TIMED_OUT, b"timed out"
    except asyncio.CancelledError:
        await _kill_group(proc)
        raise
    finally:
        reaper.unwatch(proc.pid)
    code = proc.returncode if proc.returncode is not None else -1
    return (code if code >= 0 else 128 - code), output[-OUTPUT_TAIL_BYTES:]


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group has already ended
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()
