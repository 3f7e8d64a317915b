"""The drill framework without namespaces: the nemesis against a fake harness, the report,
the registry and the runner's table. (The drills themselves run in tests/test_drill_*.py.)"""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.faults import run_drills
from tests.faults.drill import (
    ALL_KINDS,
    FAULT_F,
    HEAL_F,
    HISTORY_FILE,
    NEMESIS_PROCESS,
    REPORT_FILE,
    DrillReport,
    Nemesis,
    finish,
)
from tests.faults.drills import DRILLS
from tests.faults.history import History, Recorder
from tests.faults.node import Host
from tests.faults.report import UNKNOWN, CheckResult


class FakeClock:
    def __init__(self, calls: list[tuple[Any, ...]], host: str) -> None:
        self.calls, self.host = calls, host

    def jump(self, delta: float) -> None:
        self.calls.append(("clock.jump", self.host, delta))

    def set(self, seconds: float) -> None:
        self.calls.append(("clock.set", self.host, seconds))


class FakeHarness:
    """Records every fault call by name and plain host names."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __getattr__(self, name: str) -> Any:
        if name not in ("isolate", "split", "bridge", "one_way", "random_loss", "heal"):
            raise AttributeError(name)
        return lambda *args: self.calls.append((name, *map(_plain, args)))

    def clock(self, ref: Host) -> FakeClock:
        return FakeClock(self.calls, ref.name)


class FakeNode:
    def __init__(self, index: int, calls: list[tuple[Any, ...]]) -> None:
        self.host = Host(f"n{index}", index, f"10.0.0.{index}", f"ns{index}")
        self.pid = 100 + index
        self.calls = calls
        self.up = True

    def alive(self) -> bool:
        return self.up

    def kill(self) -> None:
        self.up = False
        self.calls.append(("kill", self.host.name))

    def restart(self) -> FakeNode:
        self.up = True
        self.calls.append(("restart", self.host.name))
        return self

    def pause(self) -> None:
        self.calls.append(("pause", self.host.name))

    def resume(self) -> None:
        self.calls.append(("resume", self.host.name))


def _plain(arg: Any) -> Any:
    if isinstance(arg, Host):
        return arg.name
    if isinstance(arg, list | tuple):
        return tuple(_plain(item) for item in arg)
    return arg


def nemesis(seed: int, recorder: Recorder | None = None,
            kinds: tuple[str, ...] = ALL_KINDS) -> tuple[Nemesis, FakeHarness]:
    harness = FakeHarness()
    nodes = [FakeNode(i, harness.calls) for i in (1, 2, 3, 4, 5)]
    return Nemesis(harness, random.Random(seed), nodes, kinds, recorder), harness  # type: ignore[arg-type]


def test_a_seed_names_the_same_faults_and_steps_alternate_fault_and_heal() -> None:
    first, harness_a = nemesis(42)
    second, harness_b = nemesis(42)
    done = [first.step() for _ in range(200)]
    assert [second.step() for _ in range(200)] == done
    assert harness_a.calls == harness_b.calls
    assert [text.split()[0] for text in done] == [FAULT_F, HEAL_F] * 100
    assert first.faults == 100 and first.events == done
    kinds = {text.split()[1] for text in done}
    assert kinds == set(ALL_KINDS), kinds


def test_each_fault_is_undone_by_its_heal() -> None:
    nem, harness = nemesis(1, kinds=("kill",))
    nem.step()
    assert harness.calls[-1][0] == "kill"
    nem.step()
    assert harness.calls[-1] == ("restart", harness.calls[-2][1])
    nem, harness = nemesis(1, kinds=("split",))
    nem.step()
    name, minority, majority = harness.calls[-1]
    assert name == "split" and 1 <= len(minority) <= 2 and len(minority) + len(majority) == 5
    nem.step()
    assert harness.calls[-1] == ("heal",)


def test_heal_all_restarts_what_is_down_and_resets_clocks() -> None:
    nem, harness = nemesis(3, kinds=("kill", "clock"))
    while not any(call[0] == "kill" for call in harness.calls):
        nem.step()
    killed = next(call[1] for call in harness.calls if call[0] == "kill")
    nem.heal_all()
    assert ("restart", killed) in harness.calls and ("heal",) in harness.calls
    assert {call[1] for call in harness.calls if call[0] == "clock.set"} >= {"n1", "n5"}
    assert all(node.alive() for node in nem.nodes)


def test_faults_and_heals_are_recorded_in_the_history() -> None:
    recorder = Recorder()
    nem, _ = nemesis(5, recorder)
    nem.run(_stopping_after(nem, 6), pause_s=(0.0, 0.0))
    ops = recorder.history().operations()
    assert [op.f for op in ops] == [FAULT_F, HEAL_F] * 3
    assert {op.process for op in ops} == {NEMESIS_PROCESS} and all(op.ok for op in ops)
    assert [f"{op.f} {op.value}" for op in ops] == nem.events


def _stopping_after(nem: Nemesis, steps: int) -> threading.Event:
    stop = threading.Event()
    real = nem.step

    def counted() -> str:
        text = real()
        if len(nem.events) >= steps:
            stop.set()
        return text

    nem.step = counted  # type: ignore[method-assign]
    return stop


def test_unknown_kinds_and_no_nodes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        nemesis(1, kinds=("flood",))
    with pytest.raises(ValueError, match="at least one node"):
        Nemesis(FakeHarness(), random.Random(1), [])  # type: ignore[arg-type]


def test_finish_leaves_history_and_report_only_on_failure(tmp_path: Path) -> None:
    recorder = Recorder()
    recorder.invoke(0, "write", "k", 1).ok()
    recorder.invoke(NEMESIS_PROCESS, FAULT_F, "kill", "kill n1").ok("kill n1")
    history = recorder.history()
    good = finish("toy", 7, history, [CheckResult("c", True, "fine")], 1, tmp_path / "good")
    assert good.passed and good.operations == 1 and good.violations == 0
    assert not (tmp_path / "good").exists()
    bad = finish("toy", 7, history, [CheckResult("c", True, "fine"),
                                     CheckResult("d", UNKNOWN, "ran out")], 1, tmp_path / "bad")
    assert not bad.passed and bad.violations == 1
    assert len(History.read_jsonl(tmp_path / "bad" / HISTORY_FILE)) == 4
    assert "ran out" in (tmp_path / "bad" / REPORT_FILE).read_text()
    assert "outcomes: write ok=1 fail=0 info=0" in bad.report()


def test_the_registry_and_the_runner_table() -> None:
    assert next(iter(DRILLS)) == "raft"
    rounds = [run_drills.Round("raft", 11, 20, operations=100, faults=4),
              run_drills.Round("raft", 12, 30, operations=50, faults=2, violations=1),
              run_drills.Round("idgen", 13, 9, operations=10, faults=1)]
    text = run_drills.table(rounds, ["raft", "idgen"])
    lines = text.splitlines()
    assert lines[2].split()[:6] == ["raft", "2", "150", "6", "1", "0"]
    assert lines[2].endswith("failing: 12")
    assert lines[3].endswith("all: 13")
    assert "--one raft --seed 12 --duration 30" in lines[4]
    assert DrillReport("x", 1, 0, 0, [], Path()).passed


def test_a_preferred_node_is_hit_more_often() -> None:
    harness = FakeHarness()
    nodes = [FakeNode(i, harness.calls) for i in (1, 2, 3, 4, 5)]
    nem = Nemesis(harness, random.Random(9), nodes, ("kill", "isolate"),  # type: ignore[arg-type]
                  prefer=lambda: nodes[2])
    for _ in range(200):
        nem.step()
    hits = [call[1] for call in harness.calls if call[0] in ("kill", "isolate")]
    assert len(hits) == 100
    assert hits.count("n3") >= 40, hits  # about 60 expected; 20 with no preference


def test_several_faults_at_once_one_per_family() -> None:
    nem, harness = nemesis(17)
    nem.max_faults = 3
    most = 0
    for _ in range(300):
        nem.step()
        held = [fault.kind for fault in nem._held]
        most = max(most, len(held))
        families = [k in ("kill", "pause") and "process" or k == "clock" and "clock" or "network"
                    for k in held]
        assert len(families) == len(set(families)), held
    assert most == 3
    assert nem.faults > 150
    nem.heal_all()
    assert nem._held == [] and harness.calls[-1][0] == "clock.set"
    with pytest.raises(ValueError, match="one kind"):
        nemesis(1, kinds=())
