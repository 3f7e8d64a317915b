"""Figures the daemons report: latency histogram and cmdstat lines."""

from __future__ import annotations

from core.stats import LatencyHistogram, ProcessFigures, command_stats_info


def test_percentiles_are_bucket_upper_bounds() -> None:
    hist = LatencyHistogram()
    for _ in range(98):
        hist.record(3_000)  # 3 us: bucket of values below 4 us
    hist.record(900_000)  # 900 us: below 1024 us
    hist.record(5_000_000)  # 5 ms: below 8192 us
    assert hist.percentile(0.5) == 4
    assert hist.percentile(0.99) == 1024
    assert hist.percentile(1.0) == 8192
    assert LatencyHistogram().percentile(0.99) == 0


def test_cmdstat_lines_count_every_call_and_skip_unused_commands() -> None:
    used, unused = LatencyHistogram(), LatencyHistogram()
    used.calls, used.errors = 10, 2
    used.record(1_500)
    lines = command_stats_info({"NEXT": used, "PARSE": unused})
    assert list(lines) == ["cmdstat_next"]
    assert lines["cmdstat_next"].startswith("calls=10,sampled_calls=1,usec_per_call=1.50,")
    assert "failed_calls=2" in str(lines["cmdstat_next"])


def test_process_figures_come_from_this_process() -> None:
    import os

    figures = ProcessFigures().info()
    assert figures["process_id"] == os.getpid()
    assert int(figures["used_memory_rss"]) > 0  # type: ignore[call-overload]
