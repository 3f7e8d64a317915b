"""Command line: `shardstore serve ...`, one node of a shardstore cluster.

    shardstore serve --id N --listen H:P --peer-listen H:P --peers 1=H:P,2=H:P,3=H:P \\
        --data-dir D [--shards S] [--replicas R] [--fsync always|everysec] \\
        [--snapshot-every N] [--cluster-secret ...] [--requirepass ...]
    shardstore serve ... --keyspace default=1,2,3 --keyspace users=4    (keyspaces)
    shardstore admin [--node H:P] reshard --from A --to B --slots N | rebalance | check

The shared cluster options are core/cluster_options.py's; `--shards` and `--replicas`
only matter when the cluster is made (the first leader of the configuration group writes
the slot map), and are checked here against the number of `--peers`. `--fsync everysec`
is for single-replica shards only (Raft's votes and log must survive a power cut), as
Redis's `appendfsync everysec`: up to a second of acknowledged writes may be lost.

`shardstore router --listen H:P --nodes H:P,...` runs the RESP proxy for clients that are
not cluster-aware (shardstore/router_cli.py).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from core import cluster_options, daemon
from shardstore import router_cli
from shardstore.admin import add_admin_parser, run_admin
from shardstore.keyspaces import DEFAULT_KEYSPACE, parse_keyspace_option
from shardstore.migrate import BATCH_KEYS
from shardstore.server import COMPACTION_MARGIN, SNAPSHOT_EVERY, NodeOptions, ShardNode

log = logging.getLogger("shardstore")

DEFAULT_PORT = 7600
DEFAULT_PEER_PORT = 7700
DEFAULT_SHARDS = 3
DEFAULT_REPLICAS = 3
ERR_REPLICAS = "--replicas must be 1..{} (the number of --peers)"
ERR_SHARDS = "--shards must be 1..16384"
ERR_EVERYSEC = "--fsync everysec is only allowed with --replicas 1"
ERR_SNAPSHOT = "--snapshot-every must be >= 1"
ERR_KEYSPACE_PEERS = "--keyspace {}: node {} is not one of --peers"
ERR_KEYSPACE_TWICE = "--keyspace: node {} is in two keyspaces (a node serves one)"
ERR_NO_DEFAULT = "--keyspace: the keyspace 'default' needs nodes (keys of no table live there)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shardstore")
    sub = parser.add_subparsers(dest="action", required=True)
    serve = sub.add_parser("serve", help="run a shardstore node")
    daemon.add_common_options(serve, DEFAULT_PORT)
    cluster_options.add_cluster_options(serve, DEFAULT_PEER_PORT)
    serve.add_argument("--keyspace", action="append", default=[], metavar="NAME=ID,...",
                       help="a keyspace of a new cluster and its nodes (repeat; default: "
                            "every node in 'default'); each gets --shards shards")
    serve.add_argument("--shards", type=int, default=DEFAULT_SHARDS,
                       help="shards of a new cluster (16384 slots split evenly)")
    serve.add_argument("--replicas", type=int, default=DEFAULT_REPLICAS,
                       help="nodes per shard of a new cluster (1 or 3)")
    serve.add_argument("--fsync", default="always", choices=["always", "everysec"],
                       help="as Redis's appendfsync (everysec: --replicas 1 only)")
    serve.add_argument("--snapshot-every", type=int, default=SNAPSHOT_EVERY,
                       help="entries a shard applies between snapshots of its engine")
    # Tests make a lagging replica catch up by a snapshot sooner with a small margin.
    serve.add_argument("--compaction-margin", type=int, default=COMPACTION_MARGIN,
                       help=argparse.SUPPRESS)
    # Tests make a move take many small steps, so they can kill a node in the middle.
    serve.add_argument("--move-batch-keys", type=int, default=BATCH_KEYS,
                       help=argparse.SUPPRESS)
    add_admin_parser(sub)  # `shardstore admin`: shardstore/admin.py
    router_cli.add_parser(sub)  # `shardstore router`: shardstore/router_cli.py
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = daemon.parse_args(parser, argv)
        if args.action == "admin":
            return run_admin(args)
        if args.action == "router":
            return router_cli.run(args)
        return serve(args)
    except daemon.ConfigError as exc:
        print(f"shardstore: {exc}", file=sys.stderr)
        return 2


def serve(args: argparse.Namespace) -> int:
    daemon.setup_logging(args.log_level)
    settings = cluster_options.cluster_settings(args, default_port=DEFAULT_PORT,
                                                default_peer_port=DEFAULT_PEER_PORT)
    if not 1 <= args.shards <= 16384:
        raise daemon.ConfigError(ERR_SHARDS)
    if not 1 <= args.replicas <= len(settings.peers):
        raise daemon.ConfigError(ERR_REPLICAS.format(len(settings.peers)))
    if args.fsync == "everysec" and args.replicas != 1:
        raise daemon.ConfigError(ERR_EVERYSEC)
    if args.snapshot_every < 1 or args.compaction_margin < 0:
        raise daemon.ConfigError(ERR_SNAPSHOT)
    options = NodeOptions(shards=args.shards, replicas=args.replicas, fsync=args.fsync,
                          snapshot_every=args.snapshot_every,
                          compaction_margin=args.compaction_margin,
                          move_batch_keys=max(1, args.move_batch_keys),
                          keyspaces=_keyspaces(args.keyspace, set(settings.peers)))

    async def run(stop: asyncio.Event) -> int:
        from core import metrics
        from shardstore import metrics as shardstore_metrics

        node = ShardNode(settings, options)
        try:
            await node.start()
        except OSError as exc:
            log.error("refusing to start: %s", exc)
            return 1
        log.info("shardstore node %d ready on %s (raft %s:%d)", settings.node_id,
                 settings.advertise, *settings.peer_listen)
        endpoint = await metrics.open_endpoint(args, lambda: shardstore_metrics.collectors(node))
        failed = asyncio.ensure_future(node.wait_failed())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({failed, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if failed.done():
            log.error("raft host stopped: %r", failed.exception())
            return 1
        failed.cancel()
        await metrics.close_endpoint(endpoint)
        await node.stop()
        log.info("shardstore node %d stopped", settings.node_id)
        return 0

    return daemon.run(run)


def _keyspaces(options: list[str], peers: set[int]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The --keyspace options, checked: nodes among --peers, each in one keyspace, and a
    `default` keyspace among them."""
    spaces: dict[str, tuple[int, ...]] = {}
    seen: set[int] = set()
    for text in options:
        try:
            name, nodes = parse_keyspace_option(text)
        except ValueError as exc:
            raise daemon.ConfigError(str(exc)) from None
        for node in nodes:
            if node not in peers:
                raise daemon.ConfigError(ERR_KEYSPACE_PEERS.format(name, node))
            if node in seen:
                raise daemon.ConfigError(ERR_KEYSPACE_TWICE.format(node))
            seen.add(node)
        spaces[name] = nodes
    if spaces and DEFAULT_KEYSPACE not in spaces:
        raise daemon.ConfigError(ERR_NO_DEFAULT)
    return tuple(sorted(spaces.items()))


if __name__ == "__main__":
    sys.exit(main())
