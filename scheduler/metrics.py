"""The scheduler's Prometheus metrics (`scheduler serve --metrics-listen H:P`, served by
core/metrics.py).

Strategy: INFO's Scheduler section (fires, claims, results, heartbeats, jobs, active runs,
live workers), the RESP commands and the Raft group come from core/metrics_collectors.py's
collectors, read at scrape time. The runs themselves are read from the replicated state at
scrape time too (`SchedulerState.runs`, the history the state keeps):

- `scheduler_runs{state}`: the retained runs by state;
- `scheduler_run_lateness_seconds`: a histogram of how late each run started after its
  slot (started_ms - slot_ms, 0 for a run started early);
- `scheduler_lost_runs_total`: attempts declared lost (their worker went silent).

The last two count each run (attempt) once, the first time a scrape sees it started (lost),
so they only grow, as Prometheus wants; a run started and dropped from the history between
two scrapes is not counted. The set of runs already counted holds only runs the state still
keeps, so it stays as small as the history.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, Metric

from core.metrics_collectors import (
    COUNTER,
    GAUGE,
    Figure,
    FigureCollector,
    RaftCollector,
    RespCollector,
    process_collector,
)
from scheduler.runs import LOST, LOST_PREFIX, RunRecord

if TYPE_CHECKING:
    from scheduler.server import SchedulerServer
    from scheduler.state import SchedulerState

__all__ = ["PREFIX", "RunCollector", "collectors"]

PREFIX = "scheduler"
MILLISECOND = 0.001
LATENESS_BUCKETS_MS = tuple(1 << i for i in range(0, 19))  # 1 ms .. about 4 minutes

FIGURES = (
    Figure("runs_fired", "runs_fired", COUNTER, "Runs fired by this node as leader"),
    Figure("fire_entries", "fire_entries", COUNTER,
           "Raft entries that fired runs (a fire entry may hold many runs)"),
    Figure("fires_planned_ahead", "fires_planned_ahead", COUNTER,
           "Fires committed ahead of their slot (--fire-ahead-ms)"),
    Figure("claims", "claims", COUNTER, "Runs claimed by workers through this node"),
    Figure("results", "results", COUNTER, "Run results reported through this node"),
    Figure("heartbeats", "heartbeats", COUNTER, "Worker heartbeats taken by this node"),
    Figure("jobs", "jobs", GAUGE, "Jobs defined"),
    Figure("active_runs", "active_runs", GAUGE, "Runs fired and not finished"),
    Figure("live_workers", "live_workers", GAUGE, "Workers heard from recently"),
)


class RunCollector:
    """Retained runs by state, run lateness and lost runs (see the module header)."""

    def __init__(self, state: SchedulerState) -> None:
        self.state = state
        self.late_counts = [0] * (len(LATENESS_BUCKETS_MS) + 1)  # the last: beyond them
        self.late_sum_ms = 0
        self.lost = 0
        self._started: set[tuple[str, str, int]] = set()  # (job, run id, attempt) counted
        self._lost: set[tuple[str, str, int]] = set()

    def _records(self) -> Iterator[tuple[str, str, RunRecord]]:
        for job, runs in list(self.state.runs.items()):
            for run_id, record in list(runs.items()):
                yield job, run_id, record

    def _take(self) -> Counter[str]:
        """Count the runs not seen before; the retained runs by state."""
        by_state: Counter[str] = Counter()
        started, lost = set(), set()
        for job, run_id, record in self._records():
            by_state[record.state] += 1
            key = (job, run_id, record.attempt)
            if record.started_ms is not None:
                started.add(key)
                if key not in self._started:
                    self._count_late(max(0, record.started_ms - record.slot_ms))
            if record.state == LOST or record.message.startswith(LOST_PREFIX):
                lost.add(key)
                self.lost += key not in self._lost
        self._started, self._lost = started, lost
        return by_state

    def _count_late(self, late_ms: int) -> None:
        self.late_sum_ms += late_ms
        for index, bound in enumerate(LATENESS_BUCKETS_MS):
            if late_ms <= bound:
                self.late_counts[index] += 1
                return
        self.late_counts[-1] += 1

    def collect(self) -> Iterator[Metric]:
        by_state = self._take()
        runs = GaugeMetricFamily(f"{PREFIX}_runs", "Runs the history keeps, by state",
                                 labels=["state"])
        for state, count in sorted(by_state.items()):
            runs.add_metric([state], count)
        yield runs
        buckets, seen = [], 0
        for bound, count in zip(LATENESS_BUCKETS_MS, self.late_counts, strict=False):
            seen += count
            buckets.append((repr(bound * MILLISECOND), float(seen)))
        buckets.append(("+Inf", float(sum(self.late_counts))))
        late = HistogramMetricFamily(f"{PREFIX}_run_lateness_seconds",
                                     "How late runs started after their slot")
        late.add_metric([], buckets, self.late_sum_ms * MILLISECOND)
        yield late
        yield CounterMetricFamily(f"{PREFIX}_lost_runs", "Run attempts declared lost "
                                  "(their worker went silent)", value=self.lost)
        yield GaugeMetricFamily(f"{PREFIX}_missed_slots", "Slots the misfire policy "
                                "dropped, for the jobs defined now",
                                value=sum(self.state.missed.values()))


def collectors(server: SchedulerServer) -> list[Collector]:
    """The collectors of one scheduler node's endpoint."""
    return [
        RespCollector(PREFIX, server.resp),
        FigureCollector(PREFIX, lambda: server.info()["Scheduler"], FIGURES),
        RaftCollector(PREFIX, lambda: server.service.directory),
        RunCollector(server.state),
        process_collector(),
    ]
