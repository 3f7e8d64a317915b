"""The scheduler benchmark's failover accounting (bench/scheduler_slots.py `accounting`): a
run the final pause killed before any worker took it (fired ahead of its slot) is not a
slot the worker should have handled; any other fired run the worker never handled is."""

from __future__ import annotations

from typing import Any

from bench.scheduler_slots import accounting
from scheduler.state_apply import MSG_PAUSED_AHEAD


def run(slot: int, state: str = "succeeded", message: str = "") -> dict[str, Any]:
    return {"job": "j", "slot_ms": slot, "state": state, "message": message}


def test_a_run_killed_by_the_pause_before_a_worker_took_it_is_not_a_miss() -> None:
    records = [run(100), run(200), run(300, "killed", MSG_PAUSED_AHEAD)]
    notes = [("j", 100, 1, 100.0), ("j", 200, 1, 200.0)]
    result = accounting(records, notes, 100)
    assert (result["never_handled"], result["history_missed"]) == (0, 0)


def test_any_other_fired_run_never_handled_is_a_miss() -> None:
    records = [run(100), run(200), run(300, "killed", "replaced")]
    notes = [("j", 100, 1, 100.0)]
    assert accounting(records, notes, 100)["never_handled"] == 2
