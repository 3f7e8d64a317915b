"""The core/raft fault drill (tests/faults/raft_register.py), one short seeded round.

Three RESP-on-Raft toy nodes in harness hosts, clients on every host doing reads, writes and
compare-and-sets, random partitions, kills and pauses; every key's history must be
linearizable. `make drills` runs long randomized rounds of the same drill.
"""

from __future__ import annotations

from pathlib import Path

from tests.faults.hosts import skip_unless_available
from tests.faults.raft_register import drill

SEED = 20261207
DURATION_S = 8.0  # a few faults; `make drills` runs the long rounds (tests/faults/run_drills.py)


def test_raft_register_drill_is_linearizable(tmp_path: Path) -> None:
    skip_unless_available()
    report = drill(SEED, DURATION_S, tmp_path)
    assert report.faults > 0, report.report()
    assert report.passed, report.report()
