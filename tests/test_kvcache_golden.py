"""kvcache against replies recorded once from memcached 1.6.18: runs whatever memcached is
installed, or none.

tests/testdata/memcached_differential.txt holds the cases of
tests/test_kvcache_differential.py that fit a text file (streams under MAX_RECORDED_BYTES,
ending in CRLF), each sent after `flush_all` on a fresh connection, with memcached's reply
masked (CAS numbered by first appearance, TTLs and idle times as <T>; see
tests/kvcache_wire.py). Re-record where the reference memcached is installed with
`UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_kvcache_golden.py`; the live
side-by-side tests stay in the differential module.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.kvcache_wire import REFERENCE_VERSION, Memcached, masked, memcached_version, request
from tests.mc_golden import Case, load, parse, render, save
from tests.procs import kvcache_daemon
from tests.test_kvcache_differential import CASES, FLAGS, L

GOLDEN = Path(__file__).resolve().parent / "testdata" / "memcached_differential.txt"
UPDATE_ENV = "UPDATE_GOLDEN"
MAX_RECORDED_BYTES = 4096  # larger streams (the 1 MiB values) stay live-only, and so do
# streams not ending in CRLF (the transcript's lines are CRLF-terminated)


def recordable() -> dict[str, bytes]:
    """The differential cases small enough for the transcript, each after flush_all."""
    return {name: L("flush_all") + stream for name, stream in sorted(CASES.items())
            if len(stream) < MAX_RECORDED_BYTES and stream.endswith(b"\r\n")}


def record(tmp: Path) -> None:
    version = memcached_version()
    if version != REFERENCE_VERSION:
        pytest.fail(f"recording needs memcached {REFERENCE_VERSION}, found {version}")
    real = Memcached(tmp, FLAGS).start()
    try:
        cases = [Case(name, stream, masked(request(real.host, real.port, stream)))
                 for name, stream in recordable().items()]
    finally:
        real.stop()
    save(GOLDEN, cases)


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    if os.environ.get(UPDATE_ENV):
        record(tmp_path_factory.mktemp("record"))
    return load(GOLDEN)


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory):
    daemon = kvcache_daemon(tmp_path_factory.mktemp("golden"), extra=FLAGS).start()
    yield daemon
    assert daemon.stop() == 0, daemon.log()


def test_the_transcript_covers_the_recordable_cases(golden: list[Case]) -> None:
    recorded = {case.name: case.sent for case in golden}
    assert recorded == recordable(), "re-record: the differential cases changed"


def test_replies_match_the_recording(golden: list[Case], ours) -> None:
    differing = [case.name for case in golden
                 if masked(request(ours.host, ours.port, case.sent)) != case.reply]
    assert not differing, f"replies differ from memcached {REFERENCE_VERSION}'s: {differing}"


_LINE = st.binary(max_size=40).filter(lambda b: b"\r\n" not in b and not b.endswith(b"\r"))


@given(st.lists(st.tuples(st.lists(_LINE, max_size=4), st.lists(_LINE, max_size=4)),
                max_size=4))
def test_transcript_text_round_trips(exchanges: list[tuple[list[bytes], list[bytes]]]) -> None:
    cases = [Case(f"c{i}", b"".join(x + b"\r\n" for x in sent),
                  b"".join(x + b"\r\n" for x in reply))
             for i, (sent, reply) in enumerate(exchanges)]
    assert parse(render(cases)) == cases
