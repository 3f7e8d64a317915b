"""The benchmarks' own arithmetic: bench.scheduler_slots (which slots count, how a miss is
counted) and bench.idgen_loads' check of distinct pipelined replies.

Strategy: pure functions fed made-up run records and notes; hypothesis drives random
histories so that no slot the jobs were scheduled for can drop out of the figures. No
process, socket or clock.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.idgen_loads import MIXED, MixedChecker
from bench.kvcache_loads import parse_values
from bench.scheduler_slots import expected_slots, lateness
from core.resp_client import ReplyError

PERIOD = 1000


def record(job: str, slot: int, fired: int = 0, started: int = 0) -> dict[str, object]:
    return {"job": job, "slot_ms": slot, "fired_ms": slot + fired,
            "started_ms": slot + started if started >= 0 else -1, "state": "succeeded"}


def test_expected_slots_follow_each_jobs_phase_inside_the_window() -> None:
    records = [record("a", 10_250), record("b", 9_000)]
    slots = expected_slots(records, ["a", "b", "c"], 10_000, 13_000, PERIOD)
    assert sorted(s for j, s in slots if j == "a") == [10_250, 11_250, 12_250]
    assert sorted(s for j, s in slots if j == "b") == [10_000, 11_000, 12_000]
    assert len([s for j, s in slots if j == "c"]) == 3  # no record: still three slots


def test_a_slot_that_never_fired_is_a_miss_not_left_out() -> None:
    records = [record("a", 10_000), record("a", 12_000)]  # 11_000 never fired
    notes = [("a", 10_000, 1, 10_001.0), ("a", 12_000, 1, 12_002.0)]
    result = lateness(records, notes, 10_000, 13_000, 15_000, PERIOD, ["a"])
    assert result["slots_in_window"] == 3 and result["never_fired"] == 1
    assert result["handler_start_ms"]["n"] == 3
    assert result["handler_start_ms"]["max"] == 15_000 - 11_000  # late until the stop
    assert result["fires_per_s"] == 1.0 * 2 / 3 and result["offered_per_s"] == 1.0
    assert result["not_handled"] == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 9), st.booleans()),
                max_size=40))
def test_every_scheduled_slot_is_in_the_percentiles(runs: list[tuple[str, int, bool]]
                                                    ) -> None:
    phase = {"a": 0, "b": 300, "c": 999}
    records = [record(job, 10_000 + k * PERIOD + phase[job]) for job, k, _ in runs]
    notes = [(job, 10_000 + k * PERIOD + phase[job], 1, 10_000.0 + k * PERIOD + phase[job] + 1)
             for job, k, handled in runs if handled]
    result = lateness(records, notes, 10_000, 20_000, 21_000, PERIOD, ["a", "b", "c"])
    fired = {(job, k) for job, k, _ in runs}
    assert result["slots_in_window"] == 30
    assert result["never_fired"] == 30 - len(fired)
    assert result["fired_in_window"] == len(fired)
    assert result["handler_start_ms"]["n"] == result["fired_ms"]["n"] == 30
    assert result["not_handled"] == 30 - len({(j, k) for j, k, h in runs if h})


# -- idgen's distinct pipelined requests -------------------------------------------------


def idgen_cycle(first: int) -> list[object]:
    """Right replies to one MIXED["idgen"] cycle, ids from `first` on."""
    replies: list[object] = []
    next_id = first
    for request, count in MIXED["idgen"]:
        if count == 0:
            replies.append("PONG")
        elif len(request) == 1:
            replies.append(next_id)
        else:
            replies.append(list(range(next_id, next_id + count)))
        next_id += count
    return replies


def test_mixed_checker_takes_right_replies_and_sees_an_id_issued_twice() -> None:
    checker = MixedChecker("idgen")
    for reply in idgen_cycle(100) + idgen_cycle(200):
        checker.check(reply)
    assert checker.unique() and len(checker.ids) == 2 * sum(c for _, c in MIXED["idgen"])
    for reply in idgen_cycle(100):
        checker.check(reply)
    assert not checker.unique()


def test_mixed_checker_refuses_wrong_replies() -> None:
    with pytest.raises(ValueError, match="error"):
        MixedChecker("idgen").check(ReplyError("ERR no"))
    checker = MixedChecker("idgen")
    checker.check(1)
    with pytest.raises(ValueError, match="NEXT"):
        checker.check([2])  # NEXT 2 answered one id
    redis = MixedChecker("redis")
    redis.check(5)  # INCR -> 5
    with pytest.raises(ValueError, match="after 5"):
        redis.check(6)  # INCRBY 2 cannot end at 6 after 5: the ranges would overlap


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(), st.text(max_size=4), st.binary(max_size=4),
                          st.lists(st.integers(), max_size=8), st.none()), max_size=12),
       st.sampled_from(["idgen", "redis"]))
def test_mixed_checker_answers_any_reply_with_a_count_or_a_value_error(
        replies: list[object], server: str) -> None:
    checker = MixedChecker(server)
    for reply in replies:
        try:
            assert checker.check(reply) >= 0
        except ValueError:
            return


# -- kvcache's read-back after a fill ----------------------------------------------------

KEYS = st.binary(min_size=1, max_size=8).filter(lambda k: b" " not in k and b"\r" not in k
                                                and b"\n" not in k)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(KEYS, st.binary(max_size=20), max_size=6))
def test_parse_values_reads_what_a_get_reply_holds(items: dict[bytes, bytes]) -> None:
    reply = b"".join(b"VALUE %s 0 %d\r\n%s\r\n" % (k, len(v), v) for k, v in items.items())
    assert parse_values(reply + b"END\r\n") == items


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60))
def test_parse_values_refuses_garbage_with_a_value_error(data: bytes) -> None:
    try:
        parse_values(data)
    except ValueError:
        return


def test_parse_values_errors_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="does not end with END"):
        parse_values(b"VALUE k 0 1\r\nx\r\n")
    with pytest.raises(ValueError, match="bad VALUE line"):
        parse_values(b"VALUE k 0\r\nEND\r\n")
    with pytest.raises(ValueError, match="not followed by CRLF"):
        parse_values(b"VALUE k 0 5\r\nx\r\nEND\r\n")
