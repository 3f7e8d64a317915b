"""shardstore's part of `make run`: three nodes on loopback making one cluster of three
shards of three replicas. Node N serves clients on 7600 + N and Raft on 7700 + N, with its
data under var/shardstore-N. Out of scope in this phase: resharding, keyspaces and tables,
the router, range tables (issue 12)."""

from __future__ import annotations

import sys
from pathlib import Path

from core.launch_spec import LOOPBACK, LocalCluster, Process

NODE_IDS = [1, 2, 3]
CLIENT_PORT_BASE = 7600  # node N serves clients on 7600 + N
PEER_PORT_BASE = 7700  # and Raft on 7700 + N
SHARDS = 3
REPLICAS = 3

TRY = [
    "  redis-cli -c -p 7601 SET user:1 alice        # any node: the write goes to the leader",
    "  redis-cli -c -p 7602 GET user:1",
    "  redis-cli -c -p 7601 MSET {user1}:a 1 {user1}:b 2   # one slot by the hash tag",
    "  redis-cli -p 7601 CLUSTER SLOTS              # ranges, leader first, then replicas",
    "  redis-cli -p 7601 CLUSTER NODES",
    "  redis-cli -p 7603 INFO shardstore            # shards hosted and led, engine figures",
    '  .venv/bin/python -c "from redis.cluster import RedisCluster; \\',
    "c = RedisCluster(host='127.0.0.1', port=7601); c.set('k', 'v'); print(c.get('k'))\"",
]


def _node(var: Path, node_id: int) -> Process:
    port = CLIENT_PORT_BASE + node_id
    peers = ",".join(f"{i}={LOOPBACK}:{PEER_PORT_BASE + i}" for i in NODE_IDS)
    argv = [
        sys.executable, "-m", "shardstore", "serve", "--id", str(node_id),
        "--listen", f"{LOOPBACK}:{port}",
        "--peer-listen", f"{LOOPBACK}:{PEER_PORT_BASE + node_id}", "--peers", peers,
        "--data-dir", str(var / f"shardstore-{node_id}"),
        "--shards", str(SHARDS), "--replicas", str(REPLICAS),
    ]
    note = f"(node {node_id}, Raft on {LOOPBACK}:{PEER_PORT_BASE + node_id})"
    return Process(f"shardstore-{node_id}", argv, LOOPBACK, port, note)


def local_cluster(var: Path) -> LocalCluster:
    """The three shardstore nodes (see the module header)."""
    return LocalCluster([_node(var, node_id) for node_id in NODE_IDS], TRY)
