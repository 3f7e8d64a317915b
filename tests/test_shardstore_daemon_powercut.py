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
- `everysec`: the writes acknowledged before a sync of the shard's log that began after
  them read back (nothing acknowledged before the last sync is lost); the survivors are a
  prefix of the acknowledged order (only a tail is lost), at most the one write in flight
  beyond it;
- both: the restarted node accepts and keeps new writes.
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
    """Wraps os.fsync (installed by `install`): notes each file's size when an fsync of it
    begins, counts fsyncs per path, and after `cut()` fails every fsync with EIO."""

    def __init__(self, real: Callable[[int], None]) -> None:
        self.real = real
        self.synced: dict[str, int] = {}
        self.counts: dict[str, int] = {}
        self.is_cut = False
        self.lock = threading.Lock()

    def fsync(self, fd: int) -> None:
        if self.is_cut:
            raise OSError(errno.EIO, "fsync after the power cut (test)")
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
            size = os.fstat(fd).st_size
        except OSError:
            path, size = "", 0
        self.real(fd)
        with self.lock:
            if path:
                self.synced[path] = size
                self.counts[path] = self.counts.get(path, 0) + 1

    def count(self, path: Path) -> int:
        with self.lock:
            return self.counts.get(str(path), 0)

    def cut(self, data_dir: Path) -> None:
        """Fail later fsyncs; each Raft log keeps only what an fsync covered."""
        self.is_cut = True
        for log in data_dir.rglob(RAFT_LOG):
            keep = self.synced.get(str(log), 0)
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
    """Run, write, cut while writing, stop. Returns (acked before the cut, acked before a
    covering sync, the highest number sent, the settings)."""
    settings = settings_for(tmp / "n1", find_free_port(HOST), find_free_port(HOST))
    files = LockedPowerCutFiles()
    node = await started(settings, fsync, power_cut_engine(files))
    client = aredis.Redis(host=HOST, port=settings.listen[1], socket_timeout=5)
    writer = Writer(client)
    task = asyncio.create_task(writer.run())
    try:
        shard = node.led_shards()[0]
        log = settings.data_dir / SHARD_GROUP_DIR / str(shard.group) / RAFT_LOG
        await writer.until(BEFORE_SYNC_WRITES)
        phase_one = list(writer.acked)
        await until_synced(ledger, log)
        await writer.until(len(writer.acked) + AFTER_SYNC_WRITES)
        ledger.cut(settings.data_dir)
        files.power_cut()
        acked = list(writer.acked)  # acknowledged before the power went
        writer.stop.set()
    finally:
        await stop_quietly(node, client, task)
    return acked, phase_one, writer.sent, settings


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
