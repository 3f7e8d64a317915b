"""kvcache's per-command latency for the metrics (kvcache/latency.py): one read in 8 is timed
by both lane twins and filed under its first command; a read that continues a command is
not timed; a real server exports them as kvcache_command_duration_seconds{cmd}."""

from __future__ import annotations

import socket
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvcache.latency import COMMANDS, OTHER, SAMPLE_MASK, CommandLatency, command_of
from tests.conftest import find_free_port
from tests.metrics_scrape import samples, scrape
from tests.test_kvcache_lane import IMPLS, Harness
from tests.test_metrics import kvcache_daemon

READS = SAMPLE_MASK + 1  # one read in this many is timed
README = ("kvcache's `kvcache_command_duration_seconds`, which memcached's `stats` has no "
          "counterpart for, times one read in 8 of every connection, filed under the read's "
          "first command.")


def test_the_readme_says_what_these_tests_check() -> None:
    assert README in " ".join((Path(__file__).parent.parent / "README.md").read_text().split())


@given(st.binary(max_size=40))
def test_any_read_names_a_command_or_other(data: bytes) -> None:
    assert command_of(data) in COMMANDS | {OTHER}


@pytest.mark.parametrize(("data", "name"), [
    (b"get k\r\n", "get"), (b"mg k v\r\n", "mg"), (b"flush_all\r\n", "flush_all"),
    (b"version\n", "version"), (b"GET k\r\n", OTHER), (b"abcdef", OTHER), (b"", OTHER),
    (b"set k 0 0 1\r\nx\r\nget k\r\n", "set")])
def test_a_read_is_named_by_its_first_command(data: bytes, name: str) -> None:
    assert command_of(data) == name


@pytest.mark.parametrize("module", IMPLS)
def test_both_lanes_time_one_read_in_eight_by_its_first_command(module: ModuleType) -> None:
    def request_loop(data: bytes) -> None:  # what the lane hands on: into the parser
        h.parser.feed(data)
        while h.parser.next_request() is not None:
            pass  # the requests themselves are dropped: only the parser's state matters

    h = Harness(module, fallback=request_loop)
    h.lane.attach(h.transport)
    h.lane.latency = latency = CommandLatency()
    for _ in range(2 * READS):  # reads 1-16: 8 and 16 timed
        h.lane.data_received(b"get k\r\n")
    for _ in range(READS + SAMPLE_MASK - 1):  # reads 17-30: 24 timed
        h.lane.data_received(b"set n 0 0 1\r\nx\r\n")
    h.lane.data_received(b"set n 0 0 4\r\nab")  # read 31: a value left unfinished
    h.lane.data_received(b"cd\r\n")  # read 32: its rest, no command: not timed
    assert sorted(latency.by_command) == ["get", "set"]
    assert [latency.by_command[n].calls for n in ("get", "set")] == [2, 1]
    assert latency.by_command["get"].count == 2 and latency.by_command["get"].total_ns > 0
    assert h.transport.written[-1] == b"STORED\r\n"  # timing changed no answer


def test_a_server_exports_them_as_command_duration_seconds(tmp_path: Path) -> None:
    mport = find_free_port()
    cache = kvcache_daemon(tmp_path, extra=["--metrics-listen", f"127.0.0.1:{mport}"]).start()
    try:
        with socket.create_connection(("127.0.0.1", cache.port), timeout=30) as sock:
            for _ in range(3 * READS):  # one request per read: each waits for its reply
                sock.sendall(b"get absent\r\n")
                assert sock.recv(100) == b"END\r\n"
        found = samples(scrape(mport))
        assert found[("kvcache_command_duration_seconds_count", (("cmd", "get"),))] == 3
        assert found[("kvcache_command_duration_seconds_bucket",
                      (("cmd", "get"), ("le", "+Inf")))] == 3
    finally:
        assert cache.stop() == 0
