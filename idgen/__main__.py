"""Command line: `idgen serve`, `idgen next`, `idgen parse`.

`next` asks `--server`'s servers, else those of `$IDGEN_SERVERS`, else `make run`'s
(core/client_cli.py), and fails at once when none answers. A count below 1 is sent as it
is, so the server's own error is printed and the exit status is 1.

`serve` checks every option before it opens anything. The peer check runs over the node
port: `--peer-listen` (this node's core/rpc address, where peers check it), `--id` (this
node's id there, >= 1, independent of `--worker-id`), `--peers ID=HOST:PORT,...` (the other
idgen nodes' ids and node ports, the form every clustered daemon takes) and
`--cluster-secret` (required beyond loopback, as core/rpc demands). The node id is
not derived from the worker id on purpose: core/rpc's handshake checks the id it expects,
so a mistyped worker id that also moved the node id would make the check skip the very peer
holding the duplicate worker id instead of asking it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from core import client_cli, cluster_options, daemon
from core.resp_client import ReplyError, RespConnection
from core.rpc import Address, InsecureConfig, NodeTransport
from core.storage import StorageError
from idgen.launch import client_addresses
from idgen.layout import DEFAULT_EPOCH_MS, MAX_WORKER_ID, parse

if TYPE_CHECKING:
    from idgen.client import IdgenClient

log = logging.getLogger("idgen")

DEFAULT_PORT = 7379
SERVERS_ENV = "IDGEN_SERVERS"  # `idgen next`'s servers when --server is not given
WHAT = "idgen server"
MAX_IDS_PER_REQUEST = 100_000  # a NEXT's largest count; more ids take several requests
REQUEST_TIMEOUT_S = 5.0

ERR_PEERS_NEED_PORT = "--peers needs --peer-listen: the peers check this node there too"
ERR_NEED_ID = "--peer-listen needs --id: this node's id on the node port, named in --peers"
ERR_NODE_ID = "--id must be >= 1"
ERR_SELF_ADDRESS = ("--peers gives this node's id {} the address {}, but its --peer-listen "
                    "is {}: two nodes cannot share an id")
# core/rpc never runs beyond loopback without a secret, --protected-mode no or not.
ERR_NO_SECRET = "refusing node-to-node traffic on {} without --cluster-secret"


@dataclass(frozen=True)
class NodePort:
    """This node's place on the node port: its id, its address, its peers (node id ->
    address, itself excluded) and the cluster secret."""

    node_id: int
    listen: Address
    peers: dict[int, Address]
    secret: str | None

    def transport(self) -> NodeTransport:
        """The core/rpc transport; ConfigError if core/rpc refuses the addresses."""
        try:
            return NodeTransport(self.node_id, self.listen, self.peers, self.secret)
        except InsecureConfig as exc:
            raise daemon.ConfigError(str(exc)) from None


def node_port(args: argparse.Namespace) -> NodePort | None:
    """The checked node-port options of `serve`; None when the node has no node port."""
    if args.peer_listen is None:
        if args.peers.strip():
            raise daemon.ConfigError(ERR_PEERS_NEED_PORT)
        return None
    if args.id is None:
        raise daemon.ConfigError(ERR_NEED_ID)
    if args.id < 1:
        raise daemon.ConfigError(ERR_NODE_ID)
    listen = daemon.parse_hostport(args.peer_listen)
    secret = args.cluster_secret or None
    if secret is None and not cluster_options.is_loopback(listen[0]):
        raise daemon.ConfigError(ERR_NO_SECRET.format(listen[0]))
    peers = cluster_options.parse_peers(args.peers)
    own = peers.pop(args.id, listen)
    if own != listen:
        raise daemon.ConfigError(ERR_SELF_ADDRESS.format(
            args.id, f"{own[0]}:{own[1]}", f"{listen[0]}:{listen[1]}"))
    return NodePort(args.id, listen, peers, secret)


def epoch_arg(text: str) -> int:
    """An epoch as Unix milliseconds or an ISO 8601 date/time (UTC if no zone)."""
    if text.isdigit():
        return int(text)
    stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        from datetime import UTC

        stamp = stamp.replace(tzinfo=UTC)
    return int(stamp.timestamp() * 1000)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="idgen", description="Snowflake-style id server")
    sub = parser.add_subparsers(dest="action", required=True)

    serve = sub.add_parser("serve", help="run an id server")
    daemon.add_common_options(serve, DEFAULT_PORT)
    serve.add_argument("--worker-id", type=int, default=None, help=f"0..{MAX_WORKER_ID}")
    serve.add_argument(
        "--epoch", type=epoch_arg, default=None,
        help="epoch as ms or ISO date (default 2024-01-01T00:00:00Z; fixed per data dir)",
    )
    serve.add_argument("--peer-listen", default=None,
                       help="HOST:PORT of this node's node-to-node port (peer checks)")
    serve.add_argument("--id", type=int, default=None,
                       help="this node's id on the node port (>= 1; not the worker id)")
    serve.add_argument("--peers", default="",
                       help="ID=HOST:PORT,... the other idgen nodes' ids and node ports")
    serve.add_argument("--cluster-secret", default=None,
                       help="shared secret of the node port (needed beyond loopback)")
    serve.add_argument("--max-backward-ms", type=int, default=5,
                       help="clock steps back up to this are waited out; larger ones refused")
    serve.add_argument("--max-skew-ms", type=int, default=1000,
                       help="refuse when the clock is this far from the peers' median")
    serve.add_argument("--reserve-ms", type=int, default=1000,
                       help="how far ahead of the clock the durable high-water mark runs")
    serve.add_argument("--peer-check-interval-ms", type=int, default=5000,
                       help="how often the peers are asked again while serving (5000)")

    nxt = sub.add_parser("next", help="fetch ids from servers")
    nxt.add_argument("-n", type=int, default=1, help="how many ids (>= 1)")
    client_cli.add_server_option(nxt, SERVERS_ENV, client_addresses(), "idgen servers")
    nxt.add_argument("--password", default=None, help="the servers' --requirepass")

    prs = sub.add_parser("parse", help="decode an id offline")
    prs.add_argument("id", type=int, help="the id to decode")
    prs.add_argument("--epoch", type=epoch_arg, default=DEFAULT_EPOCH_MS,
                     help="the epoch the id was made with, as ms or ISO date "
                          "(default 2024-01-01T00:00:00Z)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = daemon.parse_args(parser, argv)
        if args.action == "serve":
            return serve(args)
        if args.action == "next":
            return cli_next(args)
    except daemon.ConfigError as exc:
        print(f"idgen: {exc}", file=sys.stderr)
        return 2
    return cli_parse(args)


def serve(args: argparse.Namespace) -> int:
    from core import metrics
    from idgen import metrics as idgen_metrics
    from idgen.server import IdgenServer
    from idgen.store import IdentityMismatch, IdgenStore

    daemon.setup_logging(args.log_level)
    host, port = daemon.parse_hostport(args.listen, DEFAULT_PORT)
    daemon.check_bind(host, args.requirepass, args.protected_mode)
    if args.worker_id is not None and not 0 <= args.worker_id <= MAX_WORKER_ID:
        raise daemon.ConfigError(f"--worker-id must be within 0..{MAX_WORKER_ID}")
    if not args.data_dir:
        raise daemon.ConfigError("--data-dir is required: the high-water mark lives there")
    node = node_port(args)
    transport = node.transport() if node is not None else None
    clock = daemon.clock_from_args(args)
    try:
        store = IdgenStore(args.data_dir, args.worker_id, args.epoch, DEFAULT_EPOCH_MS)
    except (IdentityMismatch, StorageError) as exc:
        log.error("refusing to start: %s", exc)
        return 1

    async def run(stop: asyncio.Event) -> int:
        server = IdgenServer(
            store,
            clock,
            password=args.requirepass,
            max_backward_ms=args.max_backward_ms,
            reserve_ms=args.reserve_ms,
            transport=transport,
            peer_nodes=node.peers if node is not None else None,
            max_skew_ms=args.max_skew_ms,
            peer_check_interval_s=args.peer_check_interval_ms / 1000,
            max_clients=args.maxclients,
        )
        try:
            await server.open_node_port()
        except OSError as exc:
            log.error("refusing to start: cannot listen for peers on %s: %s",
                      args.peer_listen, exc)
            await server.close()
            return 1
        fault = await server.check_peers()
        if fault is not None:
            log.error("refusing to start: %s", fault)
            await server.close()
            return 1
        try:
            await server.start(host, port)
        except OSError as exc:
            log.error("refusing to start: cannot listen on %s:%d: %s", host, port, exc)
            await server.close()
            return 1
        log.info("worker %d ready on %s:%d", store.worker_id, host, server.resp.port)
        endpoint = await metrics.open_endpoint(args, lambda: idgen_metrics.collectors(server))
        stop_wait = asyncio.create_task(stop.wait())
        fatal_wait = asyncio.create_task(server.fatal.wait())
        await asyncio.wait([stop_wait, fatal_wait], return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        fatal_wait.cancel()
        await metrics.close_endpoint(endpoint)
        await server.close()
        log.info("stopped")
        return 1 if server.fatal.is_set() else 0

    return daemon.run(run)


def cli_next(args: argparse.Namespace) -> int:
    """`idgen next`: the ids, one a line; 1 (and the error) when no server answers or the
    server refuses the request."""
    from idgen.client import IdgenClient, IdgenError

    servers = client_cli.resolve_servers(args.server, SERVERS_ENV, client_addresses(),
                                         DEFAULT_PORT)
    try:
        first = client_cli.first_answering(servers, WHAT, SERVERS_ENV)
        if args.n < 1:
            return _refused_count(first, args)
        addresses = [f"{host}:{port}" for host, port in
                     [first, *(node for node in servers.nodes if node != first)]]
        with IdgenClient(addresses, password=args.password) as client:
            _print_ids(client, args.n)
    except (IdgenError, client_cli.NoNodeAnswers) as exc:
        print(f"idgen: {exc}", file=sys.stderr)
        return 1
    return 0


def _print_ids(client: IdgenClient, count: int) -> None:
    remaining = count
    while remaining > 0:
        batch = client.next_ids(min(remaining, MAX_IDS_PER_REQUEST))
        sys.stdout.write("".join(f"{i}\n" for i in batch))
        remaining -= len(batch)
        if count > MAX_IDS_PER_REQUEST:
            print(f"{count - remaining}/{count} ids", file=sys.stderr)


def _refused_count(node: tuple[str, int], args: argparse.Namespace) -> int:
    """`-n` below 1: one `NEXT n` to `node`, whose error reply is printed (exit 1)."""
    try:
        conn = RespConnection.connect(node[0], node[1], REQUEST_TIMEOUT_S,
                                      password=args.password)
        try:
            reply = conn.call("NEXT", args.n)
        finally:
            conn.close()
    except (ReplyError, OSError) as exc:
        print(f"idgen: {exc}", file=sys.stderr)
        return 1
    ids = reply if isinstance(reply, list) else [reply]
    sys.stdout.write("".join(f"{i}\n" for i in ids))
    return 0


def cli_parse(args: argparse.Namespace) -> int:
    try:
        parsed = parse(args.id, args.epoch)
    except ValueError as exc:
        print(f"idgen: {exc}", file=sys.stderr)
        return 2
    print(f"id        {parsed.id}")
    print(f"time_ms   {parsed.time_ms}")
    print(f"time      {parsed.time_iso}")
    print(f"worker    {parsed.worker}")
    print(f"sequence  {parsed.sequence}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
