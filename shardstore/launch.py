"""shardstore's part of `make run`: four nodes on loopback making one cluster of two
keyspaces: `default` on nodes 1-3 (three shards of three replicas) and `users` on node 4
(three shards of one replica), each keyspace its own Redis Cluster. Node N serves clients
on 7600 + N and Raft on 7700 + N, with its data under var/shardstore-ks-N (not the
one-keyspace layout's var/shardstore-N: a configuration group is made once, by its
founders). The router on 7690 is one address for clients that are not cluster-aware, in
front of the `default` keyspace's nodes."""

from __future__ import annotations

import sys
from pathlib import Path

from core.launch_spec import LOOPBACK, LocalCluster, Process

NODE_IDS = [1, 2, 3, 4]
KEYSPACES = {"default": [1, 2, 3], "users": [4]}
CLIENT_PORT_BASE = 7600  # node N serves clients on 7600 + N
PEER_PORT_BASE = 7700  # and Raft on 7700 + N
SHARDS = 3  # per keyspace
REPLICAS = 3  # at most the keyspace's nodes
ROUTER_PORT = 7690

TRY = [
    "  redis-cli -c -p 7601 SET user:1 alice        # any node: the write goes to the leader",
    "  redis-cli -c -p 7602 GET user:1",
    "  redis-cli -c -p 7601 MSET {user1}:a 1 {user1}:b 2   # one slot by the hash tag",
    "  redis-cli -p 7601 CLUSTER SLOTS              # ranges, leader first, then replicas",
    "  redis-cli -c -p 7604 SET user:1 bob          # keyspace users: a cluster of its own",
    "  redis-cli -p 7601 KEYSPACE.LIST",
    "  redis-cli -p 7603 INFO shardstore            # shards hosted and led, engine figures",
    "  .venv/bin/python -m shardstore admin --node 127.0.0.1:7601 reshard --from 1 --to 2 "
    "--slots 100",
    "  .venv/bin/python -m shardstore admin --node 127.0.0.1:7601 check",
    "  redis-cli -p 7690 MSET a 1 b 2 c 3            # the router: no -c, split by shard",
    "  redis-cli -p 7690 MGET a b c",
    '  .venv/bin/python -c "from redis.cluster import RedisCluster; \\',
    "c = RedisCluster(host='127.0.0.1', port=7601); c.set('k', 'v'); print(c.get('k'))\"",
]


def _node(var: Path, node_id: int) -> Process:
    port = CLIENT_PORT_BASE + node_id
    peers = ",".join(f"{i}={LOOPBACK}:{PEER_PORT_BASE + i}" for i in NODE_IDS)
    spaces = [arg for name, ids in KEYSPACES.items()
              for arg in ("--keyspace", f"{name}={','.join(map(str, ids))}")]
    argv = [
        sys.executable, "-m", "shardstore", "serve", "--id", str(node_id),
        "--listen", f"{LOOPBACK}:{port}",
        "--peer-listen", f"{LOOPBACK}:{PEER_PORT_BASE + node_id}", "--peers", peers,
        "--data-dir", str(var / f"shardstore-ks-{node_id}"),
        "--shards", str(SHARDS), "--replicas", str(REPLICAS), *spaces,
    ]
    space = next(name for name, ids in KEYSPACES.items() if node_id in ids)
    note = f"(node {node_id}, keyspace {space}, Raft on {LOOPBACK}:{PEER_PORT_BASE + node_id})"
    return Process(f"shardstore-{node_id}", argv, LOOPBACK, port, note)


def _router() -> Process:
    nodes = ",".join(f"{LOOPBACK}:{CLIENT_PORT_BASE + i}" for i in KEYSPACES["default"])
    argv = [sys.executable, "-m", "shardstore", "router", "--listen",
            f"{LOOPBACK}:{ROUTER_PORT}", "--nodes", nodes]
    return Process("shardstore-router", argv, LOOPBACK, ROUTER_PORT,
                   "(in front of keyspace default, for clients that are not cluster-aware)")


def local_cluster(var: Path) -> LocalCluster:
    """The four shardstore nodes and the router (see the module header)."""
    return LocalCluster([*(_node(var, node_id) for node_id in NODE_IDS), _router()], TRY)
