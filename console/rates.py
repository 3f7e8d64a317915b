"""The console's chart series, from counter deltas between consecutive snapshots.

Strategy: the daemons report counters (INFO's `total_commands_processed`, the scheduler's
`runs_fired`, kvcache's `cmd_get` and `cmd_set`); a rate is the difference of one node's
counter between two polls divided by the time between them, summed over the nodes. A
counter that went down (the node restarted) contributes nothing for that step. Lateness is
how long after its scheduled slot a run started (`started_ms - slot_ms`), over the runs that
first appear as started in this poll's job histories. Each series keeps the last
CHART_POINTS points as [time_ms, value] pairs; a value may be None (nothing to show).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any, Final

__all__ = ["CHART_POINTS", "Rates"]

CHART_POINTS: Final = 120
MAX_SEEN_RUNS: Final = 10_000  # run ids remembered so a run's lateness is counted once

Point = list[Any]  # [time_ms, value or None]


class Rates:
    """Feed snapshots in order with `add(time_ms, snapshot)`; `series()` gives the charts."""

    def __init__(self) -> None:
        self._last_ms: int | None = None
        self._counters: dict[str, int] = {}  # "daemon/address/counter" -> last value
        self._seen: dict[str, None] = {}  # run ids already counted, oldest first
        self._series: dict[str, deque[Point]] = {}

    def add(self, time_ms: int, snapshot: dict[str, Any]) -> None:
        """Take one snapshot taken at `time_ms`."""
        elapsed = (time_ms - self._last_ms) / 1000 if self._last_ms is not None else 0.0
        counters = dict(_counters(snapshot))
        if elapsed > 0:
            for name, value in self._rates(counters, elapsed).items():
                self._point(name, time_ms, value)
            self._point("lateness_ms", time_ms, self._lateness(snapshot))
        else:
            self._lateness(snapshot)  # the first poll's runs are history, not news
        self._counters.update(counters)
        self._last_ms = time_ms

    def series(self) -> dict[str, list[Point]]:
        """Every series: "fires_per_s", "lateness_ms", "ops_per_s/<daemon>"."""
        return {name: list(points) for name, points in sorted(self._series.items())}

    def _point(self, name: str, time_ms: int, value: float | None) -> None:
        points = self._series.setdefault(name, deque(maxlen=CHART_POINTS))
        points.append([time_ms, None if value is None else round(value, 3)])

    def _rates(self, counters: dict[str, int], elapsed: float) -> dict[str, float]:
        rates: dict[str, float] = {}
        for key, value in counters.items():
            daemon, _, counter = key.split("|")
            series = "fires_per_s" if counter == "runs_fired" else f"ops_per_s/{daemon}"
            before = self._counters.get(key)
            delta = value - before if before is not None and value >= before else 0
            rates[series] = rates.get(series, 0.0) + delta / elapsed
        return rates

    def _lateness(self, snapshot: dict[str, Any]) -> float | None:
        late = []
        for run in _runs(snapshot):
            run_id, started, slot = run.get("run_id"), run.get("started_ms"), run.get("slot_ms")
            if not isinstance(run_id, str) or not isinstance(started, int) or started < 0:
                continue
            if run_id in self._seen or not isinstance(slot, int):
                continue
            self._seen[run_id] = None
            late.append(max(0, started - slot))
        while len(self._seen) > MAX_SEEN_RUNS:
            del self._seen[next(iter(self._seen))]
        return sum(late) / len(late) if late else None


def _counters(snapshot: dict[str, Any]) -> Iterator[tuple[str, int]]:
    for daemon, part in snapshot.items():
        for node in part.get("nodes", []) if isinstance(part, dict) else []:
            info = node.get("info", {})
            yield from _ints(daemon, node["address"], info.get("stats", {}),
                             ("total_commands_processed",))
            yield from _ints(daemon, node["address"], info.get("scheduler", {}),
                             ("runs_fired",))
    for server in snapshot.get("kvcache", {}).get("servers", []):
        yield from _ints("kvcache", server["address"], server.get("stats", {}),
                         ("cmd_get", "cmd_set"))


def _ints(daemon: str, address: str, figures: dict[str, Any],
          names: tuple[str, ...]) -> Iterator[tuple[str, int]]:
    for name in names:
        try:
            yield f"{daemon}|{address}|{name}", int(figures[name])
        except (KeyError, TypeError, ValueError):
            continue


def _runs(snapshot: dict[str, Any]) -> Iterator[dict[str, Any]]:
    jobs = snapshot.get("scheduler", {}).get("jobs", [])
    for job in jobs if isinstance(jobs, list) else []:
        for run in job.get("history", []):
            if isinstance(run, dict):
                yield run
