"""Tests of the fault-drill history recorder and its JSON-lines file.

The recorder gets a fake clock (0, 10, 20, ... ns) where times matter; the thread and
asyncio tests use the real monotonic clock and check only order, never durations.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from typing import Any

import pytest

from tests.faults.history import FAIL, INFO, OK, History, Operation, Recorder

Row = tuple[Any, str, Any, Any, Any, str, int, int | None]


def ops_of(rows: list[Row]) -> list[Operation]:
    """Operations from rows (process, f, key, value, result, status, invoke, complete)."""
    return [Operation(i, p, f, k, v, r, s, t0, t1) for i, (p, f, k, v, r, s, t0, t1)
            in enumerate(rows)]


def ticking_clock() -> Any:
    """A fake monotonic clock: 0, 10, 20, ... nanoseconds, one reading per call."""
    counter = itertools.count(0, 10)
    return lambda: next(counter)


def test_recorder_pairs_invocations_with_completions() -> None:
    rec = Recorder(clock=ticking_clock())
    w = rec.invoke("c1", "write", "k", 1)
    r = rec.invoke("c2", "read", "k")
    w.ok()
    r.ok(1)
    rec.invoke("c1", "cas", "k", (1, 2)).fail("-ERR no match")
    rec.invoke("c2", "write", "k", 3).info("timeout")
    rec.invoke("c3", "write", "k", 4)  # never completes
    ops = rec.history().operations()
    assert [(op.f, op.status) for op in ops] == [
        ("write", OK), ("read", OK), ("cas", FAIL), ("write", INFO), ("write", INFO)]
    assert (ops[0].invoke_time, ops[0].complete_time) == (0, 20)
    assert ops[1].result == 1 and ops[2].error == "-ERR no match"
    assert ops[4].complete_time is None


def test_recorder_refuses_two_open_operations_and_double_completion() -> None:
    rec = Recorder(clock=ticking_clock())
    handle = rec.invoke("c1", "read", "k")
    with pytest.raises(ValueError, match="already has an open operation"):
        rec.invoke("c1", "read", "k")
    handle.ok(None)
    with pytest.raises(ValueError, match="not an open invocation"):
        handle.ok(None)


def test_recorder_context_manager_classifies_exceptions() -> None:
    rec = Recorder(clock=ticking_clock())
    with pytest.raises(KeyError), rec.op("c1", "write", "k", 1, fail_on=(KeyError,)):
        raise KeyError("refused")
    with pytest.raises(TimeoutError), rec.op("c1", "write", "k", 2, fail_on=(KeyError,)):
        raise TimeoutError
    with rec.op("c1", "read", "k") as op:
        op.ok(7)
    assert [op.status for op in rec.history().operations()] == [FAIL, INFO, OK]


def test_recorder_is_thread_safe() -> None:
    rec = Recorder()
    def client(name: str) -> None:
        for i in range(200):
            rec.invoke(name, "add", "s", (name, i)).ok()
    threads = [threading.Thread(target=client, args=(f"t{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    history = rec.history()
    assert [event.index for event in history] == list(range(1600))
    times = [event.time for event in history]
    assert times == sorted(times)
    assert len(history.operations()) == 800


def test_recorder_from_asyncio_tasks() -> None:
    rec = Recorder()

    async def client(name: str) -> None:
        for i in range(20):
            with rec.op(name, "incr", "n", 1) as op:
                await asyncio.sleep(0)
                op.ok(i)

    async def main() -> None:
        await asyncio.gather(*(client(f"a{i}") for i in range(5)))

    asyncio.run(main())
    history = rec.history()
    ops = history.operations()
    assert len(ops) == 100 and all(op.status == OK for op in ops)
    kinds = [event.type for event in history]
    assert ("invoke", "invoke") in itertools.pairwise(kinds)  # the tasks' operations overlap


def test_history_round_trips_through_json_lines(tmp_path: Any) -> None:
    rec = Recorder(clock=ticking_clock())
    rec.invoke("c1", "cas", "k", (None, 1)).ok(True)
    rec.invoke("c1", "read", "s").ok((1, 2, (3, "x")))
    rec.invoke(("node", 2), "next_id", None).info("connection lost")
    rec.invoke("c2", "add", "s", 5)
    path = tmp_path / "history.jsonl"
    rec.history().write_jsonl(path)
    back = History.read_jsonl(path)
    assert back.events == rec.history().events
    assert back.operations() == rec.history().operations()
    assert back.operations()[3].status == INFO


def test_history_file_lists_read_back_as_tuples(tmp_path: Any) -> None:
    rec = Recorder(clock=ticking_clock())
    rec.invoke("c1", "read", "s").ok([1, [2, 3]])
    path = tmp_path / "history.jsonl"
    rec.history().write_jsonl(path)
    assert History.read_jsonl(path).operations()[0].result == (1, (2, 3))


def test_history_from_operations_gives_them_back() -> None:
    rows: list[Row] = [
        ("a", "write", "k", 1, None, OK, 0, 0),      # instant
        ("a", "read", "k", None, 1, OK, 0, 10),      # same process, same instant
        ("b", "write", "k", 2, None, INFO, 5, 20),
        ("b", "write", "k", 3, None, FAIL, 20, 30),  # invoked as the last one completed
        ("c", "read", "k", None, None, INFO, 25, None),
    ]
    ops = ops_of(rows)
    back = History.from_operations(ops).operations()
    assert [(op.process, op.f, op.key, op.value, op.result, op.status, op.invoke_time,
             op.complete_time) for op in back] == rows


def test_recorder_op_left_uncompleted_is_unknown() -> None:
    rec = Recorder(clock=ticking_clock())
    with rec.op("c1", "write", "k", 1):
        pass
    op = rec.history().operations()[0]
    assert op.status == INFO and op.error == "completion never recorded"
