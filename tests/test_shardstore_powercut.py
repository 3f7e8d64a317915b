"""Power cuts, torn tails and flipped bytes against the shardstore engine.

The power-cut file layer (shardstore/engine/powercut.py) keeps unsynced appends in a buffer it
drops when the power goes, optionally writing out a prefix of it (a torn tail). Hypothesis
chooses the operations, the operation the power goes at, and how much of the tail survives;
the store is then reopened on the real file system and compared with a dict model.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from shardstore.engine import CorruptStore, Engine
from shardstore.engine.powercut import PowerCut, PowerCutFiles

SMALL_SEGMENT_BYTES = 400
Model = dict[bytes, tuple[bytes, int]]
Op = tuple[str, list[tuple[bytes, bytes | None, int]]]

keys = st.sampled_from([b"", b"a", b"b", b"key", b"k" * 60])
batches = st.lists(st.tuples(keys, st.one_of(st.none(), st.binary(max_size=80)),
                             st.sampled_from([0, 5])), max_size=4)
ops_strategy = st.lists(st.one_of(st.tuples(st.just("write"), batches),
                                  st.tuples(st.sampled_from(["sync", "compact", "reopen"]),
                                            st.just([]))),
                        min_size=1, max_size=25)
torn = st.floats(min_value=0.0, max_value=1.0)
powercut_settings = settings(max_examples=120, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])


def applied(model: Model, batch: list[tuple[bytes, bytes | None, int]]) -> Model:
    out = dict(model)
    for key, value, expire in batch:
        if value is None:
            out.pop(key, None)
        else:
            out[key] = (value, expire)
    return out


def keep_fraction(fraction: float) -> Callable[[Path, int], int]:
    return lambda _path, n: int(n * fraction)


def keep_prefix(fraction: float) -> Callable[[int], int]:
    return lambda n: int(n * fraction)


def contents(directory: Path) -> tuple[Model, int]:
    engine = Engine.open(directory, background_compaction=False)
    try:
        return {k: (v, e) for k, v, e in engine.scan()}, engine.applied_index
    finally:
        engine.close()


def run_until_cut(directory: Path, fsync: str, ops: list[Op], cut_at: int, fraction: float,
                  dir_fraction: float) -> tuple[list[Model], int, Model | None]:
    """Run `ops` until the power goes. Returns the model after each write that returned, the
    index in that list of the last write known durable, and the model of a write in flight.
    `fraction` of each file's unsynced bytes and `dir_fraction` of the unsynced directory
    changes (a prefix) survive the cut."""
    layer = PowerCutFiles()

    def reopen() -> Engine:
        return Engine.open(directory, fsync=fsync, file_layer=layer,
                           max_segment_bytes=SMALL_SEGMENT_BYTES, background_compaction=False)

    engine = reopen()
    layer.arm(cut_at, keep_fraction(fraction), keep_prefix(dir_fraction))
    models: list[Model] = [{}]
    durable = 0
    inflight: Model | None = None
    try:
        for name, batch in ops:
            if name == "write":
                inflight = applied(models[-1], batch)
                engine.write(batch, len(models))
                models.append(inflight)
                inflight = None
                durable = len(models) - 1 if fsync == "always" else durable
            elif name == "sync":
                engine.sync()
                durable = len(models) - 1
            elif name == "reopen":
                engine.close()  # fsyncs what is pending
                durable = len(models) - 1
                engine = reopen()
            else:
                engine.compact()
                durable = len(models) - 1
        layer.power_cut(keep_fraction(fraction), keep_prefix(dir_fraction))
    except PowerCut:
        pass
    return models, durable, inflight


def check_survivors(directory: Path, models: list[Model], durable: int,
                    inflight: Model | None) -> None:
    state, applied_index = contents(directory)
    candidates = list(enumerate(models))[durable:]
    if inflight is not None:
        candidates.append((len(models), inflight))
    assert any(state == model and applied_index == index for index, model in candidates), (
        f"state {state} at applied index {applied_index} is none of the allowed "
        f"{candidates}")


@powercut_settings
@given(ops=ops_strategy, cut_at=st.integers(0, 80), fraction=torn, dir_fraction=torn)
def test_fsync_always_keeps_every_write_that_returned(ops: list[Op], cut_at: int,
                                                      fraction: float,
                                                      dir_fraction: float) -> None:
    directory = Path(tempfile.mkdtemp(prefix="ss-cut-"))
    try:
        models, durable, inflight = run_until_cut(directory, "always", ops, cut_at, fraction,
                                                  dir_fraction)
        assert durable == len(models) - 1
        check_survivors(directory, models, durable, inflight)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@powercut_settings
@given(ops=ops_strategy, cut_at=st.integers(0, 80), fraction=torn, dir_fraction=torn)
def test_fsync_everysec_loses_at_most_what_came_after_the_last_sync(
        ops: list[Op], cut_at: int, fraction: float, dir_fraction: float) -> None:
    directory = Path(tempfile.mkdtemp(prefix="ss-cut-"))
    try:
        models, durable, inflight = run_until_cut(directory, "everysec", ops, cut_at, fraction,
                                                  dir_fraction)
        check_survivors(directory, models, durable, inflight)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_a_cut_after_a_sync_with_nothing_torn_keeps_exactly_the_synced(tmp_path: Path) -> None:
    layer = PowerCutFiles()
    engine = Engine.open(tmp_path, fsync="everysec", file_layer=layer)
    engine.write([(b"a", b"1", 0)], 1)
    engine.sync()
    engine.write([(b"b", b"2", 0)], 2)
    layer.power_cut()
    assert contents(tmp_path) == ({b"a": (b"1", 0)}, 1)


def test_group_commit_writes_are_durable_once_synced(tmp_path: Path) -> None:
    layer = PowerCutFiles()
    engine = Engine.open(tmp_path, file_layer=layer)
    for i in range(5):
        engine.write([(b"k%d" % i, b"v", 0)], i + 1, sync=False)
    fsyncs = engine.stats["fsyncs"]
    engine.sync()
    assert engine.stats["fsyncs"] == fsyncs + 1
    engine.write([(b"late", b"v", 0)], 6, sync=False)
    layer.power_cut()
    state, index = contents(tmp_path)
    assert sorted(state) == [b"k%d" % i for i in range(5)] and index == 5


# -- torn tails and corruption on the real file system -----------------------------------------


def write_frames(directory: Path, n: int) -> tuple[Path, list[int]]:
    """n single-entry writes in one segment; the segment and the end offset of each frame."""
    engine = Engine.open(directory, background_compaction=False)
    ends = []
    for i in range(n):
        engine.write([(b"key%d" % i, b"value-%d" % i * 3, 0)], i + 1)
        ends.append(engine.stats["live_bytes"] + engine.stats["dead_bytes"])
    engine.close()
    (segment,) = [p for p in directory.iterdir() if p.suffix == ".seg"]
    assert segment.stat().st_size == ends[-1]
    return segment, ends


def test_a_torn_tail_at_every_byte_of_the_last_frame_is_truncated(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    segment, ends = write_frames(source, 3)
    data = segment.read_bytes()
    expected = {b"key%d" % i: (b"value-%d" % i * 3, 0) for i in range(2)}
    for cut in range(ends[1], ends[2]):
        case = tmp_path / f"cut{cut}"
        shutil.copytree(source, case)
        (case / segment.name).write_bytes(data[:cut])
        assert contents(case) == (expected, 2)
        assert (case / segment.name).stat().st_size == ends[1]
        engine = Engine.open(case, background_compaction=False)
        engine.write([(b"after", b"x", 0)], 3)
        engine.close()
        assert contents(case)[0] == {**expected, b"after": (b"x", 0)}
        shutil.rmtree(case)


def test_zeros_after_the_last_frame_are_a_torn_tail(tmp_path: Path) -> None:
    segment, ends = write_frames(tmp_path, 2)
    with open(segment, "ab") as f:
        f.write(bytes(100))
    state, index = contents(tmp_path)
    assert index == 2 and len(state) == 2
    assert segment.stat().st_size == ends[-1]


def test_a_flipped_byte_in_the_middle_refuses_to_open(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    segment, ends = write_frames(source, 3)
    data = segment.read_bytes()
    starts = [0, *ends[:-1]]
    case = tmp_path / "case"
    for offset in range(ends[1]):  # every byte of every frame but the last
        shutil.rmtree(case, ignore_errors=True)
        shutil.copytree(source, case)
        damaged = bytearray(data)
        damaged[offset] ^= 0x5A
        (case / segment.name).write_bytes(bytes(damaged))
        with pytest.raises(CorruptStore) as caught:
            Engine.open(case, background_compaction=False)
        frame_start = max(s for s in starts if s <= offset)
        assert caught.value.path == str(case / segment.name)
        assert caught.value.offset == frame_start
        assert (case / segment.name).read_bytes() == bytes(damaged)  # nothing truncated


def test_a_bad_last_frame_of_a_sealed_segment_is_corruption(tmp_path: Path) -> None:
    engine = Engine.open(tmp_path, max_segment_bytes=1, background_compaction=False)
    for i in range(3):
        engine.write([(b"k%d" % i, b"v", 0)], i + 1)
    engine.close()
    first = sorted(p for p in tmp_path.iterdir() if p.suffix == ".seg")[0]
    data = bytearray(first.read_bytes())
    data[-1] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(CorruptStore) as caught:
        Engine.open(tmp_path)
    assert caught.value.path == str(first) and caught.value.offset == 0
