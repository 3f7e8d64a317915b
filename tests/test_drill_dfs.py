"""The dfs fault drill, one short seeded round (tests/faults/dfs_drill.py says what it does
and checks): the master leader SIGKILLed in a create/rename storm, a chunk primary
SIGSTOPped past its (short) lease while its file is rewritten and read,
a chunk server added and another decommissioned under load, every acknowledged
file read back through the loss of each server in turn, and the master leader cut off by
a partition in a storm of its own.

The drill runs in `make drills` only (`python -m tests.faults.run_drills --one dfs`). Its
short round failed in both clean-clone CI runs of 2026-12-07 ("the cluster not whole again
within 60 s" after a server's restart in the loss-of-each-server phase). The cause, found
by running it under load: a chunk server's heartbeat loop died on a race (the store's index
iterated for the report while a re-replication copy installed a replica from a worker
thread), so the master declared a live server dead for good; fixed in dfs/chunk_store.py
and dfs/chunkserver.py, with tests in test_dfs_chunk_store.py and test_dfs_chunk_server.py.
The membership phase's intermittent failure (a writer stalled past --abandoned-write-ms had
its file reaped) is fixed by the client's lease renewals (dfs/client_lease.py). The round
still takes well over a minute (101-166 s under load), more than this suite's budget, so
it stays in `make drills`. Here the drill's checks (tests/faults/dfs_checks.py) run on
hand-written histories, known good and known bad. Nothing is timed.
"""

from __future__ import annotations

from tests.faults import dfs_checks as checks
from tests.faults.history import INFO, OK, Operation

# -- the checks on hand-written histories (no processes) -------------------------------------

_ids = iter(range(1 << 30))


def op(f: str, key: object, value: object, status: str = OK, t0: int = 0, t1: int | None = 1,
       result: object = None) -> Operation:
    return Operation(next(_ids), "p", f, key, value, result, status, t0, t1)


def test_acknowledged_creates_and_renames_must_be_where_they_put_files() -> None:
    ops = [op("create", "/a", "A"), op("rename", ("/a", "/b"), "A", t0=2, t1=3),
           op("create", "/c", "C", t0=4, t1=5)]
    assert checks.check_namespace(ops, {"/b": "A", "/c": "C"}).passed
    assert not checks.check_namespace(ops, {"/a": "A", "/c": "C"}).passed  # rename lost
    assert not checks.check_namespace(ops, {"/b": "A"}).passed  # create lost
    assert not checks.check_namespace(ops, {"/b": "A", "/c": "C", "/d": "X"}).passed


def test_an_unknown_operation_is_wholly_applied_or_not_at_all() -> None:
    ops = [op("create", "/a", "A"), op("rename", ("/a", "/b"), "A", INFO, 2, None),
           op("create", "/c", "C", INFO, 4, None)]
    for found in ({"/a": "A"}, {"/b": "A", "/c": "C"}, {"/b": "A"}):
        assert checks.check_namespace(ops, found).passed, found
    half = checks.check_namespace(ops, {"/a": "A", "/b": "A"})  # a rename left a copy
    assert half.valid is False and "found at ['/a', '/b']" in half.explanation
    assert not checks.check_namespace(ops, {"/c": "C"}).passed  # the acked create vanished


def test_a_stale_read_is_caught_and_an_overlapping_write_may_be_read() -> None:
    w1 = op("write", "/f", "v1", t0=0, t1=10)
    w2 = op("write", "/f", "v2", t0=20, t1=30)
    unknown = op("write", "/f", "v3", INFO, 40, None)
    during = op("read", "/f", None, t0=25, t1=35, result="v1")
    after = op("read", "/f", None, t0=50, t1=60, result="v3")
    assert checks.check_register([w1, w2, unknown, during, after]).passed
    stale = op("read", "/f", None, t0=32, t1=38, result="v1")
    result = checks.check_register([w1, w2, stale])
    assert result.valid is False and result.window == (stale,)
    never = op("read", "/f", None, t0=32, t1=38, result="v9")
    assert not checks.check_register([w1, w2, never]).passed


def test_failures_and_wrong_hashes_are_caught() -> None:
    good = op("put", "/x", "d")
    assert checks.check_no_failures([good], "m").passed
    assert not checks.check_no_failures([good, op("get", "/x", "d", "fail")], "m").passed
    want = {"/x": "d"}
    assert checks.check_hashes([op("r", ("cs1", "/x"), None, result="d")], want).passed
    assert not checks.check_hashes([op("r", ("cs1", "/x"), None, result="e")], want).passed


def test_make_drills_runs_the_dfs_drill() -> None:
    from tests.faults import dfs_drill
    from tests.faults.drills import DRILLS

    assert "dfs" in DRILLS and callable(dfs_drill.drill)
