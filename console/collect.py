"""One poll of every daemon the console watches, as one JSON-able snapshot.

Strategy: the console asks each daemon only what its own clients may ask (no command was
added for the console). Every node of a Raft daemon is asked for its own view
(`CLUSTER.INFO`, or `CLUSTER.GROUPS` for shardstore's many groups, and `INFO`), all nodes at
once, so a dead node shows as down and the live ones show the new leader. The cluster-wide
figures come from one node that answers, the leader when one is known: the scheduler's jobs
(`JOB.LIST`, `JOB.GET`, `JOB.HISTORY`), shardstore's keyspaces, tables, slot map and moves
(`KEYSPACE.LIST`, `TABLE.LIST`, `SHARDSTORE.SLOTS`, `SHARDSTORE.MOVES`), the dfs masters'
report of chunk servers and under-replicated chunks (`FS.REPORT`). kvcache servers and the
proxy answer memcached's `stats`. A failed command is reported in place as {"error": text};
nothing one daemon does stops the others from being shown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from console.probes import MemcachedLink, NodeLink, Reply, parse_info
from core.resp_client import RespConnectionError

__all__ = ["DAEMONS", "HISTORY_RUNS", "MAX_JOBS", "RESP_DAEMONS", "Collector", "Targets"]

RESP_DAEMONS: Final = ("scheduler", "shardstore", "dfs", "idgen")
DAEMONS: Final = (*RESP_DAEMONS, "kvcache")
MAX_JOBS: Final = 200  # jobs shown; the page says when there are more
HISTORY_RUNS: Final = 10  # runs shown per job
INFO_SECTIONS: Final = ("server", "clients", "stats", "scheduler", "shardstore", "dfs",
                        "idgen", "memory", "persistence", "replication", "keyspace")
KVCACHE_FIELDS: Final = ("pid", "uptime", "curr_connections", "curr_items", "bytes",
                         "limit_maxbytes", "get_hits", "get_misses", "evictions",
                         "cmd_get", "cmd_set", "total_items", "backends", "backends_down")
ERR_JOB_LIST: Final = "JOB.LIST: unexpected reply"
PROXY_MARK: Final = "proxy_replicas"  # a `stats` field only the kvcache proxy reports


@dataclass
class Targets:
    """What the console watches: addresses per daemon, and the password it reads each RESP
    daemon with (None: the daemon has none)."""

    addresses: dict[str, list[str]] = field(default_factory=dict)
    passwords: dict[str, str | None] = field(default_factory=dict)

    def of(self, daemon: str) -> list[str]:
        """The addresses of `daemon` (empty: not watched)."""
        return self.addresses.get(daemon, [])


class Collector:
    """Holds the links to every node and takes one snapshot per `poll()`."""

    def __init__(self, targets: Targets) -> None:
        self.targets = targets
        self.links = {d: [NodeLink(a, targets.passwords.get(d)) for a in targets.of(d)]
                      for d in RESP_DAEMONS}
        self.caches = [MemcachedLink(a) for a in targets.of("kvcache")]

    async def poll(self) -> dict[str, Any]:
        """One snapshot: a section per watched daemon."""
        parts = await asyncio.gather(self._scheduler(), self._shardstore(), self._dfs(),
                                     self._idgen(), self._kvcache())
        return {name: part for name, part in zip(DAEMONS, parts, strict=True) if part}

    async def close(self) -> None:
        """Close every connection."""
        for links in self.links.values():
            for link in links:
                await link.close()
        for cache in self.caches:
            await cache.close()

    # -- per daemon ----------------------------------------------------------------------

    async def _scheduler(self) -> dict[str, Any] | None:
        links = self.links["scheduler"]
        if not links:
            return None
        nodes = await _views(links, "CLUSTER.INFO")
        source = _source(links, nodes)
        jobs, total = await _jobs(source) if source else ([], 0)
        return {"nodes": nodes, "jobs": jobs, "job_count": total,
                "source": source.address if source else None}

    async def _shardstore(self) -> dict[str, Any] | None:
        links = self.links["shardstore"]
        if not links:
            return None
        nodes = await _views(links, "CLUSTER.GROUPS")
        source = next((link for link in links if link.up), None)
        out: dict[str, Any] = {"nodes": nodes, "source": source.address if source else None}
        if source is not None:
            names = ("keyspaces", "tables", "slots", "moves")
            commands = (("KEYSPACE.LIST",), ("TABLE.LIST",), ("SHARDSTORE.SLOTS",),
                        ("SHARDSTORE.MOVES",))
            out.update(zip(names, await _safe_calls(source, commands), strict=True))
        return out

    async def _dfs(self) -> dict[str, Any] | None:
        links = self.links["dfs"]
        if not links:
            return None
        nodes = await _views(links, "CLUSTER.INFO")
        source = _source(links, nodes)
        report = (await _safe_calls(source, [("FS.REPORT",)]))[0] if source else None
        return {"nodes": nodes, "report": report, "source": source.address if source else None}

    async def _idgen(self) -> dict[str, Any] | None:
        links = self.links["idgen"]
        if not links:
            return None
        return {"nodes": await _views(links, None)}

    async def _kvcache(self) -> dict[str, Any] | None:
        if not self.caches:
            return None
        stats = await asyncio.gather(*(cache.stats() for cache in self.caches))
        servers = [_cache_view(c, s) for c, s in zip(self.caches, stats, strict=True)]
        return {"servers": servers, "pools": _pools(servers)}


async def _view(link: NodeLink, cluster_command: str | None) -> dict[str, Any]:
    """One node's own view: up/down, its cluster reply and INFO figures."""
    view: dict[str, Any] = {"address": link.address}
    try:
        if cluster_command is not None:
            view["cluster"] = await link.call(cluster_command)
        info = await link.call("INFO")
    except RespConnectionError:
        return {**view, "up": False, "error": link.error}
    sections = parse_info(info) if isinstance(info, str) else {}
    view["info"] = {k: v for k, v in sections.items() if k in INFO_SECTIONS}
    view["up"] = True
    return view


async def _views(links: list[NodeLink], cluster_command: str | None) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(_view(link, cluster_command) for link in links)))


def _source(links: list[NodeLink], nodes: list[dict[str, Any]]) -> NodeLink | None:
    """The node to ask cluster-wide questions: a live leader, else any live node."""
    live = [(link, node) for link, node in zip(links, nodes, strict=True) if node["up"]]
    for link, node in live:
        cluster = node.get("cluster")
        if isinstance(cluster, dict) and cluster.get("role") == "leader":
            return link
    return live[0][0] if live else None


async def _safe_calls(link: NodeLink, commands: Iterable[tuple[str | int, ...]]) -> list[Reply]:
    out: list[Reply] = []
    for command in commands:
        try:
            out.append(await link.call(*command))
        except RespConnectionError as exc:
            out.append({"error": str(exc)})
    return out


async def _jobs(link: NodeLink) -> tuple[list[dict[str, Any]] | dict[str, str], int]:
    """The first MAX_JOBS jobs by name, each with its latest runs (newest first), and how
    many jobs there are."""
    try:
        names = await link.call("JOB.LIST")
        if not isinstance(names, list):
            return (names if isinstance(names, dict) else {"error": ERR_JOB_LIST}), 0
        shown = sorted(names)[:MAX_JOBS]
        commands: list[tuple[str | int, ...]] = []
        for name in shown:
            commands += [("JOB.GET", name), ("JOB.HISTORY", name, HISTORY_RUNS)]
        replies = await link.pipeline(commands)  # one round trip for every job
        jobs = []
        for job, history in zip(replies[::2], replies[1::2], strict=True):
            if isinstance(job, dict) and "error" not in job:  # a job deleted meanwhile
                job["history"] = history if isinstance(history, list) else []
                jobs.append(job)
        return jobs, len(names)
    except RespConnectionError as exc:
        return {"error": str(exc)}, 0


def _cache_view(link: MemcachedLink, stats: dict[str, str] | None) -> dict[str, Any]:
    if stats is None:
        return {"address": link.address, "up": False, "error": link.error}
    figures = {k: _number(stats[k]) for k in KVCACHE_FIELDS if k in stats}
    view = {"address": link.address, "up": True, "stats": figures,
            "hit_ratio": _ratio(figures.get("get_hits", 0), figures.get("get_misses", 0)),
            "kind": "proxy" if PROXY_MARK in stats else "server"}
    if PROXY_MARK in stats:  # backend:<host:port>:state lines
        view["backends"] = {k.split(":", 1)[1].rsplit(":", 1)[0]: v for k, v in stats.items()
                            if k.startswith("backend:") and k.endswith(":state")}
    return view


def _ratio(hits: Any, misses: Any) -> float | None:
    if not isinstance(hits, int) or not isinstance(misses, int) or hits + misses == 0:
        return None
    return hits / (hits + misses)


def _pools(servers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The watched cache servers as one pool (what a ketama client sees), and each proxy's
    pool of backends as the proxy counts it."""
    caches = [s for s in servers if s.get("kind") == "server"]
    hits = sum(s["stats"].get("get_hits", 0) for s in caches)
    misses = sum(s["stats"].get("get_misses", 0) for s in caches)
    pools = [{"name": "cache servers", "servers": [s["address"] for s in caches],
              "hit_ratio": _ratio(hits, misses), "get_hits": hits, "get_misses": misses}] \
        if caches else []
    for proxy in (s for s in servers if s.get("kind") == "proxy"):
        stats = proxy["stats"]
        pools.append({"name": f"proxy {proxy['address']}",
                      "servers": sorted(proxy.get("backends", {})),
                      "hit_ratio": proxy["hit_ratio"], "get_hits": stats.get("get_hits", 0),
                      "get_misses": stats.get("get_misses", 0),
                      "down": stats.get("backends_down", 0)})
    return pools


def _number(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text
