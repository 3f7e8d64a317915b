"""The Redis Cluster replies CLUSTER SLOTS, SHARDS, NODES and INFO, in Redis's exact
shapes, built from a node's `ClusterView` (shardstore/cluster.py); sans I/O.

Strategy: each reply is a pure function of the view, so every node answers from the same
configuration and differs only in what it sees itself (`myself`, the leaders of the shards
it hosts, replication offsets). A shard's master is the view's first ordered member; a
shard with no member of known address is left out.
"""

from __future__ import annotations

from typing import Any

from core.resp import Verbatim
from native.crc16 import SLOT_COUNT
from shardstore.cluster import ClusterView

__all__ = ["info_reply", "nodes_reply", "shards_reply", "slots_reply"]


def slots_reply(view: ClusterView) -> list[Any]:
    """CLUSTER SLOTS: [first, last, master, replica...] per range, each node
    [ip, port, name, {}] (Redis 7's shape: an empty map of more networking metadata)."""
    out: list[Any] = []
    for first, last, sid in view.config.ranges:
        members = view.ordered_members(view.config.shards[sid])
        if not members:
            continue
        nodes = [[*_split(view, m), view.name(m), {}] for m in members]
        out.append([first, last, *nodes])
    return out


def _split(view: ClusterView, node_id: int) -> list[Any]:
    host, port = view.host_port(node_id)
    return [host.encode(), port]


def shards_reply(view: ClusterView) -> list[Any]:
    """CLUSTER SHARDS: per shard a map of "slots" (flat first/last pairs) and "nodes"
    (maps of id, port, ip, endpoint, replication-offset, role, health)."""
    out: list[Any] = []
    for sid, shard in sorted(view.config.shards.items()):
        slots: list[int] = []
        for first, last in view.config.shard_ranges(sid):
            slots.extend((first, last))
        members = view.ordered_members(shard)
        nodes = [_shard_node(view, sid, m, role="master" if i == 0 else "replica")
                 for i, m in enumerate(members)]
        out.append({b"slots": slots, b"nodes": nodes})
    return out


def _shard_node(view: ClusterView, sid: int, node_id: int, role: str) -> dict[bytes, Any]:
    host, port = view.host_port(node_id)
    return {b"id": view.name(node_id).encode(), b"port": port, b"ip": host.encode(),
            b"endpoint": host.encode(), b"role": role.encode(),
            b"replication-offset": view.offsets.get(sid, 0), b"health": b"online"}


def nodes_reply(view: ClusterView) -> Verbatim:
    """CLUSTER NODES: one line per node with a known address. A node that is the master of
    some shard is a master with those shards' slots; any other is a replica ("slave") of
    the master of the first shard it is a member of."""
    masters = view.masters()
    lines = []
    for node_id in sorted(view.addresses):
        led = [sid for sid, m in masters.items() if m == node_id]
        flags = ["myself"] if node_id == view.me else []
        if led:
            flags.append("master")
            master = "-"
            slots = [f"{a}-{b}" if a != b else str(a)
                     for a, b, sid in view.config.ranges if sid in led]
        else:
            flags.append("slave")
            hosted = view.config.hosted_by(node_id)
            lead = masters.get(hosted[0].shard_id) if hosted else None
            master = view.name(lead) if lead else "-"
            slots = []
        host, port = view.host_port(node_id)
        address = f"{host}:{port}@{view.bus_ports.get(node_id, 0)}"
        fields = [view.name(node_id), address, ",".join(flags), master, "0", "0",
                  str(view.config.epoch), "connected", *slots]
        lines.append(" ".join(fields))
    return Verbatim("".join(line + "\n" for line in lines))


def info_reply(view: ClusterView) -> Verbatim:
    """CLUSTER INFO: Redis's fields, `cluster_state:ok` once the map exists and every
    shard's members (addresses, names) and leader are known (`ClusterView.complete`)."""
    config = view.config
    ok = view.complete
    assigned = SLOT_COUNT if config.initialised else 0
    fields = {
        "cluster_state": "ok" if ok else "fail",
        "cluster_slots_assigned": assigned,
        "cluster_slots_ok": assigned if ok else 0,
        "cluster_slots_pfail": 0,
        "cluster_slots_fail": 0 if ok else assigned,
        "cluster_known_nodes": len(view.addresses),
        "cluster_size": len(config.shards),
        "cluster_current_epoch": config.epoch,
        "cluster_my_epoch": config.epoch,
        "cluster_stats_messages_sent": 0,
        "cluster_stats_messages_received": 0,
        "total_cluster_links_buffer_limit_exceeded": 0,
    }
    return Verbatim("".join(f"{k}:{v}\r\n" for k, v in fields.items()))
