"""kvcache's Prometheus metrics, for `kvcache serve` and `kvcache proxy` with
`--metrics-listen H:P` (served by core/metrics.py).

Strategy: read at scrape time the very lines `stats` prints (kvcache/stats.py `general`
for the server, ProxyServer's `_general`/`_backends` for the proxy) and name them as
Prometheus asks: the hit ratio's inputs `kvcache_get_hits_total`/`kvcache_get_misses_total`,
evictions, items and bytes, connections and traffic, commands by `cmd`; the proxy's per
backend health, requests and latency (label `backend`, HOST:PORT). Nothing is counted again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, Metric

from core.metrics_collectors import (
    COUNTER,
    GAUGE,
    Figure,
    FigureCollector,
    histogram_buckets,
    histogram_sum,
    process_collector,
)
from kvcache import stats

if TYPE_CHECKING:
    from kvcache.proxy_server import ProxyServer
    from kvcache.server import KvcacheServer

__all__ = ["PREFIX", "PROXY_PREFIX", "collectors", "proxy_collectors"]

PREFIX = "kvcache"
PROXY_PREFIX = "kvcache_proxy"
SERVER_COMMANDS = ("get", "set", "flush", "touch", "meta")  # stats' cmd_<name> lines

TRAFFIC = (
    Figure("curr_connections", "connected_clients", GAUGE, "Client connections open"),
    Figure("total_connections", "connections_received", COUNTER,
           "Client connections accepted"),
    Figure("rejected_connections", "rejected_connections", COUNTER,
           "Client connections refused (-c)"),
    Figure("bytes_read", "read_bytes", COUNTER, "Bytes read from clients"),
    Figure("bytes_written", "written_bytes", COUNTER, "Bytes written to clients"),
    Figure("get_hits", "get_hits", COUNTER, "Keys asked for and found (hit ratio: "
           "get_hits / (get_hits + get_misses))"),
    Figure("get_misses", "get_misses", COUNTER, "Keys asked for and not found"),
)

SERVER_FIGURES = (
    *TRAFFIC,
    Figure("get_expired", "get_expired", COUNTER, "Keys asked for that had expired"),
    Figure("evictions", "evictions", COUNTER,
           "Items evicted to make room before their expiry"),
    Figure("evicted_unfetched", "evicted_unfetched", COUNTER,
           "Evicted items that were never read"),
    Figure("reclaimed", "reclaimed", COUNTER, "Expired items whose memory was reused"),
    Figure("curr_items", "items", GAUGE, "Items stored now"),
    Figure("total_items", "items_stored", COUNTER, "Items stored since the start"),
    Figure("bytes", "stored_bytes", GAUGE, "Bytes the stored items take"),
    Figure("limit_maxbytes", "limit_bytes", GAUGE, "Memory the cache may use (-m)"),
    Figure("slabs_moved", "slab_pages_moved", COUNTER, "Slab pages moved between classes"),
)

PROXY_FIGURES = (
    *TRAFFIC,
    Figure("proxy_errors", "errors", COUNTER, "SERVER_ERROR replies the proxy made itself"),
    Figure("backends", "backends", GAUGE, "Backends in the pool"),
    Figure("backends_down", "backends_down", GAUGE, "Backends marked down"),
)


class CommandCounts:
    """`<prefix>_commands_total{cmd}` from (name, count) pairs `read()` gives."""

    def __init__(self, prefix: str, read: Callable[[], Iterator[tuple[str, int]]]) -> None:
        self.prefix = prefix
        self.read = read

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(f"{self.prefix}_commands", "Commands run, by command",
                                     labels=["cmd"])
        for name, count in sorted(self.read()):
            family.add_metric([name], count)
        yield family


class CommandLatencies:
    """`kvcache_command_duration_seconds{cmd}`: the connections' timed reads (one in 8, by
    their first command: a read of one command is that command's latency; see
    kvcache/latency.py)."""

    def __init__(self, server: KvcacheServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            f"{PREFIX}_command_duration_seconds", "Time to answer a client's read, by its "
            "first command (one read in 8; a read holds one command unless the client "
            "pipelines)", labels=["cmd"])
        for name, figures in sorted(self.server.latency.by_command.items()):
            family.add_metric([name], histogram_buckets(figures), histogram_sum(figures))
        yield family


def _server_commands(server: KvcacheServer) -> Iterator[tuple[str, int]]:
    lines = _server_stats(server)
    for name in SERVER_COMMANDS:
        yield name, int(lines[f"cmd_{name}"])


def _server_stats(server: KvcacheServer) -> dict[str, Any]:
    return dict(stats.general(server.view, server.settings, server.storage))


def collectors(server: KvcacheServer) -> list[Collector]:
    """The collectors of one `kvcache serve` endpoint."""
    return [
        CommandCounts(PREFIX, lambda: _server_commands(server)),
        CommandLatencies(server),
        FigureCollector(PREFIX, lambda: _server_stats(server), SERVER_FIGURES),
        process_collector(),
    ]


# -- the proxy ------------------------------------------------------------------------------------
class BackendCollector:
    """Per backend of a proxy's pool: up, requests, errors, timeouts, marks down, latency."""

    def __init__(self, proxy: ProxyServer) -> None:
        self.proxy = proxy

    def collect(self) -> Iterator[Metric]:
        p, labels = PROXY_PREFIX, ["backend"]
        up = GaugeMetricFamily(f"{p}_backend_up", "1 while the backend is not marked down",
                               labels=labels)
        counters = {
            "requests": CounterMetricFamily(f"{p}_backend_requests", "Requests sent",
                                            labels=labels),
            "errors": CounterMetricFamily(f"{p}_backend_errors", "Requests failed",
                                          labels=labels),
            "timeouts": CounterMetricFamily(f"{p}_backend_timeouts", "Requests timed out",
                                            labels=labels),
            "marked_down": CounterMetricFamily(f"{p}_backend_marked_down",
                                               "Times the backend was marked down",
                                               labels=labels),
        }
        duration = HistogramMetricFamily(f"{p}_backend_request_duration_seconds",
                                         "Time a backend took to answer", labels=labels)
        pool = self.proxy.pool
        for address, backend in sorted(pool.backends.items()):
            hist = backend.latency
            up.add_metric([address], float(not pool.router.health[address].down))
            for name, value in (("requests", hist.calls), ("errors", hist.errors),
                                ("timeouts", backend.timeouts),
                                ("marked_down", backend.marked_down)):
                counters[name].add_metric([address], value)
            duration.add_metric([address], histogram_buckets(hist), histogram_sum(hist))
        yield up
        yield from counters.values()
        yield duration


def _proxy_commands(proxy: ProxyServer) -> Iterator[tuple[str, int]]:
    for name, count in proxy.counters.commands.items():
        yield name.decode("ascii", "replace").lower(), count


def proxy_collectors(proxy: ProxyServer) -> list[Collector]:
    """The collectors of one `kvcache proxy` endpoint."""
    return [
        CommandCounts(PROXY_PREFIX, lambda: _proxy_commands(proxy)),
        FigureCollector(PROXY_PREFIX, lambda: dict(proxy._general()), PROXY_FIGURES),
        BackendCollector(proxy),
        process_collector(),
    ]
