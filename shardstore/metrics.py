"""shardstore's Prometheus metrics, for a node (`shardstore serve`) and the router
(`shardstore router`) with `--metrics-listen H:P` (served by core/metrics.py).

Strategy: read at scrape time what INFO prints. A node: its RESP commands, every Raft group
it hosts (the configuration group and each shard's, label `group`), INFO's Shardstore
section (slot moves under way and done, ASK redirections) and Tables section (range reads,
rows verified by table moves), and the table moves under way by state, from the catalog.
The router: its RESP commands and INFO's Router section (commands forwarded, MOVED and ASK
followed, retries, map refreshes).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily
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

if TYPE_CHECKING:
    from shardstore.router import Router
    from shardstore.server import ShardNode

__all__ = ["PREFIX", "ROUTER_PREFIX", "collectors", "router_collectors"]

PREFIX = "shardstore"
ROUTER_PREFIX = "shardstore_router"

NODE_FIGURES = (
    Figure("shards_total", "shards", GAUGE, "Shards of the node's keyspace"),
    Figure("config_epoch", "config_epoch", GAUGE, "Epoch of the slot map this node applied"),
    Figure("moves_under_way", "slot_moves_in_progress", GAUGE, "Slot moves under way"),
    Figure("moves_done", "slot_moves_done", COUNTER, "Slot moves finished"),
    Figure("asks", "asks", COUNTER, "ASK redirections answered for keys already moved"),
    Figure("asking_served", "asking_served", COUNTER, "Commands served under ASKING"),
    Figure("tables", "tables", GAUGE, "Tables of the catalog"),
    Figure("range_reads", "range_reads", COUNTER, "Range reads of RANGE tables served"),
    Figure("range_shards_touched", "range_shards_touched", COUNTER,
           "Shards the range reads touched"),
    Figure("move_rows_verified", "table_move_rows_verified", COUNTER,
           "Rows a table move checked on source and target"),
    Figure("move_verify_mismatches", "table_move_verify_mismatches", COUNTER,
           "Checksum pages that differed between source and target"),
)

ROUTER_FIGURES = (
    Figure("commands_forwarded", "commands_forwarded", COUNTER, "Commands sent on to nodes"),
    Figure("parts_sent", "parts_sent", COUNTER, "Parts of multi-key commands sent"),
    Figure("moved", "moved_followed", COUNTER, "MOVED redirections followed"),
    Figure("ask", "ask_followed", COUNTER, "ASK redirections followed"),
    Figure("retries", "retries", COUNTER, "Requests retried (TRYAGAIN, a node down)"),
    Figure("map_refreshes", "map_refreshes", COUNTER, "Slot map refreshes"),
    Figure("node_failures", "node_failures", COUNTER, "Requests a node failed"),
    Figure("range_reads", "range_reads", COUNTER, "Range reads routed"),
    Figure("range_shards_touched", "range_shards_touched", COUNTER,
           "Shards the range reads touched"),
    Figure("tables", "tables", GAUGE, "Tables the router knows"),
)


def _node_figures(node: ShardNode) -> dict[str, Any]:
    sections = node.info()
    return {**sections["Shardstore"], **sections["Tables"]}


class TableMoves:
    """`shardstore_table_moves{state}`: tables moving to another keyspace, by state."""

    def __init__(self, node: ShardNode) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        states: Counter[str] = Counter()
        for table in self.node.commands.tables.catalog.tables.values():
            moving = getattr(table, "moving", None)
            if moving is not None:
                states[moving.state] += 1
        family = GaugeMetricFamily(f"{PREFIX}_table_moves", "Table moves under way, by "
                                   "state", labels=["state"])
        for state, count in sorted(states.items()):
            family.add_metric([state], count)
        yield family


def collectors(node: ShardNode) -> list[Collector]:
    """The collectors of one shardstore node's endpoint."""
    return [
        RespCollector(PREFIX, node.service.resp),
        RaftCollector(PREFIX, lambda: node.host),
        FigureCollector(PREFIX, lambda: _node_figures(node), NODE_FIGURES),
        TableMoves(node),
        process_collector(),
    ]


def router_collectors(router: Router) -> list[Collector]:
    """The collectors of one shardstore router's endpoint."""
    return [
        RespCollector(ROUTER_PREFIX, router.server),
        FigureCollector(ROUTER_PREFIX, lambda: router.info()["Router"], ROUTER_FIGURES),
        process_collector(),
    ]
