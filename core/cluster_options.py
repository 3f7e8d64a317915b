"""The command-line options every Raft daemon's `serve` shares, their checks, and the
settings they produce for the Raft driver.

Strategy: a daemon's parser takes `core.daemon.add_common_options` (`--listen --data-dir
--requirepass --protected-mode ...`) and `add_cluster_options` (`--id --peer-listen --peers
--join --cluster-secret --tick-ms --election-tick`); `cluster_settings(args, ...)` checks
them all in one place and returns a `ClusterSettings`, from which `driver_config` builds the
`DriverConfig` the daemon hands to its driver. The daemon keeps its own options (e.g. the
scheduler's `--snapshot-every`) and passes them to `driver_config` as extra fields.

Checks: `--listen` beyond loopback needs `--requirepass` (core.daemon.check_bind); `--data-dir`
is required (the Raft log lives there); Raft traffic beyond loopback needs `--cluster-secret`
unless `--protected-mode no`; `--id` >= 1; `--peers` is `ID=HOST:PORT,...` and this node's
own entry defaults to `--peer-listen`. A violation raises `core.daemon.ConfigError`, whose
message the daemon prints before exiting 2.
"""

from __future__ import annotations

import argparse
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import daemon
from core.raft.driver_types import DriverConfig

__all__ = [
    "DEFAULT_ELECTION_TICK", "DEFAULT_TICK_MS", "ClusterSettings", "add_cluster_options",
    "cluster_settings", "driver_config", "is_loopback", "parse_peers",
]

DEFAULT_TICK_MS = 20
DEFAULT_ELECTION_TICK = 15

ERR_PEERS_ITEM = "--peers item {!r}: expected ID=HOST:PORT"
ERR_NO_DATA_DIR = "--data-dir is required: the Raft log lives there"
ERR_NO_SECRET = ("refusing Raft traffic on {} without --cluster-secret "
                 "(or --protected-mode no if the network is trusted)")
ERR_NODE_ID = "--id must be >= 1"
ERR_TICK = "--tick-ms must be >= 1"
ERR_ELECTION_TICK = "--election-tick must be >= 2"


@dataclass(frozen=True)
class ClusterSettings:
    """What the shared options say, checked. `peers` maps every node id (this one's
    included) to its Raft address; `founders` are the founding voters, empty with --join."""

    node_id: int
    listen: tuple[str, int]  # clients (RESP)
    peer_listen: tuple[str, int]  # Raft and other node-to-node traffic
    peers: dict[int, tuple[str, int]]
    founders: tuple[int, ...]
    data_dir: Path
    secret: str | None
    password: str | None
    tick_s: float
    election_tick: int

    @property
    def advertise(self) -> str:
        """This node's client address as `host:port`, for the address book."""
        return f"{self.listen[0]}:{self.listen[1]}"


def parse_peers(text: str) -> dict[int, tuple[str, int]]:
    """`ID=HOST:PORT,...` (Raft addresses) -> {id: (host, port)}."""
    peers: dict[int, tuple[str, int]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        node_id, sep, address = item.partition("=")
        if not sep or not node_id.isdigit():
            raise daemon.ConfigError(ERR_PEERS_ITEM.format(item))
        peers[int(node_id)] = daemon.parse_hostport(address)
    return peers


def is_loopback(host: str) -> bool:
    """True for a loopback address or `localhost`."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def add_cluster_options(parser: argparse.ArgumentParser, default_peer_port: int) -> None:
    """Add the shared cluster options (see the module header) to a `serve` parser that
    already has `core.daemon.add_common_options`."""
    parser.add_argument("--id", type=int, required=True, help="this node's Raft id (>= 1)")
    parser.add_argument("--peer-listen", default=f"127.0.0.1:{default_peer_port}",
                        help="HOST:PORT for Raft traffic")
    parser.add_argument("--peers", default="", help="ID=HOST:PORT,... Raft addresses of all")
    parser.add_argument("--join", action="store_true", help="join a running cluster")
    parser.add_argument("--cluster-secret", default=None,
                        help="shared secret of the node port, the same on every node "
                             "(required beyond loopback)")
    parser.add_argument("--tick-ms", type=int, default=DEFAULT_TICK_MS,
                        help=f"Raft's tick in ms ({DEFAULT_TICK_MS}): heartbeats go every tick")
    parser.add_argument("--election-tick", type=int, default=DEFAULT_ELECTION_TICK,
                        help="ticks without a leader before a follower stands for election "
                             f"({DEFAULT_ELECTION_TICK}; randomized up to twice that)")


def cluster_settings(args: argparse.Namespace, *, default_port: int,
                     default_peer_port: int) -> ClusterSettings:
    """Check the shared options of parsed `args`; ConfigError names the first problem."""
    host, port = daemon.parse_hostport(args.listen, default_port)
    daemon.check_bind(host, args.requirepass, args.protected_mode)
    peer_host, peer_port = daemon.parse_hostport(args.peer_listen, default_peer_port)
    if not args.data_dir:
        raise daemon.ConfigError(ERR_NO_DATA_DIR)
    if not args.cluster_secret and args.protected_mode == "yes" and not is_loopback(peer_host):
        raise daemon.ConfigError(ERR_NO_SECRET.format(peer_host))
    if args.id < 1:
        raise daemon.ConfigError(ERR_NODE_ID)
    if args.tick_ms < 1:
        raise daemon.ConfigError(ERR_TICK)
    if args.election_tick < 2:
        raise daemon.ConfigError(ERR_ELECTION_TICK)
    peers = parse_peers(args.peers)
    peers.setdefault(args.id, (peer_host, peer_port))
    return ClusterSettings(
        node_id=args.id, listen=(host, port), peer_listen=(peer_host, peer_port),
        peers=peers, founders=() if args.join else tuple(sorted(peers)),
        data_dir=Path(args.data_dir), secret=args.cluster_secret, password=args.requirepass,
        tick_s=args.tick_ms / 1000, election_tick=args.election_tick,
    )


def driver_config(settings: ClusterSettings, **extra: Any) -> DriverConfig:
    """The driver's settings from the shared options; `extra`: more DriverConfig fields
    (e.g. snapshot_every) that the daemon's own options decide."""
    return DriverConfig(
        node_id=settings.node_id, data_dir=settings.data_dir, listen=settings.peer_listen,
        peers=settings.peers, founders=settings.founders, secret=settings.secret,
        tick_s=settings.tick_s, election_tick=settings.election_tick, **extra,
    )
