"""shardstore: a durable key-value store sharded over Raft groups, Redis Cluster on the wire.

Phase 1 (issue 12): one keyspace of 16384 hash slots split evenly over `--shards` shards,
each a Raft group of `--replicas` nodes whose state machine is the storage engine
(shardstore/engine) under the command layer (shardstore/commands.py), applied by
shardstore/machine.py. The slot map lives in the configuration group 0
(shardstore/cluster.py; the CLUSTER replies: shardstore/cluster_replies.py); a node
(shardstore/server.py) hosts group 0 and the shard groups the map gives it, and its client
port (shardstore/handlers.py) routes each request by its keys' slot: through the shard's
Raft group, or `-MOVED` to the node that leads it. Run with `python -m shardstore serve`;
shardstore/launch.py is its part of `make run`. shardstore/client.py holds the
cluster-aware clients (blocking and asyncio), shardstore/client_core.py what they share.
"""
