"""libmemcached's protocol checker, `memccapable -a` (ascii tests only), against kvcache.

memccapable prints one line per check ("ascii set   [pass]") and exits non-zero when one
fails; every check must pass. Skipped only where libmemcached-tools is not installed.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.kvcache_wire import MEMCCAPABLE
from tests.procs import kvcache_daemon

pytestmark = pytest.mark.skipif(MEMCCAPABLE is None, reason="memccapable is not installed")


def test_memccapable_ascii_passes(tmp_path) -> None:
    daemon = kvcache_daemon(tmp_path).start()
    try:
        result = subprocess.run(
            [MEMCCAPABLE, "-h", daemon.host, "-p", str(daemon.port), "-a", "-t", "10"],
            capture_output=True, text=True, timeout=120,
        )
    finally:
        code = daemon.stop()
    report = result.stdout + result.stderr
    checks = [line for line in report.splitlines() if line.startswith("ascii ")]
    assert len(checks) >= 27, report
    assert all(line.rstrip().endswith("[pass]") for line in checks), report
    assert "All tests passed" in report
    assert result.returncode == 0, report
    assert code == 0, daemon.log()
