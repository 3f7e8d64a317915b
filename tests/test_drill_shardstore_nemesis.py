"""The shardstore drill under the random nemesis (tests/faults/shardstore_nemesis.py) runs in
`make drills` only (`python -m tests.faults.run_drills --one shardstore-nemesis`): a round
is minutes of faults, beyond make test's budget; the scripted round of the same drill runs
in make test (tests/test_drill_shardstore.py). Here: it is registered, and it draws from
every fault kind of the harness (clock faults only where libfaketime is installed)."""

from __future__ import annotations

from tests.faults.drill import ALL_KINDS, NETWORK_KINDS, PROCESS_KINDS
from tests.faults.drills import DRILLS


def test_make_drills_runs_the_shardstore_nemesis_round() -> None:
    from tests.faults import shardstore_nemesis

    assert shardstore_nemesis.DAEMON_NAME in DRILLS
    assert callable(shardstore_nemesis.drill)


def test_the_nemesis_draws_every_kind_and_clock_faults_only_with_libfaketime() -> None:
    from tests.faults.shardstore_nemesis import nemesis_kinds

    assert nemesis_kinds(clock_available=True) == ALL_KINDS
    without = nemesis_kinds(clock_available=False)
    assert "clock" not in without
    assert set(without) == set(NETWORK_KINDS) | set(PROCESS_KINDS)
