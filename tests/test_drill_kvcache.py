"""The kvcache fault drill, one short seeded round per failover mode (tests/faults/
kvcache_drill.py says what it does and checks): a backend cut off from the proxy follows the
configured mode (`fail` errors fast, `remap` serves from the next node) and is used again
once healed, without a stale value shadowing a newer one.

Skips with the harness's one reason where network namespaces are unavailable. Nothing is
timed: the round's length only bounds how many cuts it makes (at least one).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.hosts import skip_unless_available

SEED = 11
DURATION_S = 10.0


@pytest.mark.parametrize("mode", ["fail", "remap"])
def test_kvcache_drill_short_round(mode: str, tmp_path: Path) -> None:
    skip_unless_available()
    from tests.faults.kvcache_drill import drill_mode

    report = drill_mode(mode, SEED, DURATION_S, tmp_path)
    assert report.passed, report.report()
    assert report.operations > 0 and report.faults > 0
