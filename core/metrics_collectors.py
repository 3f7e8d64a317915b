"""The collectors every daemon's metrics share (core/metrics.py serves them).

Strategy: each collector reads, in `collect()`, figures the daemon already keeps and turns
them into Prometheus families; none keeps a counter of its own. Names are
`<daemon>_<what>[_<unit>][_total]` in base units (seconds, bytes), as Prometheus asks:

- `CommandCollector`: per command (label `cmd`, the lower-case command name as INFO's
  commandstats prints it) `_commands_total` (every call), `_command_errors_total` and
  `_command_duration_seconds`, a histogram made of core/stats.py's power-of-two buckets
  (bucket i: below 2**i microseconds). The RESP dispatcher times one command in
  LATENCY_SAMPLE_EVERY, so the histogram's count is the timed calls, not all calls.
- `RespCollector`: the commands of a core.resp_server.RespServer and the figures of its
  INFO Clients and Stats sections (connections, rejected connections, protocol errors,
  bytes read and written).
- `FigureCollector`: named figures picked out of a mapping (an INFO section, `stats`)
  by a table of `Figure` rows: counter or gauge, scaled to base units.
- `RaftCollector`: every Raft group of the process, labelled `group`: term, commit and
  applied index, role, members, leader changes, fsyncs and their duration histogram.
- `process_collector()`: prometheus_client's own process figures (`process_*`: resident
  memory, CPU seconds, open files), read from /proc as psutil reads them for INFO.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from core.stats import LATENCY_BUCKETS, LatencyHistogram

__all__ = ["COUNTER", "GAUGE", "CommandCollector", "Figure", "FigureCollector",
           "RaftCollector", "RespCollector", "histogram_buckets", "process_collector"]

COUNTER = "counter"
GAUGE = "gauge"
MICROSECOND = 1e-6
NANOSECOND = 1e-9


def histogram_buckets(hist: LatencyHistogram) -> list[tuple[str, float]]:
    """Cumulative Prometheus buckets (le in seconds, then +Inf) of a power-of-two histogram.
    Its last bucket holds everything longer, so it becomes +Inf only."""
    out: list[tuple[str, float]] = []
    seen = 0
    for index in range(LATENCY_BUCKETS - 1):
        seen += hist.buckets[index]
        out.append((repr((1 << index) * MICROSECOND), float(seen)))
    out.append(("+Inf", float(hist.count)))
    return out


def histogram_sum(hist: LatencyHistogram) -> float:
    """The histogram's total time in seconds."""
    return hist.total_ns * NANOSECOND


class CommandCollector:
    """Per-command calls, errors and latency; `rows()` gives (name, LatencyHistogram)."""

    def __init__(self, prefix: str,
                 rows: Callable[[], Iterable[tuple[str, LatencyHistogram]]]) -> None:
        self.prefix = prefix
        self.rows = rows

    def collect(self) -> Iterator[Metric]:
        p = self.prefix
        calls = CounterMetricFamily(f"{p}_commands", "Commands run, by command",
                                    labels=["cmd"])
        errors = CounterMetricFamily(f"{p}_command_errors",
                                     "Commands that replied with an error, by command",
                                     labels=["cmd"])
        duration = HistogramMetricFamily(
            f"{p}_command_duration_seconds",
            "Time to run a command (a sample of the calls), by command", labels=["cmd"])
        for name, hist in sorted(self.rows()):
            if not hist.calls:
                continue
            cmd = name.lower()
            calls.add_metric([cmd], hist.calls)
            errors.add_metric([cmd], hist.errors)
            duration.add_metric([cmd], histogram_buckets(hist), histogram_sum(hist))
        yield from (calls, errors, duration)


@dataclass(frozen=True)
class Figure:
    """One figure of a mapping as one metric: `key` in the mapping, the metric `name`
    (without the daemon's prefix; a counter's without `_total`), its `kind` (COUNTER or
    GAUGE), its help text, and `scale` to base units (0.001 for milliseconds)."""

    key: str
    name: str
    kind: str
    doc: str
    scale: float = 1.0


class FigureCollector:
    """The `figures` found in `read()` (missing or non-numeric ones are left out)."""

    def __init__(self, prefix: str, read: Callable[[], Mapping[str, Any]],
                 figures: Sequence[Figure]) -> None:
        self.prefix = prefix
        self.read = read
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        values = self.read()
        for figure in self.figures:
            value = _number(values.get(figure.key))
            if value is None:
                continue
            family = CounterMetricFamily if figure.kind == COUNTER else GaugeMetricFamily
            yield family(f"{self.prefix}_{figure.name}", figure.doc,
                         value=value * figure.scale)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


RESP_FIGURES = (
    Figure("connected_clients", "connected_clients", GAUGE, "Client connections open"),
    Figure("total_connections_received", "connections_received", COUNTER,
           "Client connections accepted"),
    Figure("rejected_connections", "rejected_connections", COUNTER,
           "Client connections refused (maxclients)"),
    Figure("protocol_errors", "protocol_errors", COUNTER,
           "Connections closed on a malformed request"),
    Figure("total_commands_processed", "commands_processed", COUNTER,
           "Commands dispatched, all commands together"),
    Figure("total_net_input_bytes", "read_bytes", COUNTER, "Bytes read from clients"),
    Figure("total_net_output_bytes", "written_bytes", COUNTER, "Bytes written to clients"),
)


class RespCollector:
    """A RespServer's commands and its INFO Clients/Stats figures, under `prefix`."""

    def __init__(self, prefix: str, resp: Any) -> None:
        self.commands = CommandCollector(prefix, lambda: _resp_rows(resp))
        self.figures = FigureCollector(prefix, lambda: _resp_figures(resp), RESP_FIGURES)

    def collect(self) -> Iterator[Metric]:
        yield from self.commands.collect()
        yield from self.figures.collect()


def _resp_rows(resp: Any) -> Iterator[tuple[str, LatencyHistogram]]:
    for row in resp.table.walk():
        if row.command.handler:
            yield row.full_name, row.command.latency


def _resp_figures(resp: Any) -> dict[str, Any]:
    return {"connected_clients": len(resp._connections), "maxclients": resp.limits.max_clients,
            "total_commands_processed": resp.commands_processed, **resp.counters}


class RaftCollector:
    """Every group of `directory()` (a core.raft_groups.GroupDirectory, or None before the
    node has one), labelled `group`, under `<prefix>_raft_`."""

    def __init__(self, prefix: str, directory: Callable[[], Any]) -> None:
        self.prefix = f"{prefix}_raft"
        self.directory = directory

    def collect(self) -> Iterator[Metric]:
        p = self.prefix
        families = {
            "term": GaugeMetricFamily(f"{p}_term", "Current Raft term", labels=["group"]),
            "commit": GaugeMetricFamily(f"{p}_commit_index", "Highest log index known "
                                        "committed", labels=["group"]),
            "applied": GaugeMetricFamily(f"{p}_applied_index", "Highest log index applied "
                                         "to the state machine here", labels=["group"]),
            "last_index": GaugeMetricFamily(f"{p}_last_log_index", "Last index of the log",
                                            labels=["group"]),
            "members": GaugeMetricFamily(f"{p}_members", "Voters of the group",
                                         labels=["group"]),
            "leader": GaugeMetricFamily(f"{p}_is_leader", "1 when this node leads the group",
                                        labels=["group"]),
            "leader_changes": CounterMetricFamily(f"{p}_leader_changes", "Times this node "
                                                  "learnt of a new leader", labels=["group"]),
            "fsyncs": CounterMetricFamily(f"{p}_fsyncs", "Log fsyncs (group commits)",
                                          labels=["group"]),
        }
        duration = HistogramMetricFamily(f"{p}_fsync_duration_seconds", "Time to write and "
                                         "fsync one group commit of the log",
                                         labels=["group"])
        for gid, handle, status in self._groups():
            labels = [str(gid)]
            for key, family in families.items():
                value = _status_value(status, key)
                if value is not None:
                    family.add_metric(labels, value)
            hist = getattr(getattr(handle, "storage", None), "fsync_latency", None)
            if isinstance(hist, LatencyHistogram):
                duration.add_metric(labels, histogram_buckets(hist), histogram_sum(hist))
        yield from families.values()
        yield duration

    def _groups(self) -> Iterator[tuple[int, Any, Mapping[str, Any]]]:
        """(group id, handle, status) of each group open now."""
        directory = self.directory()
        if directory is None:
            return
        for gid in directory.group_ids():
            handle = directory.group(gid)
            if handle is not None:
                try:
                    status = handle.status()
                except (RuntimeError, AssertionError):  # not open yet, or closing
                    continue
                yield gid, handle, status


def _status_value(status: Mapping[str, Any], key: str) -> float | None:
    if key == "members":
        return float(len(status.get("members", ())))
    if key == "leader":
        return float(status.get("role") == "leader")
    return _number(status.get(key))


def process_collector() -> ProcessCollector:
    """prometheus_client's process collector (`process_resident_memory_bytes` and the
    rest), not registered anywhere yet."""
    return ProcessCollector(registry=None)  # type: ignore[arg-type]
