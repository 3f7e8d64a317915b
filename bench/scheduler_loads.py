"""The scheduler benchmark's worker: one embedded-handler worker in a child process.

    python -m bench.scheduler_loads --nodes H:P,H:P,H:P --out FILE [--slots N]

Jobs whose command is HANDLER run `record`, which notes (job, scheduled ms, attempt, wall ms
on entry). On SIGTERM the worker stops (runs in flight finish and report, as the worker's
own SIGTERM path does), writes the notes and its CPU seconds as JSON to FILE, and exits 0.
Without --slots the worker is built with EmbeddedWorker's defaults (the servers only), as a
user's would be; the slots it got are in the JSON. It lives apart from the benchmark's
process so the benchmark's polling shares neither its
GIL nor its event loop; both read the same wall clock as the daemons (one machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HANDLER = "bench.record"
READY_LINE = "worker ready"

# (job, scheduled_at_ms, attempt, handler entry in wall ms)
Note = tuple[str, int, int, float]


def embedded_worker_class() -> Any:
    """scheduler's EmbeddedWorker, or None while it is not there."""
    try:
        from scheduler.client import EmbeddedWorker
    except ImportError:
        try:
            from scheduler.embedded import EmbeddedWorker
        except ImportError:
            return None
    return EmbeddedWorker


async def run_worker(nodes: Sequence[tuple[str, int]], slots: int | None, notes: list[Note],
                     stop: asyncio.Event, facts: dict[str, Any]) -> None:
    """The worker part of the benchmark: serve HANDLER runs until `stop` is set, appending a
    note per run to `notes` (the first thing the handler does, so it is the start time).
    `slots` None: EmbeddedWorker's default; facts["slots"] says what the worker got."""
    worker_class = embedded_worker_class()
    if worker_class is None:
        raise RuntimeError("scheduler has no EmbeddedWorker")
    worker = worker_class(list(nodes)) if slots is None else worker_class(list(nodes),
                                                                          slots=slots)
    facts["slots"] = getattr(worker, "concurrency", None)

    @worker.handler(HANDLER)
    async def record(run: Any) -> None:
        notes.append((run.job, run.scheduled_at_ms, run.attempt, time.time() * 1000.0))

    await worker.run(stop)


def parse_nodes(text: str) -> list[tuple[str, int]]:
    out = []
    for item in filter(None, text.split(",")):
        host, _, port = item.rpartition(":")
        out.append((host, int(port)))
    return out


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    notes: list[Note] = []
    facts: dict[str, Any] = {}
    print(READY_LINE, flush=True)
    await run_worker(parse_nodes(args.nodes), args.slots, notes, stop, facts)
    return {"notes": notes, "cpu_s": time.process_time(), **facts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scheduler_loads")
    parser.add_argument("--nodes", required=True, help="H:P,... RESP ports of the nodes")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the notes")
    parser.add_argument("--slots", type=int, default=None,
                        help="the worker's slots (default: EmbeddedWorker's own default)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    result = asyncio.run(_main(args))
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
