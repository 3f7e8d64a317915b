"""The shardstore consistency drill, one short seeded round (tests/faults/shardstore_drill.py
says what it does and checks): counters INCRed and registers set through a 3-node cluster
while slots move, a shard leader is SIGKILLed and restarted and a node is isolated; every
counter ends between its acknowledged and its acknowledged-plus-unknown increments, and the
registers are linearizable.

Skips with the harness's one reason where network namespaces are unavailable. Nothing is
timed: the round's length only bounds how many rounds of faults it makes (one). The drill's
own checks and key plan are also run on hand-written histories, good and bad.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from native.crc16 import key_slot
from tests.faults.history import FAIL, INFO, OK, Operation
from tests.faults.hosts import skip_unless_available
from tests.faults.shardstore_drill import (
    COUNTER_CLIENTS,
    FINAL,
    REGISTER_KEYS,
    SLOTS_PER_ROUND,
    check_final_counters,
    check_moves,
    plan_keys,
)

SEED = 11
DURATION_S = 0.0  # one round of faults


def test_shardstore_drill_short_round(tmp_path: Path) -> None:
    skip_unless_available()
    from tests.faults.shardstore_drill import run_round

    result = run_round(SEED, DURATION_S, tmp_path)
    report = result.report
    assert report.passed, report.report()
    assert report.faults >= 3  # the reshard, the kill, the partition
    incrs = [op for op in result.ops if op.f == "incr"]
    assert any(op.status == OK for op in incrs)
    writes = [op for op in result.ops if op.f == "write"]
    assert any(op.status == OK for op in writes)


# -- the drill's checks on hand-written histories (no processes) -------------------------------

KEY = "counter0:{t1}"


def op(i: int, f: str, result: object, status: str, t0: int, t1: int | None,
       process: str = "c0", key: str = KEY) -> Operation:
    return Operation(i, process, f, key, 1 if f == "incr" else None, result, status, t0, t1,
                     None if status == OK else "error")


def test_a_final_count_between_acknowledged_and_unknown_passes() -> None:
    ops = [op(0, "incr", 1, OK, 0, 10), op(1, "incr", None, INFO, 20, 30),
           op(2, "incr", None, FAIL, 40, 50), op(3, "read", 2, OK, 100, 110, FINAL)]
    assert check_final_counters(ops, [KEY]).passed
    exact = [*ops[:3], op(3, "read", 1, OK, 100, 110, FINAL)]
    assert check_final_counters(exact, [KEY]).passed


def test_a_lost_or_invented_increment_is_caught() -> None:
    acked = [op(0, "incr", 1, OK, 0, 10), op(1, "incr", 2, OK, 20, 30)]
    lost = check_final_counters([*acked, op(2, "read", 1, OK, 100, 110, FINAL)], [KEY])
    assert lost.valid is False and "ends at 1" in lost.explanation
    failed = op(2, "incr", None, FAIL, 40, 50)  # never sent: must not count
    invented = check_final_counters([*acked, failed, op(3, "read", 3, OK, 100, 110, FINAL)],
                                    [KEY])
    assert invented.valid is False
    no_final = check_final_counters(acked, [KEY])
    assert no_final.valid == "unknown" and not no_final.passed


def test_a_final_count_below_an_acknowledged_reply_is_caught() -> None:
    ops = [op(0, "incr", 5, OK, 0, 10), op(1, "incr", None, INFO, 20, 30),
           op(2, "read", 1, OK, 100, 110, FINAL)]
    result = check_final_counters(ops, [KEY])
    assert result.valid is False and "highest returned 5" in result.explanation


def test_moves_must_be_done_and_the_admin_check_pass() -> None:
    done = [{b"id": 1, b"state": b"done"}]
    assert check_moves(done, 0, "[OK] All checks passed.").passed
    assert check_moves([{b"id": 1, b"state": b"copy"}], 0, "").valid is False
    assert check_moves(done, 1, "[ERR] ...").valid is False


@pytest.mark.parametrize("top", [{1: 5460, 2: 10921, 3: 16383}, {1: 100, 2: 9000, 3: 70}])
def test_keys_sit_in_the_slots_the_rounds_move(top: dict[int, int]) -> None:
    keys = plan_keys(top)
    assert len(keys.counters) == COUNTER_CLIENTS and len(keys.registers) == REGISTER_KEYS
    depth_zero = {s for high in top.values() for s in range(high - SLOTS_PER_ROUND + 1,
                                                              high + 1)}
    assert {key_slot(k.encode()) for k in keys.registers} <= depth_zero
    assert {key_slot(k.encode()) for k in keys.counters[:len(top)]} <= depth_zero
    assert len(set(keys.filler)) == len(keys.filler)
