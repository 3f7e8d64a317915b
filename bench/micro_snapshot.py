"""Micro-benchmark: how long a scheduler node's Raft snapshot pauses its event loop.

Run from the repository root: `.venv/bin/python bench/micro_snapshot.py`.

Builds a SchedulerState of --jobs jobs x --records run records each (the state a busy
cluster reaches once histories are full), then:
- times each step a snapshot takes (best of --repeat): the off-loop hook's capture
  (`capture_snapshot`), the encoding (`snapshot()`), the driver's wrapping of the blob with
  the address book (msgpack), `DiskStorage.create_snapshot` (snapshot file + fsync) and
  `DiskStorage.compact` (log rewrite + fsync; --log-entries entries of --entry-bytes);
- runs a one-node RaftDriver on 127.0.0.1 whose state machine holds that state, three
  times in the same run: with the on-loop hook (`snapshot`, bytes), with the off-loop one
  (`capture_snapshot`), and without snapshots for the noise floor, proposing the same
  entries each time. A probe task sleeps 1 ms at a time; the longest it overslept while
  the driver took --snapshots snapshots is the loop's pause. Prints them and the ratio.
The state is frozen out of the cyclic GC's reach (`gc.freeze()`), as the scheduler's
GcFreezer does, so that a full collection does not count as the snapshot's pause.
Not part of the test suite: no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.raft.disk import DiskStorage  # noqa: E402
from core.raft.driver import DriverConfig, RaftDriver  # noqa: E402
from core.raft.messages import Entry, HardState  # noqa: E402
from core.raft.ready import Ready  # noqa: E402
from core.storage import DataDirLock  # noqa: E402
from scheduler.jobs import Job  # noqa: E402
from scheduler.runs import SUCCEEDED, RunRecord  # noqa: E402
from scheduler.state import SchedulerState  # noqa: E402
from tests.conftest import find_free_port  # noqa: E402

PROBE_S = 0.001


def build_state(jobs: int, records: int) -> SchedulerState:
    """`jobs` jobs, each with `records` finished runs, as a long-running cluster has."""
    state = SchedulerState()
    for j in range(jobs):
        job = Job(f"job-{j:05d}", "@every 1s", f"echo run {j} of the benchmark",
                  history=records, created_ms=1_700_000_000_000)
        state.jobs[job.name] = job
        slots = [job.created_ms + 1000 * (k + 1) for k in range(records)]
        state.runs[job.name] = {
            r.run_id: r for r in (
                RunRecord(job.name, slot, SUCCEEDED, fired_ms=slot, started_ms=slot + 3,
                          finished_ms=slot + 40, worker=f"worker-{k % 8}", exit_code=0)
                for k, slot in enumerate(slots))}
        state.handled[job.name] = slots[-1]
    state.workers = {f"worker-{k}": 1_700_000_100_000 for k in range(8)}
    return state


def best(run: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def steps(state: SchedulerState, args: argparse.Namespace) -> list[tuple[str, float]]:
    """Seconds of each step of one snapshot, taken apart."""
    blob = state.snapshot()
    wrapped = msgpack.packb([1, {1: ["127.0.0.1", 7000]}, blob])
    out = [("capture (off-loop hook, on the loop)", best(state.capture_snapshot, args.repeat)),
           ("encode: snapshot()", best(state.snapshot, args.repeat)),
           ("wrap with the address book", best(
               lambda: msgpack.packb([1, {1: ["127.0.0.1", 7000]}, blob]), args.repeat))]
    with tempfile.TemporaryDirectory() as tmp:
        lock = DataDirLock.acquire(Path(tmp))
        storage = DiskStorage.open(tmp)
        data = b"x" * args.entry_bytes
        last = args.log_entries
        storage.persist(Ready(hard_state=HardState(1, 1, last),
                              entries=tuple(Entry(i, 1, data=data) for i in range(1, last + 1)),
                              must_sync=True))
        start = time.perf_counter()
        storage.create_snapshot(last, (1,), wrapped)
        out.append(("DiskStorage.create_snapshot", time.perf_counter() - start))
        start = time.perf_counter()
        storage.compact(last - args.margin)
        out.append(("DiskStorage.compact (log rewrite)", time.perf_counter() - start))
        storage.close()
        lock.release()
    return out


class Machine:
    """The state as a driver's state machine: entries are no-ops, snapshots are real."""

    def __init__(self, state: SchedulerState, off_loop: bool) -> None:
        self.state = state
        self.snapshot = state.capture_snapshot if off_loop else state.snapshot

    def apply(self, entries: Sequence[tuple[int, bytes]]) -> None:
        return None

    def restore(self, blob: bytes) -> None:
        self.state.restore(blob)


async def probe(lags: list[float], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        start = loop.time()
        await asyncio.sleep(PROBE_S)
        lags.append(loop.time() - start - PROBE_S)


async def loop_pause(state: SchedulerState, off_loop: bool | None,
                     args: argparse.Namespace) -> float:
    """The longest the loop stalled while a one-node driver took `args.snapshots` snapshots
    (None: took none, while applying as many entries)."""
    machine = Machine(state, bool(off_loop))
    with tempfile.TemporaryDirectory() as tmp:
        listen = ("127.0.0.1", find_free_port("127.0.0.1"))
        every = 0 if off_loop is None else args.every
        config = DriverConfig(node_id=1, data_dir=Path(tmp), listen=listen, founders=(1,),
                              snapshot_every=every, compaction_margin=args.margin)
        driver = RaftDriver(config, machine.apply, machine.snapshot, machine.restore)
        await driver.start()
        while driver.status()["role"] != "leader":
            await asyncio.sleep(0.01)
        lags: list[float] = []
        stop = asyncio.Event()
        task = asyncio.create_task(probe(lags, stop))
        data = b"x" * args.entry_bytes
        want = args.snapshots * args.every
        while (driver.stats["snapshots"] < args.snapshots if every
               else driver.applied < want):
            await asyncio.gather(*(driver.propose(data) for _ in range(50)))
        stop.set()
        await task
        await driver.stop()
    return max(lags)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--records", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--every", type=int, default=500, help="snapshot_every of the driver")
    parser.add_argument("--margin", type=int, default=1000, help="compaction_margin")
    parser.add_argument("--snapshots", type=int, default=3, help="per loop-pause run")
    parser.add_argument("--log-entries", type=int, default=5000)
    parser.add_argument("--entry-bytes", type=int, default=200)
    args = parser.parse_args()
    state = build_state(args.jobs, args.records)
    gc.collect()
    gc.freeze()
    print(f"state: {args.jobs} jobs x {args.records} run records, "
          f"snapshot {len(state.snapshot()):,} bytes")
    for name, seconds in steps(state, args):
        print(f"  {name:40s} {seconds * 1000:8.1f} ms")
    on = asyncio.run(loop_pause(state, False, args))
    off = asyncio.run(loop_pause(state, True, args))
    floor = asyncio.run(loop_pause(state, None, args))
    print(f"longest loop pause over {args.snapshots} snapshots (probe sleeps "
          f"{PROBE_S * 1000:.0f} ms):")
    print(f"  on the loop (snapshot -> bytes)         {on * 1000:8.1f} ms")
    print(f"  off the loop (capture_snapshot)         {off * 1000:8.1f} ms")
    print(f"  no snapshot (the noise floor)           {floor * 1000:8.1f} ms")
    print(f"  ratio on/off                            {on / off:8.1f}x")


if __name__ == "__main__":
    main()
