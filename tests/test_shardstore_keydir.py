"""The compact keydir (shardstore/engine/keydir.py, packed.py) against a dict model.

A hypothesis state machine drives puts, deletes, compaction-style swaps, merge steps and
flushes, and compares every read, ordered scan, SCAN cursor walk, count and frozen view with
a plain dict. The engine's own state machine runs again with merges on every change, and
the keydir's accounting must stay under the memory target for 100,000 keys.
"""

from __future__ import annotations

import bisect
import platform
from itertools import islice

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from shardstore.engine import keydir as keydir_module
from shardstore.engine.keydir import Keydir, KeydirView
from shardstore.engine.memory import trim_heap
from shardstore.engine.packed import NARROW_MAX, Location, build_run
from tests.test_shardstore_engine import EngineMachine

BYTES_PER_KEY_TARGET = 40  # keydir bytes per key beyond the key's own bytes
MEMORY_KEYS = 100_000

keys = st.one_of(st.binary(max_size=3), st.sampled_from([b"", b"a", b"ab", b"b\x00", b"zz"]),
                 st.binary(min_size=20, max_size=40))
# Location fields that exercise every column width: 0 (no column), 32-bit, 64-bit.
fields = st.sampled_from([0, 1, 7, NARROW_MAX, NARROW_MAX + 1, 2**63])
locations = st.tuples(fields, fields, fields, fields, fields)
tiny_keys = st.lists(st.sampled_from([b"\x00", b"a", b"b"]), max_size=5).map(b"".join)


def model_items(model: dict[bytes, Location], start: bytes, end: bytes | None,
                after: bool) -> list[tuple[bytes, Location]]:
    return [(k, v) for k, v in sorted(model.items())
            if (k > start if after else k >= start) and (end is None or k < end)]


class KeydirMachine(RuleBasedStateMachine):
    """The keydir and a dict agree after any sequence of operations."""

    def __init__(self) -> None:
        super().__init__()
        self.keydir = Keydir(delta_min=3, step_every=1)
        self.model: dict[bytes, Location] = {}
        self.views: list[tuple[KeydirView, list[tuple[bytes, Location]]]] = []

    @rule(key=keys, loc=locations)
    def put(self, key: bytes, loc: Location) -> None:
        assert self.keydir.put(key, loc) == self.model.get(key)
        self.model[key] = loc

    @rule(key=keys)
    def pop(self, key: bytes) -> None:
        assert self.keydir.pop(key) == self.model.pop(key, None)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), loc=locations, stale=st.booleans())
    def replace_if(self, data: st.DataObject, loc: Location, stale: bool) -> None:
        key = data.draw(st.sampled_from(sorted(self.model)))
        expected = self.model[key]
        if stale:
            expected = (expected[0] + 1, *expected[1:])
        done = self.keydir.replace_if(key, expected, loc)  # type: ignore[arg-type]
        assert done == (not stale)
        if done:
            self.model[key] = loc

    @rule()
    def maintain(self) -> None:
        self.keydir.maintain()

    @rule()
    def flush(self) -> None:
        self.keydir.flush()

    @rule()
    def take_view(self) -> None:
        self.views.append((self.keydir.view(), model_items(self.model, b"", None, False)))

    @rule(key=keys)
    def get(self, key: bytes) -> None:
        assert self.keydir.get(key) == self.model.get(key)

    @rule(start=keys, end=st.one_of(st.none(), keys), after=st.booleans())
    def items(self, start: bytes, end: bytes | None, after: bool) -> None:
        got = list(self.keydir.items(start, end, after=after))
        assert got == model_items(self.model, start, end, after)

    @rule(limit=st.integers(1, 4))
    def cursor_walk(self, limit: int) -> None:
        """A SCAN-style walk: resume after the last key returned."""
        seen: list[bytes] = []
        first = self.keydir.get(b"")
        if first is not None:
            seen.append(b"")
        cursor = b""
        while True:
            page = [k for k, _loc in islice(self.keydir.items(cursor, after=True), limit)]
            if not page:
                break
            seen.extend(page)
            cursor = page[-1]
        assert seen == sorted(self.model)

    @invariant()
    def agrees(self) -> None:
        assert len(self.keydir) == len(self.model)
        for view, expected in self.views:
            assert list(view.items()) == expected


TestKeydirMachine = KeydirMachine.TestCase
TestKeydirMachine.settings = settings(max_examples=80, stateful_step_count=60, deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow])


class SmallDeltaEngineMachine(EngineMachine):
    """The engine's state machine with a keydir that merges after every few changes."""

    def __init__(self) -> None:
        self.saved = keydir_module.DELTA_MIN_KEYS, keydir_module.STEP_EVERY
        keydir_module.DELTA_MIN_KEYS, keydir_module.STEP_EVERY = 2, 1
        super().__init__()

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            keydir_module.DELTA_MIN_KEYS, keydir_module.STEP_EVERY = self.saved


TestSmallDeltaEngineMachine = SmallDeltaEngineMachine.TestCase
TestSmallDeltaEngineMachine.settings = settings(max_examples=25, stateful_step_count=40,
                                                deadline=None,
                                                suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("count", [0, 1, 31, 32, 33, 100])
def test_a_packed_run_finds_every_key_and_nothing_else(count: int) -> None:
    items = [(b"k%05d" % (i * 2), (i, i * 10, i % 3, 0, i + 1)) for i in range(count)]
    run = build_run(items)
    assert len(run) == count
    for i, (key, loc) in enumerate(items):
        assert run.get(key) == loc
        assert run.get(key + b"\x00") is None
        assert run.bisect_left(key) == i
    assert run.get(b"") is None and run.get(b"\xff") is None
    assert list(run.iter_from(0)) == items


def test_the_keydir_holds_100k_keys_in_under_40_bytes_each_beyond_the_key() -> None:
    """The accounting engine.stats reports (Keydir.stats), for keys of about 10 bytes."""
    keydir = Keydir()
    for i in range(MEMORY_KEYS):
        keydir.put(b"key:%d" % i, (1 + i // 50_000, 1000 + 130 * i, 100, 0, i + 1))
    stats = keydir.stats()
    beyond = (stats["keydir_bytes"] - stats["keydir_key_bytes"]) / MEMORY_KEYS
    assert stats["keydir_merges"] > 0
    assert beyond < BYTES_PER_KEY_TARGET, stats


def test_freed_heap_pages_go_back_to_the_kernel_on_glibc() -> None:
    asked = trim_heap()
    assert asked == (platform.libc_ver()[0] == "glibc")


@settings(max_examples=150, deadline=None)
@given(present=st.sets(tiny_keys, max_size=120), probes=st.lists(tiny_keys, max_size=30))
def test_find_and_bisect_agree_with_a_sorted_list(present: set[bytes],
                                                  probes: list[bytes]) -> None:
    """Keys over a tiny alphabet, so a key often occurs inside others and across boundaries."""
    ordered = sorted(present)
    run = build_run([(k, (i, 0, 0, 0, 0)) for i, k in enumerate(ordered)])
    for key in [*probes, *ordered]:
        expected = ordered.index(key) if key in present else -1
        assert run.find(key) == expected
        assert run.bisect_left(key) == bisect.bisect_left(ordered, key)
