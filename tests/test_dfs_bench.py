"""bench/dfs_bench.py's one parser, dd's closing line: real dd output, fuzzed text (a
rate or a clear ValueError, nothing else), and the figures' goals. No cluster runs here.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.dfs_bench import SECTIONS, make_plan, parse_dd


def test_real_dd_output_parses(tmp_path: Path) -> None:
    done = subprocess.run(["dd", "if=/dev/zero", f"of={tmp_path / 'x'}", "bs=64K", "count=4",
                           "conv=fsync"], capture_output=True, text=True, check=True)
    assert parse_dd(done.stderr) > 0


def test_the_rate_is_bytes_over_seconds() -> None:
    line = "262144 bytes (262 kB, 256 KiB) copied, 0.5 s, 524 kB/s"
    assert parse_dd(f"4+0 records in\n4+0 records out\n{line}\n") == pytest.approx(0.524288)
    with pytest.raises(ValueError, match="could not read dd's rate"):
        parse_dd("dd: error writing: No space left on device")
    with pytest.raises(ValueError):
        parse_dd("1 bytes copied, 0 s, inf B/s")


@given(st.text(max_size=200))
def test_any_text_gives_a_rate_or_a_value_error(text: str) -> None:
    try:
        assert parse_dd(text) >= 0
    except ValueError as error:
        assert "could not read dd's rate" in str(error)


@given(st.integers(0, 1 << 50), st.floats(1e-6, 1e6))
def test_generated_dd_lines_parse(size: int, seconds: float) -> None:
    line = f"{size} bytes ({size} B) copied, {seconds} s, 1 MB/s"
    assert parse_dd(line) == pytest.approx(size / float(f"{seconds}") / 1e6)


def test_quick_plan_is_smaller() -> None:
    quick, full = make_plan(True), make_plan(False)
    assert quick.file_mib < full.file_mib and quick.create_s < full.create_s
    assert SECTIONS == ("write", "read", "create", "memory")
