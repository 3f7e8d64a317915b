"""Runs fired ahead held by the worker without taking its slots, and the poll's advert words.

A worker's poll asks for up to `max_runs` runs due now (its free slots) and, after AHEAD,
for runs fired ahead of their slots (its ahead budget), so it holds the fire-ahead window's
runs through a leader election; every poll says SHELL or HANDLERS, and a poll that says
neither (a worker older than the cluster) is refused (scheduler/worker_commands.py). Sans
I/O: the state machine with hand-made entries, the poll's option parser, and the worker's
poll loop against a stand-in cluster.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.resp import CommandError
from core.resp_client import ReplyError
from scheduler import state as S
from scheduler.embedded import EmbeddedWorker
from scheduler.fireloop import DEFAULT_FIRE_AHEAD_MS
from scheduler.jobs import parse_job_add
from scheduler.state import SchedulerState
from scheduler.worker import (
    AHEAD_PER_SLOT,
    ERR_OLD_OPTIONS,
    ERR_OLD_POLL,
    MAX_AHEAD_RUNS,
    Run,
    Worker,
)
from scheduler.worker_commands import (
    ERR_AHEAD,
    ERR_NO_ADVERT,
    ERR_POLL_OPTION,
    poll_options,
)

README = Path(__file__).resolve().parent.parent / "README.md"
T0 = 1_700_000_000_000  # a whole second


def fired_state(count: int, due_ms: int, ahead_ms: int) -> SchedulerState:
    """`count` jobs with one run due at `due_ms` and one fired ahead for `ahead_ms`."""
    state = SchedulerState()
    for i in range(count):
        assert state.apply_entry(S.encode_add(parse_job_add([f"j{i}", "@every 1h", "true"],
                                                            T0))) is None
        for slot in (due_ms, ahead_ms):
            state.apply_entry(S.encode_fire(f"j{i}", [slot], slot, due_ms))
    return state


def test_a_claim_with_ahead_counts_runs_fired_ahead_apart_from_max() -> None:
    state = fired_state(4, T0 + 100, T0 + 900)
    claimed = state.apply_entry(S.encode_claim("w", [], T0 + 200, limit=1, ahead=3))
    slots = sorted(r["slot_ms"] for r in claimed)
    assert slots == [T0 + 100] + [T0 + 900] * 3  # one due (max 1), three ahead (AHEAD 3)
    assert all(r["start_in_ms"] == 700 for r in claimed if r["slot_ms"] == T0 + 900)


def test_a_claim_without_ahead_counts_every_run_against_max_as_before() -> None:
    state = fired_state(4, T0 + 100, T0 + 900)
    claimed = state.apply_entry(S.encode_claim("w", [], T0 + 200, limit=3))
    assert len(claimed) == 3  # an older worker's claim: runs fired ahead count too
    assert "ahead" not in S.claim_fields("w", [], T0)  # (an older entry's shape)


def test_a_resync_counts_the_held_runs_against_max_not_ahead() -> None:
    state = fired_state(3, T0 + 100, T0 + 900)
    first = state.apply_entry(S.encode_claim("w", [], T0 + 200, limit=2, ahead=0))
    again = state.apply_entry(S.encode_claim("w", [], T0 + 210, limit=2, resync=True,
                                             ahead=1))
    assert len(first) == 2
    # the two held come back (filling max); one run fired ahead besides
    assert sorted(r["run_id"] for r in again[:2]) == sorted(r["run_id"] for r in first)
    assert [r["slot_ms"] for r in again[2:]] == [T0 + 900]


@pytest.mark.parametrize(("words", "expected"), [
    ([b"SHELL"], (None, None)),
    ([b"shell", b"AHEAD", b"7"], (None, 7)),
    ([b"HANDLERS", b"b,a"], (["a", "b"], None)),
    ([b"HANDLERS", b"h", b"ahead", b"0"], (["h"], 0)),
])
def test_poll_options(words: list[bytes], expected: tuple[Any, Any]) -> None:
    assert poll_options(words) == expected


@pytest.mark.parametrize(("words", "error"), [
    ([], ERR_NO_ADVERT),
    ([b"AHEAD", b"1"], ERR_POLL_OPTION),
    ([b"HANDLERS"], ERR_POLL_OPTION),
    ([b"SHELL", b"AHEAD"], ERR_POLL_OPTION),
    ([b"SHELL", b"AHEAD", b"1", b"x"], ERR_POLL_OPTION),
    ([b"SHELL", b"AHEAD", b"-1"], ERR_AHEAD),
    ([b"SHELL", b"AHEAD", str(S.MAX_CLAIM + 1).encode()], ERR_AHEAD),
])
def test_poll_options_refuse_other_shapes(words: list[bytes], error: str) -> None:
    with pytest.raises(CommandError) as raised:
        poll_options(words)
    assert str(raised.value) == error


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from([b"SHELL", b"HANDLERS", b"AHEAD", b"a,b", b"3"]),
                          st.binary(max_size=12)), max_size=6))
def test_poll_options_answer_any_words_with_options_or_a_command_error(
        words: list[bytes]) -> None:
    try:
        handlers, ahead = poll_options(words)
    except CommandError as exc:
        assert str(exc).startswith("ERR ")
        return
    assert words[0].upper() in (b"SHELL", b"HANDLERS")
    assert ahead is None or 0 <= ahead <= S.MAX_CLAIM
    assert handlers is None or handlers == sorted(handlers)


def polls_against(worker: Worker, refuse: Any) -> list[tuple[object, ...]]:
    """The polls `worker` sends to a cluster that answers `refuse(args)` (an error text to
    raise, or None to answer [] and stop the worker)."""
    polls: list[tuple[object, ...]] = []

    async def scenario() -> None:
        stop = asyncio.Event()

        async def cluster(*args: object, channel: int = 0) -> Any:
            polls.append(args)
            if (error := refuse(args)) is not None:
                raise ReplyError(error)
            stop.set()
            return []

        worker.call = cluster  # type: ignore[method-assign]
        await worker._run(stop)

    asyncio.run(scenario())
    return polls


def test_a_shell_worker_says_shell_and_steps_down_for_an_older_cluster() -> None:
    worker = Worker([("127.0.0.1", 1)], worker_id="s", concurrency=4)
    polls = polls_against(worker, lambda args: ERR_OLD_OPTIONS if len(args) > 6 else None)
    assert [p[6:] for p in polls] == [("SHELL", "AHEAD", str(4 * AHEAD_PER_SLOT)), ()]


def test_an_embedded_worker_keeps_its_handlers_for_a_cluster_without_ahead() -> None:
    worker = EmbeddedWorker([("127.0.0.1", 1)], worker_id="e", slots=2)
    worker.handler("h")(lambda run: None)
    polls = polls_against(worker, lambda args: ERR_OLD_POLL if len(args) > 8 else None)
    assert [p[6:] for p in polls] == [("HANDLERS", "h", "AHEAD", "64"), ("HANDLERS", "h")]


def test_runs_waiting_for_their_slot_take_no_slot_of_the_worker() -> None:
    """Three runs fired an hour ahead wait at their gate: the next poll still asks for every
    slot (max_runs), and for the ahead budget less the three."""
    worker = Worker([("127.0.0.1", 1)], worker_id="w", concurrency=2)
    assert worker.ahead_budget == min(MAX_AHEAD_RUNS, 2 * AHEAD_PER_SLOT)

    async def scenario() -> list[tuple[object, ...]]:
        slot = int(time.time() * 1000) + 3_600_000  # (the worker's clock is the system's)
        for i in range(3):
            worker._start([f"j{i}@{slot}/0", f"j{i}", "true", slot, 1, 0, 0, 1, 3_600_000])
        await asyncio.sleep(0)
        polls: list[tuple[object, ...]] = []
        stop = asyncio.Event()

        async def cluster(*args: object, channel: int = 0) -> Any:
            polls.append(args)
            for task in worker.tasks:  # (the worker then stops without waiting an hour)
                task.cancel()
            stop.set()
            return []

        worker.call = cluster  # type: ignore[method-assign]
        await asyncio.wait_for(worker._run(stop), 5)
        return polls

    [poll] = asyncio.run(scenario())
    assert poll[5] == 2  # max_runs: both slots are free
    assert poll[6:] == ("SHELL", "AHEAD", str(2 * AHEAD_PER_SLOT - 3))
    assert worker._gated == 0 and worker._held == 0  # (cancelled runs gave theirs back)


def test_the_poll_reply_of_a_run_fired_ahead_is_understood() -> None:
    run = Run.from_wire(["j@5/0", "j", "cmd", 5, 1, 0, 0, 1, 170])
    assert run.start_in_ms == 170


def test_the_readme_states_fire_ahead_and_the_refusal_of_older_workers() -> None:
    text = " ".join(README.read_text().split())
    for sentence in (
        "A job with `CONCURRENCY allow` (the default) fires up to `--fire-ahead-ms` (default "
        f"{DEFAULT_FIRE_AHEAD_MS}) before its slot",
        "The window is longer than a leader election: the runs a worker holds start at their "
        "slots, by its own clock, while the cluster elects a new leader.",
        "A run waiting for its slot does not take one of the worker's slots.",
        "Every worker says which kind it is when it polls; a worker older than the cluster, "
        "which does not, is refused with an error telling it to upgrade, since it could be "
        "either kind and no run is known to be one it can execute.",
    ):
        assert sentence in text, sentence
    assert "upgrade" in ERR_NO_ADVERT  # what the refused worker reads
