"""The idgen fault drill, one short seeded round (tests/faults/idgen_drill.py says what it does
and checks): no id issued twice across the cluster under partitions, kills and clock steps.

Skips with the harness's one reason where namespaces or libfaketime are unavailable. Nothing
is timed: the round's length only bounds how many faults it sees.
"""

from __future__ import annotations

from pathlib import Path

from tests.faults.hosts import skip_unless_available

SEED = 11
DURATION_S = 20.0


def test_idgen_drill_short_round(tmp_path: Path) -> None:
    skip_unless_available(clock_faults=True)
    from tests.faults.idgen_drill import drill

    report = drill(SEED, DURATION_S, tmp_path)
    assert report.passed, report.report()
    assert report.operations > 0 and report.faults > 0
