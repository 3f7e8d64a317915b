"""The shardstore storage engine against a dict model, and its compaction, memory and snapshots.

The state machine drives puts, deletes, batches, reads, scans, reopening, compaction and
dump+load with keys of random sizes, and checks every read against a plain dict.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from core.storage import DataDirLock
from shardstore.engine import CorruptStore, Engine, EngineError, OsFiles, StorageFailed
from shardstore.engine.powercut import PowerCutFiles
from shardstore.engine.records import read_supersedes
from shardstore.engine.snapshot import decode_piece

SMALL_SEGMENT_BYTES = 600
Model = dict[bytes, tuple[bytes, int]]

keys = st.one_of(st.binary(max_size=2), st.sampled_from([b"", b"a", b"ab", b"b\x00"]),
                 st.binary(min_size=40, max_size=300))
values = st.binary(max_size=200)
expiries = st.sampled_from([0, 0, 1, 1_700_000_000_000, 2**63])
ops = st.tuples(keys, st.one_of(st.none(), values), expiries)


def apply_model(model: Model, batch: list[tuple[bytes, bytes | None, int]]) -> None:
    for key, value, expire in batch:
        if value is None:
            model.pop(key, None)
        else:
            model[key] = (value, expire)


def model_scan(model: Model, start: bytes, end: bytes | None,
               limit: int | None) -> list[tuple[bytes, bytes, int]]:
    rows = [(k, v, e) for k, (v, e) in sorted(model.items())
            if k >= start and (end is None or k < end)]
    return rows if limit is None else rows[:limit]


class EngineMachine(RuleBasedStateMachine):
    """The engine and a dict must agree after any sequence of operations."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="ss-engine-"))
        self.engine = self._open()
        self.model: Model = {}
        self.applied = 0

    def _open(self) -> Engine:
        return Engine.open(self.dir, fsync="no", max_segment_bytes=SMALL_SEGMENT_BYTES,
                           background_compaction=False)

    def teardown(self) -> None:
        self.engine.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(batch=st.lists(ops, max_size=6))
    def write(self, batch: list[tuple[bytes, bytes | None, int]]) -> None:
        self.applied += 1
        self.engine.write(batch, self.applied)
        apply_model(self.model, batch)

    @rule(key=keys, value=values)
    def put(self, key: bytes, value: bytes) -> None:
        self.engine.write([(key, value, 0)])
        apply_model(self.model, [(key, value, 0)])

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete_existing(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.model)))
        self.engine.write([(key, None, 0)])
        del self.model[key]

    @rule(key=keys)
    def get(self, key: bytes) -> None:
        assert self.engine.get(key) == self.model.get(key)

    @rule(start=keys, end=st.one_of(st.none(), keys), limit=st.one_of(st.none(), st.integers(0, 5)))
    def scan(self, start: bytes, end: bytes | None, limit: int | None) -> None:
        assert self.engine.scan(start, end, limit) == model_scan(self.model, start, end, limit)

    @rule(cursor=keys, limit=st.integers(1, 4))
    def keys_after(self, cursor: bytes, limit: int) -> None:
        expected = [k for k in sorted(self.model) if k > cursor][:limit]
        assert self.engine.keys_after(cursor, limit) == expected

    @rule()
    def reopen(self) -> None:
        self.engine.close()
        self.engine = self._open()
        assert self.engine.applied_index == self.applied

    @rule()
    def compact(self) -> None:
        self.engine.compact()

    @rule(ratio=st.sampled_from([0.2, 0.5, 0.9]))
    def compact_the_deadest(self, ratio: float) -> None:
        self.engine.compact(ratio)

    @rule()
    def dump_and_load(self) -> None:
        pieces = list(self.engine.dump())
        self.engine.close()
        self.applied += 1
        self.engine = Engine.load(self.dir, pieces, self.applied, fsync="no",
                                  max_segment_bytes=SMALL_SEGMENT_BYTES,
                                  background_compaction=False)

    @invariant()
    def agrees(self) -> None:
        assert self.engine.count() == len(self.model)
        assert self.engine.applied_index == self.applied


TestEngineMachine = EngineMachine.TestCase
TestEngineMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow])


def test_full_contents_survive_reopen_compact_and_load(tmp_path: Path) -> None:
    engine = Engine.open(tmp_path, fsync="no", max_segment_bytes=SMALL_SEGMENT_BYTES,
                         background_compaction=False)
    model: Model = {}
    for i in range(300):
        batch = [(b"k%03d" % (i % 37), b"v%d" % i * (i % 7), i), (b"d%d" % (i % 5), None, 0)]
        engine.write(batch, i + 1)
        apply_model(model, batch)
    engine.compact()
    engine.close()
    engine = Engine.open(tmp_path, background_compaction=False)
    assert engine.scan() == model_scan(model, b"", None, None)
    assert engine.applied_index == 300
    engine.close()


# -- compaction --------------------------------------------------------------------------------


def disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.name != "CURRENT")


def test_compaction_reclaims_overwritten_and_deleted_space(tmp_path: Path) -> None:
    engine = Engine.open(tmp_path, fsync="no", max_segment_bytes=4096,
                         background_compaction=False)
    model: Model = {}
    for round_ in range(20):
        batch = [(b"key%02d" % k, bytes([round_]) * 100, 0) for k in range(30)]
        engine.write(batch)
        apply_model(model, batch)
    for k in range(0, 30, 2):
        engine.write([(b"key%02d" % k, None, 0)])
        apply_model(model, [(b"key%02d" % k, None, 0)])
    before = engine.stats
    on_disk = disk_bytes(tmp_path)
    engine.compact()
    after = engine.stats
    assert after["dead_bytes"] < before["dead_bytes"] // 10
    assert after["segments"] < before["segments"]
    assert after["compactions"] >= 1
    assert after["live_bytes"] == before["live_bytes"]
    assert disk_bytes(tmp_path) < on_disk // 5
    assert engine.scan() == model_scan(model, b"", None, None)
    engine.close()
    reopened = Engine.open(tmp_path, background_compaction=False)
    assert reopened.scan() == model_scan(model, b"", None, None)
    assert reopened.stats["dead_bytes"] == after["dead_bytes"]
    reopened.close()


def test_a_tombstone_outlives_the_put_it_hides(tmp_path: Path) -> None:
    engine = Engine.open(tmp_path, fsync="no", max_segment_bytes=1_000_000,
                         background_compaction=False)
    engine.write([(b"victim", b"old value", 0)] + [(b"live%d" % i, b"x" * 50, 0)
                                                   for i in range(20)])
    engine.seal_active()  # segment A: mostly live, holds the victim's put
    engine.write([(b"victim", None, 0)])
    for i in range(20):
        engine.write([(b"churn", b"y" * 50 + b"%d" % i, 0)])
    engine.compact(0.6)  # segment B only: mostly dead, holds the tombstone
    assert engine.stats["compactions"] == 1
    engine.close()
    reopened = Engine.open(tmp_path, background_compaction=False)
    assert reopened.get(b"victim") is None
    reopened.compact()  # now A and B's output go together: the tombstone may go
    assert reopened.get(b"victim") is None
    reopened.close()
    assert contents_of(tmp_path).get(b"victim") is None


def contents_of(directory: Path) -> dict[bytes, bytes]:
    engine = Engine.open(directory, background_compaction=False)
    try:
        return {k: v for k, v, _ in engine.scan()}
    finally:
        engine.close()


class HookedFiles(OsFiles):
    """The real file layer, running `hook` once just before the first rename (the moment a
    compaction has copied everything and is about to commit its output)."""

    def __init__(self) -> None:
        self.hook: Callable[[], None] | None = None

    def rename(self, src: Path, dst: Path) -> None:
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()
        super().rename(src, dst)


def test_a_write_racing_a_compaction_wins(tmp_path: Path) -> None:
    layer = HookedFiles()
    engine = Engine.open(tmp_path, file_layer=layer, max_segment_bytes=256,
                         background_compaction=False)
    for i in range(30):
        engine.write([(b"a", b"old-a-%d" % i, 0), (b"b", b"old-b", 0), (b"c", b"old-c", 0)])

    def race() -> None:
        engine.write([(b"a", b"new-a", 7), (b"b", None, 0)])

    layer.hook = race
    engine.compact()
    assert engine.stats["compactions"] >= 1
    assert layer.hook is None
    expected = [(b"a", b"new-a", 7), (b"c", b"old-c", 0)]
    assert engine.scan() == expected
    engine.close()
    reopened = Engine.open(tmp_path, background_compaction=False)
    assert reopened.scan() == expected
    reopened.compact()
    assert reopened.scan() == expected
    reopened.close()


def test_an_fsync_error_during_compaction_is_fatal(tmp_path: Path) -> None:
    layer = PowerCutFiles()
    engine = Engine.open(tmp_path, fsync="no", file_layer=layer, max_segment_bytes=256,
                         background_compaction=False)
    for i in range(30):
        engine.write([(b"k", b"v%d" % i, 0)])
    layer.fail_fsync = True
    with pytest.raises(StorageFailed):
        engine.compact()
    with pytest.raises(StorageFailed):
        engine.write([(b"k", b"after", 0)])
    assert engine.get(b"k") == (b"v29", 0)
    engine.close()


def test_background_compaction_races_writes_and_the_writes_win(tmp_path: Path) -> None:
    engine = Engine.open(tmp_path, fsync="no", max_segment_bytes=2048,
                         compact_min_dead_bytes=1, background_compaction=True)
    model: Model = {}
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                for key, value, _ in engine.scan(limit=50):
                    assert value[:len(key)] == key
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(3000):
        key = b"k%02d" % (i % 40)
        batch = [(key, key + b"-%d" % i * 3, 0)]
        engine.write(batch)
        apply_model(model, batch)
    stop.set()
    thread.join()
    assert not errors
    if engine.compactor is not None:
        engine.compactor.thread.join()
    assert engine.stats["compactions"] >= 1
    assert engine.scan() == model_scan(model, b"", None, None)
    engine.close()
    reopened = Engine.open(tmp_path, background_compaction=False)
    assert reopened.scan() == model_scan(model, b"", None, None)
    reopened.close()


# -- memory --------------------------------------------------------------------------------------


def test_values_stay_on_disk_and_the_keydir_holds_positions(tmp_path: Path) -> None:
    value_bytes = 64 * 1024
    n = 300  # about 19 MiB of values against a budget of 2 MiB of Python memory
    budget = 2 * 1024 * 1024
    tracemalloc.start()
    try:
        engine = Engine.open(tmp_path, fsync="no", max_segment_bytes=4 * 1024 * 1024,
                             background_compaction=False)
        base, _ = tracemalloc.get_traced_memory()
        for i in range(n):
            engine.write([(b"big%04d" % i, bytes([i % 256]) * value_bytes, 0)])
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held - base < budget
    for i in range(n):
        loc = engine.locate(b"big%04d" % i)
        assert loc is not None and all(isinstance(x, int) for x in loc)
    assert engine.get(b"big0007") == (bytes([7]) * value_bytes, 0)
    engine.close()


# -- snapshots -----------------------------------------------------------------------------------


def test_dump_is_a_frozen_view_while_writes_and_compaction_go_on(tmp_path: Path) -> None:
    engine = Engine.open(tmp_path, fsync="no", max_segment_bytes=1024,
                         background_compaction=False)
    for i in range(100):
        engine.write([(b"k%03d" % i, b"old-%d" % i, i)])
    before = engine.scan()
    reader = engine.dump()
    for i in range(100):
        engine.write([(b"k%03d" % i, None if i % 3 == 0 else b"new", 0)])
    engine.compact()
    pinned = {p.name for p in tmp_path.iterdir()}
    pieces = list(reader)  # exhausting it releases the pins; doomed segments go
    assert {p.name for p in tmp_path.iterdir()} < pinned
    target = tmp_path / "copy"
    target.mkdir()
    copy = Engine.load(target, pieces, 42)
    assert copy.scan() == before
    assert copy.applied_index == 42
    copy.close()
    engine.close()


def test_load_replaces_contents_and_a_crash_midway_keeps_the_old(tmp_path: Path) -> None:
    engine = Engine.open(tmp_path)
    engine.write([(b"old", b"1", 0)], 5)
    pieces = list(engine.dump())
    engine.write([(b"gone", b"2", 0)], 6)
    engine.close()

    def broken() -> object:
        yield pieces[0]
        raise RuntimeError("sender died")

    with pytest.raises(RuntimeError):
        Engine.load(tmp_path, broken(), 9)  # type: ignore[arg-type]
    engine = Engine.open(tmp_path)
    assert engine.scan() == [(b"gone", b"2", 0), (b"old", b"1", 0)]
    assert engine.applied_index == 6
    engine.close()
    engine = Engine.load(tmp_path, pieces, 9)
    assert engine.scan() == [(b"old", b"1", 0)]
    engine.close()
    engine = Engine.open(tmp_path)
    assert engine.scan() == [(b"old", b"1", 0)] and engine.applied_index == 9
    engine.close()


def test_a_damaged_snapshot_piece_is_refused(tmp_path: Path) -> None:
    engine = Engine.open(tmp_path)
    engine.write([(b"k", b"v" * 50, 0)])
    piece = bytearray(next(iter(engine.dump())))
    engine.close()
    piece[-3] ^= 0xFF
    with pytest.raises(CorruptStore):
        Engine.load(tmp_path, [bytes(piece)], 1)
    engine = Engine.open(tmp_path)
    assert engine.get(b"k") == (b"v" * 50, 0)
    engine.close()


# -- errors and ownership ------------------------------------------------------------------------


def test_an_fsync_error_is_fatal_and_reads_go_on(tmp_path: Path) -> None:
    layer = PowerCutFiles()
    engine = Engine.open(tmp_path, file_layer=layer)
    engine.write([(b"a", b"1", 0)])
    layer.fail_fsync = True
    with pytest.raises(StorageFailed):
        engine.write([(b"b", b"2", 0)])
    layer.fail_fsync = False
    with pytest.raises(StorageFailed):
        engine.write([(b"c", b"3", 0)])
    assert engine.get(b"a") == (b"1", 0)
    assert engine.get(b"b") is None
    assert engine.failed
    engine.close()


def test_the_directory_lock_is_the_callers(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Engine.open(tmp_path / "missing")
    with DataDirLock.acquire(tmp_path):
        engine = Engine.open(tmp_path)
        engine.write([(b"k", b"v", 0)])
        engine.close()
    engine = Engine.open(tmp_path)  # the engine takes no lock of its own
    assert engine.get(b"k") == (b"v", 0)
    engine.close()
    with pytest.raises(EngineError):
        engine.write([(b"k", b"v", 0)])


def test_open_removes_only_its_own_leftovers(tmp_path: Path) -> None:
    engine = Engine.open(tmp_path)
    engine.write([(b"k", b"v", 0)])
    engine.close()
    (tmp_path / ".000000-0000000099.cmp.tmp").write_bytes(b"half a compaction")
    (tmp_path / "000007-0000000001.seg").write_bytes(b"an abandoned restore")
    (tmp_path / "raft.log.tmp").write_bytes(b"someone else's")
    engine = Engine.open(tmp_path)
    assert engine.scan() == [(b"k", b"v", 0)]
    engine.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000000-0000000001.seg",
                                                          "raft.log.tmp"]


class CrashOnUnlink(OsFiles):
    """The real file layer, except that the process "dies" at the first unlink."""

    def unlink(self, path: Path) -> None:
        raise KeyboardInterrupt(f"crash before removing {path}")


def test_a_crash_between_a_compactions_commit_and_its_cleanup(tmp_path: Path) -> None:
    engine = Engine.open(tmp_path, file_layer=CrashOnUnlink(), max_segment_bytes=200,
                         background_compaction=False)
    model: Model = {}
    for i in range(40):
        batch = [(b"k%d" % (i % 6), b"v%d" % i, 0), (b"d%d" % (i % 4), None, 0)]
        engine.write(batch, i + 1)
        apply_model(model, batch)
    with pytest.raises(KeyboardInterrupt):
        engine.compact()
    (output,) = [p for p in tmp_path.iterdir() if p.suffix == ".cmp"]
    data = output.read_bytes()
    replaced = set(read_supersedes(output, lambda n, off: data[off:off + n], len(data)))
    on_disk = {int(p.stem.split("-")[1]) for p in tmp_path.iterdir() if p.suffix == ".seg"}
    assert replaced and replaced <= on_disk  # committed, but nothing removed yet
    reopened = Engine.open(tmp_path, background_compaction=False)
    assert reopened.scan() == model_scan(model, b"", None, None)
    assert reopened.applied_index == 40
    on_disk = {int(p.stem.split("-")[1]) for p in tmp_path.iterdir() if p.suffix == ".seg"}
    assert not replaced & on_disk
    reopened.close()
    engine.layer = OsFiles()
    engine.close()


def test_writes_dumps_and_background_compaction_together(tmp_path: Path) -> None:
    """Threads: one writer (with a model), one taking dumps, background compaction; every
    dump equals the model at the moment it was taken, and nothing is lost at the end."""
    engine = Engine.open(tmp_path, fsync="no", max_segment_bytes=1024,
                         compact_min_dead_bytes=1, compact_dead_ratio=0.3)
    model: Model = {}
    guard = threading.Lock()
    done = threading.Event()
    failures: list[BaseException] = []

    def dumper() -> None:
        try:
            while not done.is_set():
                with guard:
                    reader = engine.dump()
                    expected = model_scan(model, b"", None, None)
                rows = [row for piece in reader for row in decode_piece(piece, 0)]
                assert rows == expected
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assert below
            failures.append(exc)

    thread = threading.Thread(target=dumper)
    thread.start()
    rng = random.Random(7)
    for i in range(4000):
        key = b"k%d" % rng.randrange(60)
        value = None if rng.random() < 0.2 else key * rng.randrange(1, 8) + b"%d" % i
        with guard:
            engine.write([(key, value, i)])
            apply_model(model, [(key, value, i)])
    done.set()
    thread.join()
    assert not failures, failures[0]
    if engine.compactor is not None:
        engine.compactor.thread.join()
    assert engine.stats["compactions"] >= 1
    assert engine.scan() == model_scan(model, b"", None, None)
    engine.close()
    assert contents_of(tmp_path) == {k: v for k, (v, _e) in model.items()}
