"""Snapshots encoded off the event loop: the scheduler state's capture, then the driver.

The scheduler part needs no sockets: a captured view encodes to the bytes `snapshot()` gave
at capture time, however the state moves on meanwhile (in another thread, too). The driver
part runs a real one-node RaftDriver on 127.0.0.1 with a data directory, and a state
machine whose encoder waits on a gate the test opens: so entries apply while a snapshot
encodes, a leader's snapshot arrives while one encodes, and the driver stops while one
encodes, deterministically. Timeouts only detect hangs (HANG_S).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis

from core.raft.driver import DriverConfig, RaftDriver
from core.raft.driver_types import SNAPSHOT_FORMAT
from core.raft.messages import Snapshot, SnapshotRequest
from core.storage import DataDirLock, DataDirLockedError
from scheduler import state as S
from scheduler.jobs import Job, parse_job_add
from scheduler.runs import RUN_FIELDS
from scheduler.state import SchedulerState
from tests.conftest import find_free_port
from tests.procs import Daemon
from tests.scheduler_drill import FINAL
from tests.test_scheduler_state import T0, fire_due, make

HANG_S = 30.0
EVERY = 20  # snapshot_every of the drivers here


# -- the scheduler state's capture -------------------------------------------------------------

def busy_state() -> SchedulerState:
    state, _ = make("MISFIRE", "ALL", "HISTORY", "50", "TARGET", "ALL")
    state.apply_entry(S.encode_add(_job("k")))
    for k in range(1, 40):
        fire_due(state, "j", T0 + k * 1000)
    state.apply_entry(S.encode_claim("w1", [], T0 + 3500))
    state.apply_entry(S.encode_member(2, "127.0.0.3:7000"))
    return state


def _job(name: str) -> Job:
    return parse_job_add([name, "*/2 * * * * *", "echo hi"], T0)


def one_packb(state: SchedulerState) -> bytes:
    """The snapshot format as a single msgpack call over the live state (the reference)."""
    return msgpack.packb({
        "jobs": [job.to_dict() for job in state.jobs.values()],
        "handled": state.handled,
        "missed": state.missed,
        "run_fields": RUN_FIELDS,
        "run_rows": {n: [r.to_row() for r in runs.values()] for n, runs in state.runs.items()},
        "workers": state.workers,
        "clients": {str(k): v for k, v in state.clients.items()},
        "adverts": {w: a.to_wire() for w, a in state.adverts.items()},
        "unanchored": sorted(state.unanchored),
    })


def test_the_encoder_writes_the_bytes_of_one_packb_and_they_restore() -> None:
    state = busy_state()
    blob = state.capture_snapshot()()
    assert blob == one_packb(state) == state.snapshot()
    copy = SchedulerState()
    copy.restore(blob)
    assert copy.snapshot() == blob


def test_a_captured_view_ignores_what_applies_after_it_even_from_another_thread() -> None:
    state = busy_state()
    before = state.snapshot()
    encode = state.capture_snapshot()
    encoded: list[bytes] = []
    thread = threading.Thread(target=lambda: encoded.append(encode()))
    thread.start()  # encodes while this thread applies more entries
    for k in range(40, 120):
        fire_due(state, "j", T0 + k * 1000)
    state.apply_entry(S.encode_add(_job("late")))
    state.apply_entry(S.encode_name(S.OP_DEL, "k", T0))
    thread.join(HANG_S)
    assert encoded == [before] != [state.snapshot()]
    restored = SchedulerState()
    restored.restore(encoded[0])
    assert restored.snapshot() == before


# -- the driver --------------------------------------------------------------------------------

class GatedMachine:
    """A list of applied commands. Its snapshot hook captures the list and returns an
    encoder that waits for `gate` (open unless a test closes it)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.items: list[bytes] = []
        self.captures = 0
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # an encoder is running
        self.lock_held: list[bool] = []  # per encoder: was the data directory locked at its end

    def apply(self, entries: Sequence[tuple[int, bytes]]) -> None:
        self.items.extend(data for _, data in entries)

    def snapshot(self) -> Callable[[], bytes]:
        self.captures += 1
        view = list(self.items)

        def encode() -> bytes:
            self.entered.set()
            assert self.gate.wait(HANG_S), "hang: the gate never opened"
            self.lock_held.append(_locked(self.data_dir))
            return msgpack.packb(view)
        return encode

    def restore(self, blob: bytes) -> None:
        self.items = list(msgpack.unpackb(blob))


def _locked(data_dir: Path) -> bool:
    try:
        DataDirLock.acquire(data_dir).release()
    except DataDirLockedError:
        return True
    return False


def driver_for(machine: GatedMachine, listen: tuple[str, int]) -> RaftDriver:
    config = DriverConfig(node_id=1, data_dir=machine.data_dir, listen=listen, founders=(1,),
                          tick_s=0.01, snapshot_every=EVERY, compaction_margin=5)
    return RaftDriver(config, machine.apply, machine.snapshot, machine.restore)


async def until(predicate: Callable[[], Any], what: str) -> None:
    try:
        async with asyncio.timeout(HANG_S):
            while not predicate():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"hang: still waiting for {what}") from None


async def started(machine: GatedMachine, listen: tuple[str, int]) -> RaftDriver:
    driver = driver_for(machine, listen)
    await driver.start()
    await until(lambda: driver.status()["role"] == "leader", "leadership")
    return driver


async def propose(driver: RaftDriver, prefix: str, count: int) -> list[bytes]:
    items = [f"{prefix}{k}".encode() for k in range(count)]
    for item in items:
        await driver.propose(item)
    return items


async def encoding(machine: GatedMachine) -> None:
    assert await asyncio.to_thread(machine.entered.wait, HANG_S), "hang: no snapshot began"


async def held_in_encoding(
        tmp_path: Path) -> tuple[tuple[str, int], GatedMachine, RaftDriver, list[bytes]]:
    """A one-node driver on a fresh data directory whose first snapshot is encoding, held at
    the machine's gate; (its address, the machine, the driver, the items proposed)."""
    listen = ("127.0.0.1", find_free_port("127.0.0.1"))
    machine = GatedMachine(tmp_path)
    driver = await started(machine, listen)
    machine.gate.clear()
    acked = await propose(driver, "a", EVERY)
    await encoding(machine)
    return listen, machine, driver, acked


def run(main: Callable[[], Any]) -> None:
    asyncio.run(asyncio.wait_for(main(), HANG_S * 3))


def test_entries_applied_while_a_snapshot_encodes_survive_a_restart(tmp_path: Path) -> None:
    async def main() -> None:
        listen, machine, driver, acked = await held_in_encoding(tmp_path)
        acked += await propose(driver, "b", 3 * EVERY)  # applied while it encodes
        assert machine.items == acked and machine.captures == 1  # one in flight at most
        assert driver.stats["snapshots"] == 0
        machine.gate.set()
        await until(lambda: driver.stats["snapshots"] >= 1, "the snapshot")
        status = driver.status()
        assert 0 < status["snapshot_index"] < status["applied"]
        assert status["first_index"] > 1  # compacted
        acked += await propose(driver, "c", 3)  # the next Ready takes the next snapshot
        await until(lambda: driver.stats["snapshots"] >= 2, "the next snapshot")
        assert machine.captures == 2
        await driver.stop()

        again = GatedMachine(tmp_path)
        driver = await started(again, listen)
        assert driver.status()["snapshot_index"] > 0
        await until(lambda: again.items == acked, "the replay after the snapshot")
        await driver.stop()

    run(main)


def test_stop_waits_for_the_snapshot_encoding(tmp_path: Path) -> None:
    async def main() -> None:
        listen, machine, driver, acked = await held_in_encoding(tmp_path)
        stopping = asyncio.create_task(driver.stop())
        # whatever the time given, stop cannot finish while the encoder is held
        await asyncio.wait([stopping], timeout=0.5)
        assert not stopping.done()
        machine.gate.set()
        await stopping
        assert machine.lock_held == [True]  # the directory stayed locked until it was done

        again = GatedMachine(tmp_path)
        driver = await started(again, listen)
        await until(lambda: again.items == acked, "the state after the restart")
        await driver.stop()

    run(main)


def test_a_leaders_snapshot_arriving_while_one_encodes_wins(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The install waits for the encoding, which then writes nothing: the older snapshot
    cannot replace the leader's, on disk or in memory, nor fail the driver."""
    async def main() -> None:
        listen, machine, driver, _ = await held_in_encoding(tmp_path)
        term = driver.status()["term"] + 1
        book = {1: list(listen), 2: ["127.0.0.1", find_free_port("127.0.0.1")]}
        data = msgpack.packb([SNAPSHOT_FORMAT, book, msgpack.packb([b"installed"])])
        install = SnapshotRequest(frm=2, to=1, term=term,
                                  snapshot=Snapshot(1000, term, (1, 2), data))
        driver.on_message(2, install.to_wire())  # node 2 now leads, far ahead
        await asyncio.sleep(0)
        machine.gate.set()
        await until(lambda: driver.applied >= 1000, "the install")
        await until(lambda: machine.lock_held, "the end of the encoding")
        assert machine.items == [b"installed"]
        status = driver.status()
        assert status["snapshot_index"] == 1000 and status["snapshots"] == 0
        assert status["leader"] == 2
        await driver.stop()
        await driver.wait()  # raises the error it stopped on, if any
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

        again = GatedMachine(tmp_path)
        driver = driver_for(again, listen)
        await driver.start()
        assert driver.status()["snapshot_index"] == 1000 and again.items == [b"installed"]
        await driver.stop()

    run(main)


# -- a real scheduler process ------------------------------------------------------------------

def test_a_scheduler_killed_after_snapshots_restarts_with_the_same_history(
        tmp_path: Path) -> None:
    """One node taking a snapshot every 20 entries while a job fires and 60 more are added;
    SIGKILL, restart on the data directory: the same jobs and the same run history. A shell
    worker takes the runs (without one, a job waits and never fires)."""
    host = "127.0.0.1"
    port, raft_port = find_free_port(host), find_free_port(host)
    argv = ["scheduler", "serve", "--id", "1", "--listen", f"{host}:{port}",
            "--peer-listen", f"{host}:{raft_port}", "--peers", f"1={host}:{raft_port}",
            "--data-dir", str(tmp_path / "node"), "--snapshot-every", "20"]
    node = Daemon(argv, host, port, tmp_path / "node.log")
    worker = Daemon(["scheduler", "worker", "--scheduler", f"{host}:{port}", "--id", "w1"],
                    host, 0, tmp_path / "worker.log")
    node.start()
    worker.start(wait=False)
    try:
        client = redis.Redis(host=host, port=port, socket_timeout=HANG_S,
                             decode_responses=True)
        assert client.execute_command("JOB.ADD", "tick", "@every 1s", "true") == "OK"
        for k in range(60):  # entries applied around the snapshots
            assert client.execute_command("JOB.ADD", f"j{k}", "@daily", "true") == "OK"
        wait_for(lambda: len(client.execute_command("JOB.HISTORY", "tick", "1000")) >= 3,
                 "fires of tick")
        assert client.execute_command("JOB.PAUSE", "tick") == "OK"
        # a run the worker still executes would end after the restart: wait for the last
        wait_for(lambda: _settled(client.execute_command("JOB.HISTORY", "tick", "1000")),
                 "the last run of tick to end")
        history = client.execute_command("JOB.HISTORY", "tick", "1000")
        jobs = sorted(client.execute_command("JOB.LIST"))
        wait_for(lambda: node.log().count("took a snapshot") >= 3, "three snapshots")
        node.kill()
        node.start()
        client = redis.Redis(host=host, port=port, socket_timeout=HANG_S,
                             decode_responses=True)
        wait_for(lambda: _answers(client), "the restarted node")
        assert "restored the snapshot" in node.log()
        assert sorted(client.execute_command("JOB.LIST")) == jobs
        assert client.execute_command("JOB.HISTORY", "tick", "1000") == history
    finally:
        for daemon in (worker, node):
            if daemon.proc is not None:
                daemon.stop()


def _settled(runs: list[Any]) -> bool:
    """Every run in a JOB.HISTORY reply has ended (RESP2 rows are flat field lists)."""
    def state(run: Any) -> Any:
        return run.get("state") if isinstance(run, dict) else dict(
            zip(run[::2], run[1::2], strict=True)).get("state")

    return all(state(run) in FINAL for run in runs)


def _answers(client: redis.Redis) -> bool:
    try:
        client.execute_command("JOB.LIST")
    except redis.ResponseError as exc:  # TRYAGAIN until it leads again
        if str(exc).startswith("TRYAGAIN"):
            return False
        raise
    return True


def wait_for(predicate: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + HANG_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"hang: still waiting for {what}")
        time.sleep(0.05)
