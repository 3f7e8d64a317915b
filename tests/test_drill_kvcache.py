"""The kvcache fault drill, one short seeded round per failover mode (tests/faults/
kvcache_drill.py says what it does and checks): a backend cut off from the proxy follows the
configured mode (`fail` errors fast, `remap` serves from the next node) and is used again
once healed, without a stale value shadowing a newer one.

Skips with the harness's one reason where network namespaces are unavailable. Nothing is
timed: the round's length only bounds how many cuts it makes (at least one). The drill's
checkers are also run on hand-written histories, known good and known bad.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.faults.history import FAIL, INFO, OK, Operation
from tests.faults.hosts import skip_unless_available
from tests.faults.kvcache_checks import (
    UNAVAILABLE,
    Round,
    check_cut_routing,
    check_no_hangs,
    check_recovery,
    check_stale_reads,
    shadow_chances,
)

SEED = 11
DURATION_S = 10.0


@pytest.mark.parametrize("mode", ["fail", "remap"])
def test_kvcache_drill_short_round(mode: str, tmp_path: Path) -> None:
    skip_unless_available()
    from tests.faults.kvcache_drill import drill_mode

    report = drill_mode(mode, SEED, DURATION_S, tmp_path)
    assert report.passed, report.report()
    assert report.operations > 0 and report.faults > 0


# -- the drill's checkers on known-good and known-bad histories (no processes) ---------------

VICTIM, HEALTHY = "10.77.0.1:11211", "10.77.0.2:11211"
OWNERS = {"v": VICTIM, "h": HEALTHY}


def op(i: int, f: str, key: str, value: object, result: object, status: str, t0: int,
       t1: int | None, error: str | None = None, process: str = "c0") -> Operation:
    return Operation(i, process, f, key, value, result, status, t0, t1, error)


def a_round() -> Round:
    """A cut of VICTIM at 100, marked down at 200, healed at 500, marked up at 600."""
    return Round(VICTIM, "isolate", cut_at=100, down_at=200, heal_at=500, up_at=600)


def test_a_stale_read_is_caught_and_a_concurrent_one_is_not() -> None:
    old = op(0, "set", "v", "v0", "v0", OK, 0, 10)
    new = op(1, "set", "v", "v1", "v1", OK, 20, 30, process="c1")
    stale = op(2, "get", "v", None, "v0", OK, 40, 50)
    result = check_stale_reads([old, new, stale])
    assert result.valid is False and result.window == (old, new, stale), result.report()
    concurrent = op(1, "set", "v", "v1", "v1", OK, 20, 45, process="c1")
    assert check_stale_reads([old, concurrent, stale]).passed
    missed = op(2, "get", "v", None, None, OK, 40, 50)
    assert check_stale_reads([old, new, missed]).passed


def test_a_value_no_set_could_have_written_is_caught() -> None:
    never = op(0, "get", "v", None, "nobody", OK, 0, 10)
    assert check_stale_reads([never]).valid is False
    unsent = op(0, "set", "v", "v0", None, FAIL, 0, 10, UNAVAILABLE)
    read = op(1, "get", "v", None, "v0", OK, 20, 30, process="c1")
    assert check_stale_reads([unsent, read]).valid is False
    unknown = op(0, "set", "v", "v0", None, INFO, 0, 10, "SERVER_ERROR backend timeout")
    assert check_stale_reads([unknown, read]).passed
    later = op(0, "set", "v", "v0", "v0", OK, 40, 50)
    assert check_stale_reads([later, read]).valid is False


def test_fail_mode_wants_unavailable_for_the_cut_backend_and_success_elsewhere() -> None:
    fast = op(0, "get", "v", None, None, FAIL, 250, 260, UNAVAILABLE)
    other = op(1, "set", "h", "h1", "h1", OK, 250, 260, process="c1")
    assert check_cut_routing([fast, other], [a_round()], "fail", OWNERS.__getitem__).passed
    slow = op(0, "get", "v", None, None, FAIL, 250, 260, "SERVER_ERROR backend timeout")
    assert check_cut_routing([slow, other], [a_round()], "fail", OWNERS.__getitem__
                             ).valid is False
    served = op(0, "get", "v", None, "v0", OK, 250, 260)
    assert check_cut_routing([served, other], [a_round()], "fail", OWNERS.__getitem__
                             ).valid is False
    broken = op(1, "set", "h", "h1", None, FAIL, 150, 160, UNAVAILABLE, process="c1")
    assert check_cut_routing([fast, broken], [a_round()], "fail", OWNERS.__getitem__
                             ).valid is False


def test_remap_mode_wants_the_cut_backends_keys_served() -> None:
    wrote = op(0, "set", "v", "v1", "v1", OK, 250, 260)
    hit = op(1, "get", "v", None, "v1", OK, 270, 280)
    assert check_cut_routing([wrote, hit], [a_round()], "remap", OWNERS.__getitem__).passed
    miss = op(1, "get", "v", None, None, OK, 270, 280)
    result = check_cut_routing([wrote, miss], [a_round()], "remap", OWNERS.__getitem__)
    assert result.valid is False and result.window == (wrote, miss)
    refused = op(1, "get", "v", None, None, FAIL, 270, 280, UNAVAILABLE)
    assert check_cut_routing([wrote, refused], [a_round()], "remap", OWNERS.__getitem__
                             ).valid is False
    assert check_cut_routing([], [a_round()], "remap", OWNERS.__getitem__).valid == "unknown"


def test_hangs_and_a_backend_not_used_after_its_return_are_caught() -> None:
    hung = op(0, "get", "v", None, None, INFO, 250, 9000, "hang: TimeoutError('timed out')")
    assert check_no_hangs([hung]).valid is False
    after = op(0, "get", "v", None, None, FAIL, 700, 710, UNAVAILABLE)
    assert check_recovery([after], [a_round()]).valid is False
    found = op(1, "home_get", "probe:1", "p1", "p1", OK, 700, 710, process="probe")
    assert check_recovery([found], [a_round()]).passed
    stale = op(1, "home_get", "probe:1", "p1", "p0", OK, 700, 710, process="probe")
    assert check_recovery([stale], [a_round()]).valid is False


def brute_stale(ops: list[Operation]) -> bool:
    """Whether some hit is stale or phantom, by the definition, pair by pair."""
    sets = {o.value: o for o in ops if o.f == "set"}
    for get in (o for o in ops if o.f == "get" and o.ok and o.result is not None):
        wrote = sets.get(get.result)
        if wrote is None or wrote.status == FAIL or wrote.invoke_time > get.complete_time:
            return True
        if wrote.ok and any(s.ok and s.invoke_time > wrote.complete_time
                            and s.complete_time < get.invoke_time for s in sets.values()):
            return True
    return False


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 40), st.integers(1, 15),
                          st.sampled_from([OK, OK, FAIL, INFO]), st.integers(0, 9)),
                min_size=1, max_size=14))
def test_the_stale_read_search_agrees_with_brute_force(
        rows: list[tuple[bool, int, int, str, int]]) -> None:
    ops = []
    for i, (is_set, start, length, status, pick) in enumerate(rows):
        if is_set:
            ops.append(op(i, "set", "k", f"v{i}", f"v{i}" if status == OK else None, status,
                          start, start + length, process=f"p{i}"))
        else:
            result = None if pick == 0 else f"v{pick}"
            ops.append(op(i, "get", "k", None, result, OK, start, start + length,
                          process=f"p{i}"))
    assert check_stale_reads(ops).passed is not brute_stale(ops)


def test_reads_a_stale_copy_would_fail_are_counted() -> None:
    ops = [op(0, "set", "v", "v0", "v0", OK, 10, 20),
           op(1, "set", "v", "v1", "v1", OK, 250, 260),
           op(2, "get", "v", None, None, OK, 700, 710),  # a miss: the flushed home
           op(3, "get", "v", None, None, OK, 720, 730)]  # counted once per key and cut
    assert shadow_chances(ops, [a_round()], OWNERS.__getitem__) == 1
    rewritten = [*ops[:2], op(2, "set", "v", "v2", "v2", OK, 650, 660), ops[3]]
    assert shadow_chances(rewritten, [a_round()], OWNERS.__getitem__) == 0
