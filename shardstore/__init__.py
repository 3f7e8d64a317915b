"""shardstore: a durable key-value store sharded over Raft groups, Redis Cluster on the wire.

Phase 1 (issue 12): one keyspace of 16384 hash slots split evenly over `--shards` shards,
each a Raft group of `--replicas` nodes whose state machine is the storage engine
(shardstore/engine) under the command layer (shardstore/commands.py). The slot map lives in
the configuration group 0 (shardstore/cluster.py); the daemon (shardstore/server.py) hosts
group 0 and the shard groups the map gives this node, answers `-MOVED` for the rest and the
Redis Cluster commands in Redis's formats. Run with `python -m shardstore serve ...`.
"""
