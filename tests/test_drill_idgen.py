"""The idgen fault drill, one short seeded round (tests/faults/idgen_drill.py says what it does
and checks): no id issued twice across the cluster under partitions, kills and clock steps.

Skips with the harness's one reason where namespaces or libfaketime are unavailable. Nothing
is timed: the round's length only bounds how many faults it sees. The drill's real-time
order check is also run on hand-written histories, known good and known bad.
"""

from __future__ import annotations

from pathlib import Path

from tests.faults.history import FAIL, OK, Operation
from tests.faults.hosts import skip_unless_available
from tests.faults.idgen_drill import check_real_time_order, drill

SEED = 11
DURATION_S = 8.0  # a few faults; `make drills` runs the long rounds (tests/faults/run_drills.py)


def test_idgen_drill_short_round(tmp_path: Path) -> None:
    skip_unless_available(clock_faults=True)
    report = drill(SEED, DURATION_S, tmp_path)
    assert report.passed, report.report()
    assert report.operations > 0 and report.faults > 0


# -- the real-time order check on known-good and known-bad histories (no processes) ----------

def next_op(i: int, ids: list[int], t0: int, t1: int, process: str = "a") -> Operation:
    return Operation(i, process, "next", None, None, ids, OK, t0, t1)


def test_an_id_smaller_than_one_issued_before_is_caught() -> None:
    first = next_op(0, [5, 6], 0, 10)
    later = next_op(1, [4], 20, 30, process="b")
    result = check_real_time_order([first, later], "order")
    assert result.valid is False and result.window == (first, later), result.report()


def test_overlapping_requests_may_get_ids_in_either_order() -> None:
    first = next_op(0, [5, 6], 0, 25)
    overlapping = next_op(1, [4], 20, 30, process="b")
    after_both = next_op(2, [7], 40, 50)
    assert check_real_time_order([first, overlapping, after_both], "order").passed
    refused = Operation(3, "a", "next", None, None, None, FAIL, 60, 70, "CLOCK clock moved")
    result = check_real_time_order([first, refused], "order")
    assert result.passed and result.details["clock_refusals"] == 1
