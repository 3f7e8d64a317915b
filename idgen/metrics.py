"""idgen's Prometheus metrics (`idgen serve --metrics-listen H:P`, served by core/metrics.py).

Strategy: read at scrape time what INFO's Idgen section prints (idgen/server.py `info`):
ids issued, the waits NEXT took by cause, the durable high-water mark and the time left;
plus the RESP server's per-command figures and the process figures (core/metrics_collectors).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client.registry import Collector

from core.metrics_collectors import (
    COUNTER,
    GAUGE,
    Figure,
    FigureCollector,
    RespCollector,
    process_collector,
)
from idgen.layout import MS_PER_YEAR

if TYPE_CHECKING:
    from idgen.server import IdgenServer

__all__ = ["PREFIX", "collectors"]

PREFIX = "idgen"
MILLISECOND = 0.001
SECONDS_PER_YEAR = MS_PER_YEAR / 1000  # the year years_left counts in

FIGURES = (
    Figure("ids_issued", "ids_issued", COUNTER, "Ids handed out by NEXT"),
    Figure("clock_waits", "clock_waits", COUNTER,
           "Times NEXT waited for a clock that stepped back (within --max-backward-ms)"),
    Figure("sequence_waits", "sequence_waits", COUNTER,
           "Times NEXT waited for the next millisecond (its sequence ran out)"),
    Figure("reserve_waits", "reserve_waits", COUNTER,
           "Times NEXT waited for the durable high-water mark to move ahead"),
    Figure("last_issued_ms", "last_issued_timestamp_seconds", GAUGE,
           "Unix time of the newest id issued", MILLISECOND),
    Figure("durable_hwm_ms", "durable_high_water_mark_seconds", GAUGE,
           "Unix time up to which ids may be issued without another fsync", MILLISECOND),
    Figure("worker_id", "worker_id", GAUGE, "This server's worker id"),
    Figure("years_left", "time_left_seconds", GAUGE,
           "Time before the 41 time bits of the ids run out", SECONDS_PER_YEAR),
)


def collectors(server: IdgenServer) -> list[Collector]:
    """The collectors of one idgen server's endpoint."""
    return [
        RespCollector(PREFIX, server.resp),
        FigureCollector(PREFIX, lambda: server.info()["Idgen"], FIGURES),
        process_collector(),
    ]
