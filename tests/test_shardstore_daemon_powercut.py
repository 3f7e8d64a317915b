"""Power cuts of a whole single-node shardstore daemon, for each fsync mode.

Strategy: one `ShardNode` (1 shard, 1 replica) runs in this test's event loop. Its shard
engines open on the engine's power-cut file layer (shardstore/engine/powercut.py, through
the node's `engine_class` hook: `PowerCutEngine` below), which keeps unsynced appends in
memory. The Raft logs (core/storage.RecordLog on real files) are cut by `FsyncLedger`: it
wraps `os.fsync` and notes, per file, its size when an fsync began; at the cut every
`raft.log` is truncated to that size (the bytes no fsync covered are gone, as after a
power cut). After the cut every fsync fails with EIO, so nothing can become durable later.

A client writes keys one at a time (`SET {w}:<i> <i>`: one hash tag, so one MGET reads them
back), each acknowledged one noted with its order. The node is cut while that client
writes, stopped, and a new node is started on the same data directory with the ordinary
engine. Then:
- `always`: every write acknowledged before the cut reads back;
- `everysec`: the writes acknowledged before the last sync of the shard's log (the
  ledger's mark at its start) read back: nothing acknowledged before the last sync is
  lost; the survivors are a prefix of the acknowledged order (only a tail is lost), at
  most the one write in flight beyond it;
- both: the restarted node accepts and keeps new writes.

The engine's sync and the shard log's sync run on separate timers (and the kernel may write
an engine's pages back early), so a cut can leave the engine ahead of the log (reached on
purpose in `engine_synced_past_the_log`). The restarted node answered new writes with nil
and kept none of them, until the shard's group learned to start its log after what its
engine applied (core/raft/group.py, GroupConfig.machine_applied).
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aredis

from core.cluster_options import ClusterSettings
from shardstore import commands
from shardstore.engine import Engine
from shardstore.engine.powercut import PowerCutFiles
from shardstore.server import NodeOptions, ShardNode
from tests.conftest import find_free_port

HOST = "127.0.0.1"
READY_S = 30.0
BEFORE_SYNC_WRITES = 60  # acknowledged writes before the sync the everysec check waits for
AFTER_SYNC_WRITES = 40  # written (at least) after it, before the cut
SYNCS_AWAITED = 2  # log fsyncs awaited after the first phase (the second surely covers it)
RAFT_LOG = "raft.log"
SHARD_GROUP_DIR = "groups"


def key(i: int) -> str:
    """The i-th write's key: one hash tag, so one MGET reads every one back."""
    return f"{{w}}:{i}"


class LockedPowerCutFiles(PowerCutFiles):
    """The power-cut layer with one lock around every call: a daemon reaches its engines
    from the loop and from worker threads, and the layer itself is not thread-safe."""

    def __init__(self) -> None:
        super().__init__()
        self._mutex = threading.RLock()

    def __getattribute__(self, name: str) -> Any:
        attribute = super().__getattribute__(name)
        if name.startswith("_") or not callable(attribute):
            return attribute
        mutex = super().__getattribute__("_mutex")

        def locked(*args: Any, **kwargs: Any) -> Any:
            with mutex:
                return attribute(*args, **kwargs)

        return locked


def power_cut_engine(files: PowerCutFiles) -> type:
    """An engine class for ShardNode's `engine_class` hook: Engine on `files`, with
    compaction only on request (the layer wants no background writer of its own)."""

    class PowerCutEngine:
        @staticmethod
        def open(directory: Path, **options: Any) -> Engine:
            return Engine.open(directory, file_layer=files, background_compaction=False,
                               **options)

        @staticmethod
        def load(directory: Path, pieces: Iterable[bytes], index: int,
                 **options: Any) -> Engine:
            return Engine.load(directory, pieces, index, file_layer=files,
                               background_compaction=False, **options)

    return PowerCutEngine


class FsyncLedger:
    """Wraps os.fsync (the `ledger` fixture installs it): notes each file's size when an
    fsync of it began, and `mark()` taken just before (the test's count of acknowledged
    writes: every one of them was appended by then), per file, for the last fsync that
    completed; counts fsyncs per path; after `cut()` fails every fsync with EIO."""

    def __init__(self, real: Callable[[int], None]) -> None:
        self.real = real
        self.synced: dict[str, int] = {}
        self.marks: dict[str, int] = {}
        self.counts: dict[str, int] = {}
        self.mark: Callable[[], int] = lambda: 0
        self.is_cut = False
        self.lock = threading.Lock()

    def fsync(self, fd: int) -> None:
        if self.is_cut:
            raise OSError(errno.EIO, "fsync after the power cut (test)")
        mark = self.mark()  # before the size: what it counts was appended by then
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
            size = os.fstat(fd).st_size
        except OSError:
            path, size = "", 0
        self.real(fd)
        with self.lock:
            if path:
                self.synced[path] = size
                self.marks[path] = mark
                self.counts[path] = self.counts.get(path, 0) + 1

    def count(self, path: Path) -> int:
        with self.lock:
            return self.counts.get(str(path), 0)

    def cut(self, data_dir: Path, synced: dict[str, int] | None = None) -> None:
        """Fail later fsyncs; each Raft log keeps only what an fsync covered (by `synced`,
        default the ledger's). Call it once the node has stopped (set `is_cut` at the
        instant of the cut)."""
        self.is_cut = True
        synced = self.synced if synced is None else synced
        for log in data_dir.rglob(RAFT_LOG):
            keep = synced.get(str(log), 0)
            if log.stat().st_size > keep:
                os.truncate(log, keep)


def settings_for(data_dir: Path, port: int, raft_port: int) -> ClusterSettings:
    raft = {1: (HOST, raft_port)}
    return ClusterSettings(node_id=1, listen=(HOST, port), peer_listen=raft[1], peers=raft,
                           founders=(1,), data_dir=data_dir, secret=None, password=None,
                           tick_s=0.02, election_tick=15)


async def started(settings: ClusterSettings, fsync: str, engine_class: Any) -> ShardNode:
    node = ShardNode(settings, NodeOptions(1, 1, fsync=fsync, timeout_s=5),
                     layer=commands, engine_class=engine_class)
    await node.start()
    deadline = time.monotonic() + READY_S
    while not (node.view().complete and node.machines and node.led_shards()):
        assert time.monotonic() < deadline, "the node never became ready"
        await asyncio.sleep(0.05)
    return node


class Writer:
    """Writes {w}:0, {w}:1, ... one at a time; `acked` lists the acknowledged numbers in order
    and `sent` the highest number sent."""

    def __init__(self, client: aredis.Redis) -> None:
        self.client = client
        self.acked: list[int] = []
        self.sent = -1
        self.stop = asyncio.Event()

    async def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            self.sent = i
            try:
                reply = await self.client.set(key(i), str(i))
            except (redis.RedisError, OSError):
                return  # the node is gone: the outcome of {w}:<i> is unknown
            if reply:
                self.acked.append(i)
            i += 1

    async def until(self, count: int) -> None:
        deadline = time.monotonic() + READY_S
        while len(self.acked) < count:
            assert time.monotonic() < deadline, f"only {len(self.acked)} writes acknowledged"
            await asyncio.sleep(0.01)


async def until_synced(ledger: FsyncLedger, log: Path) -> None:
    """Wait for SYNCS_AWAITED more fsyncs of `log` (everysec: the host's once-a-second
    sync; always: every write)."""
    wanted = ledger.count(log) + SYNCS_AWAITED
    deadline = time.monotonic() + READY_S
    while ledger.count(log) < wanted:
        assert time.monotonic() < deadline, f"no fsync of {log}"
        await asyncio.sleep(0.05)


async def cut_under_writes(tmp: Path, fsync: str, ledger: FsyncLedger
                           ) -> tuple[list[int], list[int], int, ClusterSettings]:
    """Run, write, cut while writing, stop. Returns (acked before the cut, acked before
    the last sync of the shard's log that completed, the highest number sent, the
    settings)."""
    settings = settings_for(tmp / "n1", find_free_port(HOST), find_free_port(HOST))
    files = LockedPowerCutFiles()
    node = await started(settings, fsync, power_cut_engine(files))
    client = aredis.Redis(host=HOST, port=settings.listen[1], socket_timeout=5)
    writer = Writer(client)
    ledger.mark = lambda: len(writer.acked)
    task = asyncio.create_task(writer.run())
    try:
        shard = node.led_shards()[0]
        log = settings.data_dir / SHARD_GROUP_DIR / str(shard.group) / RAFT_LOG
        await writer.until(BEFORE_SYNC_WRITES)
        phase_one = len(writer.acked)
        await until_synced(ledger, log)
        await writer.until(len(writer.acked) + AFTER_SYNC_WRITES)
        ledger.is_cut = True  # no fsync succeeds from here on
        files.power_cut()
        acked = list(writer.acked)  # acknowledged before the power went
        writer.stop.set()
    finally:
        await stop_quietly(node, client, task)
    ledger.cut(settings.data_dir)  # once stopped: nothing appends behind the truncation
    synced = ledger.marks[str(log)]  # acknowledged before the last sync of the shard's log
    assert synced >= phase_one, "the sync awaited did not cover the first writes"
    return acked, acked[:synced], writer.sent, settings


async def stop_quietly(node: ShardNode, client: aredis.Redis, task: asyncio.Task[None]
                       ) -> None:
    """Stop what a cut node left: its writes fail, so its stop may raise; the lock goes."""
    try:
        await asyncio.wait_for(node.stop(), READY_S)
    except Exception:  # noqa: BLE001 - a node without power fails to flush, as it should
        lock = getattr(node.host, "_lock", None)
        if lock is not None:
            lock.release()
    task.cancel()
    failed = asyncio.ensure_future(node.wait_failed())
    await asyncio.gather(task, asyncio.wait_for(failed, 1.0), return_exceptions=True)
    await client.aclose()


async def survivors(settings: ClusterSettings, fsync: str, highest: int) -> list[int]:
    """Restart on the same directory with the ordinary engine; the numbers that read back.
    Also checks that the restarted node takes and keeps a new write."""
    node = await started(settings, fsync, Engine)
    client = aredis.Redis(host=HOST, port=settings.listen[1], socket_timeout=10)
    try:
        values = await client.mget([key(i) for i in range(highest + 1)])
        found = [i for i, value in enumerate(values) if value == str(i).encode()]
        assert await client.set("after:restart", "yes")
        assert await client.get("after:restart") == b"yes"
        assert await client.get(key(highest + 1)) is None  # never sent
        return found
    finally:
        await client.aclose()
        await node.stop()


@pytest.fixture
def ledger(monkeypatch: pytest.MonkeyPatch) -> FsyncLedger:
    book = FsyncLedger(os.fsync)
    monkeypatch.setattr(os, "fsync", book.fsync)
    return book


def run_mode(tmp: Path, fsync: str, ledger: FsyncLedger) -> tuple[list[int], list[int], int,
                                                                    list[int]]:
    async def main() -> tuple[list[int], list[int], int, list[int]]:
        acked, before_sync, highest, settings = await cut_under_writes(tmp, fsync, ledger)
        ledger.is_cut = False  # the power is back
        found = await survivors(settings, fsync, highest)
        return acked, before_sync, highest, found

    return asyncio.run(main())


def test_always_loses_nothing_acknowledged(tmp_path: Path, ledger: FsyncLedger) -> None:
    acked, _, highest, found = run_mode(tmp_path, "always", ledger)
    missing = sorted(set(acked) - set(found))
    assert not missing, f"acknowledged writes lost by the cut: {missing[:20]}"
    assert found == list(range(len(found))), "a hole in the writes that survived"
    assert len(found) <= highest + 1


def test_everysec_loses_at_most_the_tail_since_the_last_sync(tmp_path: Path,
                                                             ledger: FsyncLedger) -> None:
    acked, before_sync, highest, found = run_mode(tmp_path, "everysec", ledger)
    missing = sorted(set(before_sync) - set(found))
    assert not missing, f"writes acknowledged before a sync lost: {missing[:20]}"
    assert found == list(range(len(found))), "a hole in the writes that survived"
    assert len(found) <= highest + 1
    assert len(acked) >= len(before_sync) + AFTER_SYNC_WRITES


ENGINE_AHEAD_WRITES = 20
ENGINE_AHEAD_TRIES = 5


async def until_covered(ledger: FsyncLedger, log: Path, acked: int) -> None:
    """Wait for an fsync of `log` that began after `acked` writes were acknowledged."""
    deadline = time.monotonic() + READY_S
    while ledger.marks.get(str(log), 0) < acked:
        assert time.monotonic() < deadline, f"no fsync of {log} covers {acked} writes"
        await asyncio.sleep(0.05)


async def engine_synced_past_the_log(tmp: Path, ledger: FsyncLedger) -> ClusterSettings:
    """everysec: writes the log's sync covers, more writes, the engine's own sync (its
    once-a-second loop's), and the power cut before the log's next sync. Retried when the
    log's timer fires in between (then the state sought was not reached)."""
    for attempt in range(ENGINE_AHEAD_TRIES):
        settings = settings_for(tmp / f"n{attempt}", find_free_port(HOST), find_free_port(HOST))
        files = LockedPowerCutFiles()
        node = await started(settings, "everysec", power_cut_engine(files))
        client = aredis.Redis(host=HOST, port=settings.listen[1], socket_timeout=5)
        shard = node.led_shards()[0]
        log = settings.data_dir / SHARD_GROUP_DIR / str(shard.group) / RAFT_LOG
        acked = [0]
        ledger.mark = lambda acked=acked: acked[0]
        try:
            for i in range(ENGINE_AHEAD_WRITES):
                assert await client.set(key(i), str(i))
                acked[0] += 1
            await until_covered(ledger, log, ENGINE_AHEAD_WRITES)
            synced, syncs = dict(ledger.synced), ledger.count(log)
            for i in range(ENGINE_AHEAD_WRITES, 2 * ENGINE_AHEAD_WRITES):
                assert await client.set(key(i), str(i))
            await asyncio.to_thread(node.machines[shard.shard_id].engine.sync)
            ledger.is_cut = True
            files.power_cut()
            reached = ledger.count(log) == syncs
        finally:
            await stop_quietly(node, client, asyncio.create_task(asyncio.sleep(0)))
        ledger.cut(settings.data_dir, synced)
        ledger.is_cut = False
        if reached:
            return settings
    pytest.skip("the log's once-a-second sync kept landing between the two syncs")


def test_everysec_power_cut_with_the_engine_ahead_of_the_log(
        tmp_path: Path, ledger: FsyncLedger) -> None:
    async def main() -> tuple[Any, Any, list[Any]]:
        settings = await engine_synced_past_the_log(tmp_path, ledger)
        node = await started(settings, "everysec", Engine)
        client = aredis.Redis(host=HOST, port=settings.listen[1], socket_timeout=10)
        try:
            reply = await client.set("after:restart", "yes")
            return reply, await client.get("after:restart"), await client.mget(
                [key(i) for i in range(2 * ENGINE_AHEAD_WRITES)])
        finally:
            await client.aclose()
            await node.stop()

    reply, stored, older = asyncio.run(main())
    assert older[:ENGINE_AHEAD_WRITES] == [str(i).encode() for i in range(ENGINE_AHEAD_WRITES)]
    assert reply is True and stored == b"yes", (reply, stored)
