"""Tests of the fault-drill checkers: known-good histories pass, known-bad ones fail.

Histories are written by hand as rows (process, f, key, value, result, status, invoke,
complete) with times in abstract ticks; the hypothesis tests build register histories from
a real sequential register (and counter) with random overlapping intervals around each
linearization point, so they are linearizable by construction, then break one read. The
recorder and its file are tested in tests/test_fault_history.py.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.faults.checkers import (
    Counter,
    Register,
    check_counter,
    check_exactly_once,
    check_linearizable,
    check_set,
    check_unique,
    format_table,
    write_report,
)
from tests.faults.history import FAIL, INFO, OK, Operation

Row = tuple[Any, str, Any, Any, Any, str, int, int | None]

NEVER_WRITTEN = 99
PATHOLOGICAL_WRITES = 40


def ops_of(rows: list[Row]) -> list[Operation]:
    """Operations from rows; the id is the row number."""
    return [Operation(i, p, f, k, v, r, s, t0, t1) for i, (p, f, k, v, r, s, t0, t1)
            in enumerate(rows)]


class SearchOnlyRegister(Register):
    """A register without the quick test, so that the search itself must find violations."""

    def impossible(self, ops: list[Operation]) -> Operation | None:
        return None


# --- linearizability ------------------------------------------------------------------------

def test_sequential_and_concurrent_register_histories_pass() -> None:
    rows: list[Row] = [
        ("a", "write", "k", 1, None, OK, 0, 10),
        ("b", "read", "k", None, 1, OK, 20, 30),
        ("a", "write", "k", 2, None, OK, 40, 60),
        ("b", "read", "k", None, 1, OK, 45, 50),  # concurrent with write 2: old value is fine
        ("c", "read", "k", None, 2, OK, 55, 70),
        ("c", "cas", "k", (2, 3), True, OK, 80, 90),
        ("a", "cas", "k", (2, 4), False, OK, 95, 99),
        ("b", "read", "k", None, 3, OK, 100, 110),
    ]
    result = check_linearizable(ops_of(rows))
    assert result.valid is True, result.report()


def test_register_initial_value() -> None:
    rows: list[Row] = [("a", "read", "k", None, 0, OK, 0, 10)]
    assert check_linearizable(ops_of(rows)).valid is False
    assert check_linearizable(ops_of(rows), Register(initial=0)).valid is True


def test_stale_read_is_caught_with_its_window_first() -> None:
    rows: list[Row] = [
        ("a", "write", "k", 1, None, OK, 0, 10),
        ("b", "read", "k", None, 1, OK, 12, 14),
        ("a", "write", "k", 2, None, OK, 20, 30),
        ("b", "read", "k", None, 2, OK, 40, 50),
        ("c", "read", "k", None, 1, OK, 60, 70),  # stale: 2 was acknowledged and read before
    ]
    result = check_linearizable(ops_of(rows))
    assert result.valid is False
    assert result.details["blocked_op"] == 4
    assert result.details["states"] == [2]
    assert result.details["longest_prefix"] == [0, 1, 2, 3]
    assert {op.id for op in result.window} >= {2, 4}
    report = result.report()
    assert report.splitlines()[0].split()[:3] == ["op", "process", "f"]
    assert "operation 4" in report.splitlines()[-1]


def test_lost_write_is_caught() -> None:
    rows: list[Row] = [
        ("a", "write", "k", 1, None, OK, 0, 10),
        ("b", "write", "k", 2, None, OK, 20, 30),  # acknowledged, then lost
        ("c", "read", "k", None, 1, OK, 40, 50),
        ("c", "read", "k", None, 1, OK, 60, 70),
    ]
    result = check_linearizable(ops_of(rows))
    assert result.valid is False and result.details["blocked_op"] == 2


def test_read_of_a_value_never_written_is_caught() -> None:
    rows: list[Row] = [
        ("a", "write", "k", 1, None, OK, 0, 10),
        ("b", "read", "k", None, NEVER_WRITTEN, OK, 5, 15),
    ]
    result = check_linearizable(ops_of(rows))
    assert result.valid is False and result.details["blocked_op"] == 1


def test_failed_operations_did_not_happen() -> None:
    rows: list[Row] = [
        ("a", "write", "k", 1, None, OK, 0, 10),
        ("b", "write", "k", 2, None, FAIL, 12, 14),
        ("c", "read", "k", None, 2, OK, 20, 30),
    ]
    assert check_linearizable(ops_of(rows)).valid is False
    rows[2] = ("c", "read", "k", None, 1, OK, 20, 30)
    assert check_linearizable(ops_of(rows)).valid is True


@pytest.mark.parametrize("seen", [True, False])
def test_unknown_write_may_or_may_not_take_effect(seen: bool) -> None:
    rows: list[Row] = [
        ("a", "write", "k", 1, None, OK, 0, 10),
        ("b", "write", "k", 2, None, INFO, 20, 25),  # timed out at 25
        ("c", "read", "k", None, 1, OK, 30, 40),
        ("c", "read", "k", None, 2 if seen else 1, OK, 500, 510),  # applied late, or never
    ]
    result = check_linearizable(ops_of(rows))
    assert result.valid is True, result.report()


def test_unknown_write_cannot_take_effect_before_its_invocation() -> None:
    rows: list[Row] = [
        ("a", "write", "k", 1, None, OK, 0, 10),
        ("c", "read", "k", None, 2, OK, 20, 30),
        ("b", "write", "k", 2, None, INFO, 40, None),
    ]
    assert check_linearizable(ops_of(rows)).valid is False


def test_unknown_write_takes_effect_at_most_once() -> None:
    rows: list[Row] = [
        ("b", "write", "k", 2, None, INFO, 0, 5),
        ("c", "read", "k", None, 2, OK, 20, 30),
        ("a", "write", "k", 1, None, OK, 40, 50),
        ("c", "read", "k", None, 2, OK, 60, 70),  # the unknown write cannot land again
    ]
    assert check_linearizable(ops_of(rows)).valid is False


def test_keys_are_checked_independently() -> None:
    rows: list[Row] = [
        ("a", "write", "x", 1, None, OK, 0, 10),
        ("a", "write", "y", 5, None, OK, 20, 30),
        ("b", "read", "y", None, 5, OK, 40, 50),
        ("b", "read", "x", None, 5, OK, 60, 70),  # 5 was written, but to another key
    ]
    result = check_linearizable(ops_of(rows))
    assert result.valid is False and result.details["key"] == "x"


def test_counter_linearizability() -> None:
    good: list[Row] = [
        ("a", "incr", "n", 1, 1, OK, 0, 10),
        ("b", "incr", "n", 1, 2, OK, 5, 15),
        ("c", "incr", "n", 5, None, INFO, 20, 25),
        ("a", "read", "n", None, 7, OK, 30, 40),
    ]
    assert check_linearizable(ops_of(good), Counter()).valid is True
    bad = list(good)
    bad[1] = ("b", "incr", "n", 1, 1, OK, 5, 15)  # two increments both returned 1
    result = check_linearizable(ops_of(bad), Counter())
    assert result.valid is False and "counter" in result.explanation


def test_unobserved_unknown_writes_do_not_hide_a_stale_read() -> None:
    rows: list[Row] = [(f"t{i}", "write", "k", 100 + i, None, INFO, 0, 5)
                       for i in range(PATHOLOGICAL_WRITES)]
    rows += [
        ("a", "write", "k", 1, None, OK, 10, 20),
        ("a", "write", "k", 2, None, OK, 30, 40),
        ("b", "read", "k", None, 1, OK, 50, 60),
    ]
    result = check_linearizable(ops_of(rows), SearchOnlyRegister(), time_limit=5.0)
    assert result.valid is False
    assert result.details["blocked_op"] == PATHOLOGICAL_WRITES + 2


def test_pathological_history_reports_unknown_not_a_pass() -> None:
    rows: list[Row] = [(f"w{i}", "write", "k", i, None, OK, 0, 100)
                       for i in range(PATHOLOGICAL_WRITES)]
    rows += [("r", "read", "k", None, 0, OK, 200, 210), ("r", "read", "k", None, 1, OK, 220, 230)]
    result = check_linearizable(ops_of(rows), time_limit=0.3)
    assert result.valid == "unknown" and not result.passed
    assert "not a pass" in result.explanation
    by_steps = check_linearizable(ops_of(rows), time_limit=None, max_steps=5_000)
    assert by_steps.valid == "unknown"


@st.composite
def register_histories(draw: st.DrawFn) -> list[Operation]:
    """A history of a real sequential register with random intervals around each point."""
    count = draw(st.integers(min_value=2, max_value=24))
    state: Any = None
    ops = []
    for i in range(count):
        point = 10 * i + 5
        start = point - draw(st.integers(0, 30))
        end = point + draw(st.integers(0, 30))
        status = draw(st.sampled_from([OK, OK, OK, OK, INFO, FAIL]))
        f = "read" if i == count - 1 else draw(st.sampled_from(["read", "write", "cas"]))
        applied = status == OK or (status == INFO and draw(st.booleans()))
        value: Any = None
        result: Any = None
        if f == "write":
            value = draw(st.integers(0, 4))
            state = value if applied else state
        elif f == "cas":
            value = (draw(st.sampled_from([state, 0, 1])), draw(st.integers(0, 4)))
            swapped = value[0] == state
            result = swapped
            state = value[1] if applied and swapped else state
            if status == INFO and not swapped:
                status = OK  # an unknown cas that found another value changes nothing
        else:
            result = state
            status = OK if status == FAIL or i == count - 1 else status
        result = None if status == INFO else result
        ops.append(Operation(i, f"p{i}", f, "k", value, result, status, start, end))
    return ops


@settings(max_examples=100, deadline=None)
@given(register_histories())
def test_histories_of_a_real_register_are_linearizable(ops: list[Operation]) -> None:
    result = check_linearizable(ops)
    assert result.valid is True, result.report()


@settings(max_examples=100, deadline=None)
@given(register_histories(), st.data())
def test_one_impossible_read_makes_them_fail(ops: list[Operation], data: st.DataObject) -> None:
    reads = [i for i, op in enumerate(ops) if op.f == "read" and op.status == OK]
    target = data.draw(st.sampled_from(reads))
    bad = ops[target]
    ops[target] = Operation(bad.id, bad.process, "read", "k", None, NEVER_WRITTEN, OK,
                            bad.invoke_time, bad.complete_time)
    for model in (Register(), SearchOnlyRegister()):
        result = check_linearizable(ops, model)
        assert result.valid is False
        assert result.details["blocked_op"] == bad.id
    assert len(result.details["longest_prefix"]) >= len([
        op for op in ops if op.status == OK and op.complete_time < bad.invoke_time])


@st.composite
def random_register_histories(draw: st.DrawFn) -> list[Operation]:
    """Small histories with arbitrary outcomes: mostly not linearizable, some that are."""
    ops = []
    for i in range(draw(st.integers(1, 6))):
        f = draw(st.sampled_from(["read", "write", "cas"]))
        status = draw(st.sampled_from([OK, OK, INFO, FAIL]))
        start = draw(st.integers(0, 20))
        end = start + draw(st.integers(0, 10))
        value: Any = {"read": None, "write": draw(st.integers(0, 2)),
                      "cas": (draw(st.integers(0, 2)), draw(st.integers(0, 2)))}[f]
        result: Any = None
        if status == OK and f == "read":
            result = draw(st.sampled_from([None, 0, 1, 2]))
        elif status == OK and f == "cas":
            result = draw(st.booleans())
        ops.append(Operation(i, f"p{i}", f, "k", value, result, status, start, end))
    return ops


def brute_force_linearizable(ops: list[Operation], model: Register | Counter) -> bool:
    """Try every subset of unknown operations and every order of them with the known ones."""
    known = [op for op in ops if op.status == OK]
    maybe = [op for op in ops if op.status == INFO and op.f != "read"]
    for chosen in itertools.product([False, True], repeat=len(maybe)):
        picked = known + [op for op, take in zip(maybe, chosen, strict=True) if take]
        for order in itertools.permutations(picked):
            if _respects_real_time(order) and _legal(model, order):
                return True
    return False


def _respects_real_time(order: tuple[Operation, ...]) -> bool:
    return not any(later.known_end is not None and later.known_end < earlier.invoke_time
                   for i, earlier in enumerate(order) for later in order[i + 1:])


def _legal(model: Register | Counter, order: tuple[Operation, ...]) -> bool:
    state = model.init()
    for op in order:
        legal, state = model.step(state, op)
        if not legal:
            return False
    return True


@settings(max_examples=300, deadline=None)
@given(random_register_histories())
def test_the_search_agrees_with_brute_force(ops: list[Operation]) -> None:
    expected = brute_force_linearizable(ops, Register())
    for model in (Register(), SearchOnlyRegister()):
        assert check_linearizable(ops, model).valid is expected


@st.composite
def random_counter_histories(draw: st.DrawFn) -> list[Operation]:
    """Small counter histories with arbitrary outcomes."""
    ops = []
    for i in range(draw(st.integers(1, 6))):
        f = draw(st.sampled_from(["read", "incr"]))
        status = draw(st.sampled_from([OK, OK, INFO, FAIL]))
        start = draw(st.integers(0, 20))
        end = start + draw(st.integers(0, 10))
        value = draw(st.integers(1, 2)) if f == "incr" else None
        result = draw(st.sampled_from([None, 0, 1, 2, 3])) if status == OK else None
        ops.append(Operation(i, f"p{i}", f, "n", value, result, status, start, end))
    return ops


@settings(max_examples=200, deadline=None)
@given(random_counter_histories())
def test_the_counter_search_agrees_with_brute_force(ops: list[Operation]) -> None:
    expected = brute_force_linearizable(ops, Counter())
    assert check_linearizable(ops, Counter()).valid is expected
    if expected:  # the bound is a necessary condition of linearizability
        assert check_counter(ops).valid is True


@st.composite
def counter_histories(draw: st.DrawFn) -> list[Operation]:
    """A history of a real counter (incr returns the new value or nothing), read last."""
    count = draw(st.integers(min_value=1, max_value=20))
    state = 0
    ops = []
    for i in range(count + 1):
        point = 10 * i + 5
        start, end = point - draw(st.integers(0, 30)), point + draw(st.integers(0, 30))
        if i == count or draw(st.booleans()):
            ops.append(Operation(i, f"p{i}", "read", "n", None, state, OK, start, end))
            continue
        delta = draw(st.integers(1, 3))
        status = draw(st.sampled_from([OK, OK, INFO, FAIL]))
        if status == OK or (status == INFO and draw(st.booleans())):
            state += delta
        result = state if status == OK and draw(st.booleans()) else None
        ops.append(Operation(i, f"p{i}", "incr", "n", delta, result, status, start, end))
    return ops


@settings(max_examples=100, deadline=None)
@given(counter_histories(), st.booleans())
def test_counter_histories_pass_and_an_impossible_final_read_fails(
        ops: list[Operation], high: bool) -> None:
    assert check_counter(ops).valid is True
    assert check_linearizable(ops, Counter()).valid is True
    attempted = sum(op.value for op in ops if op.f == "incr" and op.status != FAIL)
    final = ops[-1]
    ops[-1] = Operation(final.id, final.process, "read", "n", None,
                        attempted + 1 if high else -1, OK, final.invoke_time, final.complete_time)
    assert check_counter(ops).valid is False
    assert check_linearizable(ops, Counter()).valid is False


def test_report_table_shows_open_and_unknown_ends() -> None:
    rows: list[Row] = [
        ("a", "write", "k", 1, None, OK, 1_000_000, 3_500_000),
        ("b", "write", "k", 2, None, INFO, 2_000_000, 4_000_000),
        ("c", "write", "k", "x" * 80, None, INFO, 2_000_000, None),
        ("d", "read", "k", None, 3, OK, 5_000_000, 6_000_000),
    ]
    table = format_table(ops_of(rows), origin=1_000_000).splitlines()
    assert table[0].split() == ["op", "process", "f", "key", "value", "result", "status",
                                "invoke", "ms", "end", "ms"]
    assert table[2].split()[-2:] == ["0.000", "2.500"]
    assert table[3].split()[-3:] == ["1.000", "3.000", "(info)"]
    assert table[4].split()[-2:] == ["1.000", "?"] and "x" * 37 + "..." in table[4]
    assert table[5].split()[-3:] == ["ok", "4.000", "5.000"]
    result = check_linearizable(ops_of(rows))
    assert result.valid is False and result.report().startswith("op  process  f")


def test_report_file_puts_failures_first_and_the_whole_history_last(tmp_path: Any) -> None:
    rows: list[Row] = [
        ("a", "write", "k", 1, None, OK, 0, 10),
        ("b", "read", "k", None, 2, OK, 20, 30),
        ("c", "next_id", None, None, 5, OK, 40, 50),
    ]
    ops = ops_of(rows)
    path = tmp_path / "report.txt"
    write_report(path, [check_unique(ops), check_linearizable(ops, fs=["write", "read"])], ops)
    text = path.read_text()
    assert text.startswith("op  process")
    assert text.index("linearizable: valid=False") < text.index("unique: valid=True")
    assert "whole history, 3 operations" in text and "next_id" in text.split("whole")[1]


# --- sets -----------------------------------------------------------------------------------

def test_set_with_every_acknowledged_add_passes() -> None:
    rows: list[Row] = [
        ("a", "add", "s", 1, None, OK, 0, 10),
        ("b", "add", "s", 2, None, INFO, 5, 15),   # unknown, absent: fine
        ("c", "add", "s", 3, None, INFO, 5, 15),   # unknown, present: fine
        ("a", "add", "s", 4, None, OK, 95, 120),   # concurrent with the read: either way
        ("d", "read", "s", None, (1, 3), OK, 100, 110),
    ]
    result = check_set(ops_of(rows))
    assert result.valid is True, result.report()


def test_set_lost_add_is_caught() -> None:
    rows: list[Row] = [
        ("a", "add", "s", 1, None, OK, 0, 10),
        ("a", "add", "s", 2, None, OK, 20, 30),
        ("d", "read", "s", None, (1,), OK, 100, 110),
    ]
    result = check_set(ops_of(rows))
    assert result.valid is False and result.details["lost"] == [2]
    assert [op.id for op in result.window] == [1, 2]


@pytest.mark.parametrize("status", [FAIL, None])
def test_set_element_never_added_is_caught(status: str | None) -> None:
    rows: list[Row] = [("a", "add", "s", 1, None, OK, 0, 10)]
    if status is not None:
        rows.append(("b", "add", "s", 7, None, status, 20, 30))
    rows.append(("d", "read", "s", None, (1, 7), OK, 100, 110))
    result = check_set(ops_of(rows))
    assert result.valid is False and result.details["unexpected"] == [7]


def test_set_without_a_read_is_unknown() -> None:
    rows: list[Row] = [("a", "add", "s", 1, None, OK, 0, 10)]
    assert check_set(ops_of(rows)).valid == "unknown"


# --- unique ids -----------------------------------------------------------------------------

def test_unique_ids_pass_and_duplicates_are_caught() -> None:
    rows: list[Row] = [
        ("a", "next_id", None, None, 10, OK, 0, 10),
        ("b", "next_id", None, None, 11, OK, 0, 10),
        ("a", "next_id", None, None, (12, 13, 14), OK, 20, 30),
        ("b", "next_id", None, None, None, INFO, 20, 30),
        ("c", "next_id", None, None, None, FAIL, 20, 30),
    ]
    assert check_unique(ops_of(rows), per_process_increasing=True).valid is True
    rows.append(("c", "next_id", None, None, 13, OK, 40, 50))
    result = check_unique(ops_of(rows))
    assert result.valid is False and result.details["duplicates"] == {13: [2, 5]}
    assert {op.id for op in result.window} == {2, 5}


def test_ids_per_process_increasing_is_an_option() -> None:
    rows: list[Row] = [
        ("a", "next_id", None, None, 10, OK, 0, 10),
        ("a", "next_id", None, None, 5, OK, 20, 30),
    ]
    assert check_unique(ops_of(rows)).valid is True
    result = check_unique(ops_of(rows), per_process_increasing=True)
    assert result.valid is False and [op.id for op in result.window] == [0, 1]


# --- counters -------------------------------------------------------------------------------

COUNTER_ROWS: list[Row] = [
    ("a", "incr", "n", 1, None, OK, 0, 10),
    ("b", "incr", "n", 2, None, OK, 5, 15),
    ("c", "incr", "n", 4, None, INFO, 20, 25),
    ("d", "incr", "n", 8, None, FAIL, 20, 25),
]


@pytest.mark.parametrize("final", [3, 7])
def test_counter_within_bounds_passes(final: int) -> None:
    rows = [*COUNTER_ROWS, ("a", "read", "n", None, final, OK, 100, 110)]
    result = check_counter(ops_of(rows))
    assert result.valid is True, result.report()


@pytest.mark.parametrize("final", [2, 8, 11, 15])
def test_counter_outside_bounds_is_caught(final: int) -> None:
    rows = [*COUNTER_ROWS, ("a", "read", "n", None, final, OK, 100, 110)]
    result = check_counter(ops_of(rows))
    assert result.valid is False
    assert (result.details["low"], result.details["high"]) == (3, 7)
    assert result.window[-1].id == 4


def test_counter_read_concurrent_with_increments_and_decrements() -> None:
    rows: list[Row] = [
        ("a", "incr", "n", 5, None, OK, 0, 10),
        ("b", "incr", "n", -2, None, OK, 15, 40),   # concurrent with the read
        ("c", "read", "n", None, 3, OK, 20, 30),
        ("c", "read", "n", None, 5, OK, 32, 35),
    ]
    assert check_counter(ops_of(rows)).valid is True
    rows.append(("c", "read", "n", None, 5, OK, 50, 60))  # -2 was acknowledged by now
    assert check_counter(ops_of(rows)).valid is False


# --- exactly-once firing ----------------------------------------------------------------------

def fires(slots: list[tuple[str, int, str]]) -> list[Operation]:
    """Fire operations (job, slot, status), one tick apart."""
    return ops_of([("w", "fire", job, slot, None, status, 10 * i, 10 * i + 5)
                   for i, (job, slot, status) in enumerate(slots)])


EXPECTED = {"backup": [60, 120, 180], "report": [100]}


def test_every_slot_fired_once_passes() -> None:
    history = fires([("backup", 60, OK), ("report", 100, OK), ("backup", 120, INFO),
                     ("backup", 180, OK)])
    result = check_exactly_once(history, EXPECTED)
    assert result.valid is True and result.details["uncertain"] == 1


def test_double_fire_is_caught() -> None:
    history = fires([("backup", 60, OK), ("backup", 120, OK), ("backup", 120, OK),
                     ("backup", 180, OK), ("report", 100, OK)])
    result = check_exactly_once(history, EXPECTED)
    assert result.valid is False and result.details["double"] == [("backup", 120)]
    assert [op.id for op in result.window] == [1, 2]


def test_missing_fire_is_caught_unless_the_misfire_policy_allows_it() -> None:
    history = fires([("backup", 60, OK), ("backup", 180, OK), ("report", 100, OK)])
    result = check_exactly_once(history, EXPECTED)
    assert result.valid is False and result.details["missing"] == [("backup", 120)]
    assert {op.value for op in result.window} == {60, 180}
    assert check_exactly_once(history, EXPECTED, {"backup": [120]}).valid is True


def test_fire_of_an_unexpected_slot_is_caught() -> None:
    history = fires([("backup", 60, OK), ("backup", 120, OK), ("backup", 180, OK),
                     ("backup", 240, OK), ("report", 100, OK)])
    result = check_exactly_once(history, EXPECTED)
    assert result.valid is False and result.details["unexpected"] == [("backup", 240)]
