"""dfs's Prometheus metrics, for a master (`dfs master`) and a chunk server
(`dfs chunkserver`) with `--metrics-listen H:P` (served by core/metrics.py).

Strategy: read at scrape time what FS.REPORT and the chunk server's STAT already compute.
A master: its RESP commands, its Raft group, and the chunk placement's live view (chunks,
under-replicated chunks: the replication backlog, chunk servers, their space, safe mode).
That view is the leader's: a follower hears no heartbeats and reports an empty one. A chunk
server: the replicas it holds, their bytes and the free space of its disk.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, Metric

from core.metrics_collectors import (
    CommandCollector,
    RaftCollector,
    RespCollector,
    process_collector,
)

if TYPE_CHECKING:
    from dfs.chunkserver import ChunkServer
    from dfs.master import Master

__all__ = ["CHUNKSERVER_PREFIX", "MASTER_PREFIX", "chunkserver_collectors",
           "master_collectors"]

MASTER_PREFIX = "dfs_master"
CHUNKSERVER_PREFIX = "dfs_chunkserver"


class PlacementCollector:
    """The chunk placement's live view, as FS.REPORT shows it."""

    def __init__(self, master: Master) -> None:
        self.master = master

    def collect(self) -> Iterator[Metric]:
        p = MASTER_PREFIX
        placement = self.master.chunks.placement
        servers = list(placement.servers.values())
        now = time.monotonic()

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{p}_{name}", doc, value=value)

        yield gauge("chunks", "Chunks of the namespace", len(self.master.chunk_table.chunks))
        yield gauge("under_replicated_chunks", "Chunks with fewer live replicas than the "
                    "replication factor (the re-replication backlog)",
                    len(placement.under_replicated()))
        yield gauge("chunk_servers", "Chunk servers that reported", len(servers))
        yield gauge("safe_mode", "1 while the master waits for chunk servers to report",
                    float(not placement.safe))
        yield gauge("used_bytes", "Bytes the chunk servers' replicas take",
                    sum(s.used for s in servers))
        yield gauge("free_bytes", "Free bytes the chunk servers report",
                    sum(s.free for s in servers))
        labels = ["server"]
        families = {
            "used": GaugeMetricFamily(f"{p}_server_used_bytes", "Bytes of a chunk server's "
                                      "replicas", labels=labels),
            "free": GaugeMetricFamily(f"{p}_server_free_bytes", "A chunk server's free "
                                      "bytes", labels=labels),
            "chunks": GaugeMetricFamily(f"{p}_server_chunks", "Replicas a chunk server "
                                        "holds", labels=labels),
            "silent": GaugeMetricFamily(f"{p}_server_silent_seconds", "Time since a chunk "
                                        "server's last heartbeat", labels=labels),
        }
        for server in sorted(servers, key=lambda s: s.address):
            row = [server.address]
            families["used"].add_metric(row, server.used)
            families["free"].add_metric(row, server.free)
            families["chunks"].add_metric(row, len(server.chunks))
            families["silent"].add_metric(row, max(0.0, now - server.last_seen))
        yield from families.values()


def master_collectors(master: Master) -> list[Collector]:
    """The collectors of one dfs master's endpoint."""
    return [
        RespCollector(MASTER_PREFIX, master.service.resp),
        RaftCollector(MASTER_PREFIX, lambda: master.service.directory),
        PlacementCollector(master),
        process_collector(),
    ]


class StoreCollector:
    """A chunk server's replicas and space, as its STAT reply shows them."""

    def __init__(self, server: ChunkServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        store: Any = self.server.store
        p = CHUNKSERVER_PREFIX
        yield GaugeMetricFamily(f"{p}_chunks", "Chunk replicas held",
                                value=len(store.replicas))
        yield GaugeMetricFamily(f"{p}_used_bytes", "Bytes the replicas take",
                                value=store.used())
        yield GaugeMetricFamily(f"{p}_free_bytes", "Free bytes of the data directory's disk",
                                value=store.free())
        yield GaugeMetricFamily(f"{p}_damaged_chunks", "Replicas found damaged and not yet "
                                "reported", value=len(self.server.bad))


def chunkserver_collectors(server: ChunkServer) -> list[Collector]:
    """The collectors of one dfs chunk server's endpoint."""
    return [StoreCollector(server),
            CommandCollector(CHUNKSERVER_PREFIX, lambda: server.requests.items()),
            process_collector()]
