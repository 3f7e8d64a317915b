"""`kvcache proxy`: one memcached address in front of a ketama-sharded pool of memcached or
kvcache servers, in the spirit of twemproxy and mcrouter.

    kvcache proxy -p PORT [-l ADDR] --servers H:P[:WEIGHT],... [--replicas R]
                  [--on-down fail|remap] [--timeout S] [--failure-threshold N]
                  [--retry-backoff MIN,MAX] [--pool-size N] [-c N] [-I SIZE]

Clients speak the memcached text protocol, classic and meta, to the proxy exactly as to one
memcached; each key goes to the backend `kvcache.ring.Ring` names for it (the placement of
libmemcached and uhashring, so clients using the pool directly agree with the proxy).

Layers (each its own module, the I/O ones thin):
- kvcache/protocol.py (the server's request parser: framing, limits, memcached's errors);
- kvcache/proxy_plan.py: a request becomes a plan (checks, routing key, backend payload);
- kvcache/proxy_exec.py: plans run on the backends (replicas, multi-get split and merge);
- kvcache/proxy_backend.py: pipelined backend connections, timeouts, health, probes;
- kvcache/proxy_wire.py: where a backend reply ends (raw bytes passed through);
- kvcache/proxy_server.py: the listener, client connections (reply order) and `stats`;
- this module: the command line (`add_proxy_parser`, `run_proxy`, `main_proxy`). It loads
  the layers above only when a proxy runs: `kvcache serve` builds the same command line
  and must not carry the proxy's modules in its memory.

Commands without a key: `version` (the proxy's own, `1.6.18-proxy`), `stats` (the proxy's
figures and each backend's, see kvcache/proxy_server.py), `flush_all` (every backend; OK if
all said OK), `verbosity` (OK), `mn`, `quit`. Admin commands of one server (shutdown,
slabs, lru_crawler...) are not proxied: ERROR, as for any unknown command.
SIGTERM/SIGINT: stop accepting, let in-flight requests finish (5 s at most), exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import TYPE_CHECKING, Any

from core import daemon
from kvcache.ring import parse_server
from kvcache.settings import DEFAULT_ITEM_SIZE_MAX, DEFAULT_MAX_CONNECTIONS, parse_size

if TYPE_CHECKING:
    from kvcache.proxy_server import ProxyConfig, ProxyServer

__all__ = ["ProxyConfig", "ProxyServer", "add_proxy_parser", "main_proxy", "run_proxy"]


def __getattr__(name: str) -> Any:
    """ProxyConfig and ProxyServer, loaded on first use (see the module docstring)."""
    if name in ("ProxyConfig", "ProxyServer"):
        from kvcache import proxy_server

        return getattr(proxy_server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

log = logging.getLogger("kvcache.proxy")

DEFAULT_PROXY_PORT = 22121  # twemproxy's


# -- command line ------------------------------------------------------------------------------
def parse_servers(text: str) -> list[tuple[str, int, int]]:
    """`H:P[:WEIGHT],...` (`[v6]:P[:WEIGHT]` for IPv6) -> [(host, port, weight)]."""
    servers = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item.startswith("["):
            host, sep, rest = item[1:].partition("]")
            fields = rest.split(":")[1:] if sep and rest.startswith(":") else None
        else:
            host, *fields = item.split(":")  # type: ignore[assignment]
        if not fields or len(fields) > 2 or not all(f.isdigit() for f in fields):
            raise daemon.ConfigError(f"--servers: {item!r} is not HOST:PORT[:WEIGHT]")
        weight = int(fields[1]) if len(fields) == 2 else 1
        try:
            servers.append(parse_server((host, int(fields[0]), weight)))
        except ValueError as exc:
            raise daemon.ConfigError(f"--servers: {exc}") from None
    return servers


def _backoff(text: str) -> tuple[float, float]:
    try:
        low, high = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("expected MIN,MAX seconds, e.g. 0.5,30") from None
    return low, high


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except Exception as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_proxy_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `proxy` subcommand to a `kvcache` argparse subparsers object."""
    proxy = subparsers.add_parser("proxy", help="route memcached clients over a server pool")
    proxy.add_argument("-p", "--port", type=int, default=None,
                       help=f"TCP port ({DEFAULT_PROXY_PORT})")
    proxy.add_argument("-l", "--listen-addr", dest="listen_addr", default=None,
                       help="interfaces to listen on, comma separated (127.0.0.1)")
    proxy.add_argument("--listen", default=None, help="HOST:PORT (the project's spelling)")
    proxy.add_argument("--servers", required=True,
                       help="backends as HOST:PORT[:WEIGHT],... (ketama order)")
    proxy.add_argument("--replicas", type=int, default=1,
                       help="write each key to R ring successors, read the first healthy")
    proxy.add_argument("--on-down", dest="on_down", choices=["fail", "remap"], default="fail",
                       help="a down backend's keys fail (default) or go to the ring without it")
    proxy.add_argument("--timeout", type=float, default=1.0,
                       help="seconds a backend has to answer a request or connect (1.0)")
    proxy.add_argument("--failure-threshold", dest="failure_threshold", type=int, default=3,
                       help="consecutive failures that mark a backend down (3)")
    proxy.add_argument("--retry-backoff", dest="retry_backoff", type=_backoff,
                       default=(0.5, 30.0), help="probe a down backend after MIN,MAX s")
    proxy.add_argument("--pool-size", dest="pool_size", type=int, default=1,
                       help="connections per backend (1, as twemproxy's server_connections)")
    proxy.add_argument("-c", "--conn-limit", dest="conn_limit", type=int,
                       default=DEFAULT_MAX_CONNECTIONS, help="max simultaneous clients")
    proxy.add_argument("-I", "--max-item-size", dest="max_item_size", type=_size,
                       default=DEFAULT_ITEM_SIZE_MAX, help="largest item accepted (1m)")
    proxy.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    proxy.add_argument("--config", default=None, help="TOML file with the same keys")
    daemon.add_metrics_option(proxy)
    return proxy


def config_from_args(args: argparse.Namespace) -> tuple[ProxyConfig, list[str], int]:
    """The proxy's configuration, its interfaces and its port; ConfigError if unusable."""
    host, port = "127.0.0.1", DEFAULT_PROXY_PORT
    if args.listen:
        host, port = daemon.parse_hostport(args.listen, DEFAULT_PROXY_PORT)
    if args.listen_addr:
        host = args.listen_addr
    if args.port is not None:
        port = args.port
    hosts = [h.strip().strip("[]") for h in host.split(",") if h.strip()]
    from kvcache.proxy_server import ProxyConfig

    config = ProxyConfig(
        servers=parse_servers(args.servers), replicas=args.replicas, on_down=args.on_down,
        timeout=args.timeout, failure_threshold=args.failure_threshold,
        retry_backoff=tuple(args.retry_backoff), pool_size=args.pool_size,
        max_connections=args.conn_limit, item_size_max=args.max_item_size,
    )
    config.validate()
    return config, hosts, port


def run_proxy(args: argparse.Namespace) -> int:
    """Run `kvcache proxy` with parsed arguments until SIGTERM/SIGINT; the exit code."""
    config, hosts, port = config_from_args(args)
    daemon.setup_logging(args.log_level)

    async def main(stop: asyncio.Event) -> int:
        from core import metrics
        from kvcache import metrics as kvcache_metrics
        from kvcache.proxy_server import ProxyServer

        proxy = ProxyServer(config)
        try:
            await proxy.start(hosts, port)
        except OSError as exc:
            log.error("refusing to start: cannot listen on %s:%d: %s", ",".join(hosts), port,
                      exc)
            return 1
        endpoint = await metrics.open_endpoint(
            args, lambda: kvcache_metrics.proxy_collectors(proxy))
        await stop.wait()
        await metrics.close_endpoint(endpoint)
        await proxy.close()
        log.info("proxy stopped")
        return 0

    return daemon.run(main)


def main_proxy(argv: list[str] | None = None) -> int:
    """`kvcache proxy ...` without the `kvcache` command line: argv is what follows
    `proxy` (also `python -m kvcache.proxy ...`)."""
    parser = argparse.ArgumentParser(prog="kvcache")
    add_proxy_parser(parser.add_subparsers(dest="action", required=True))
    try:
        args = daemon.parse_args(parser, ["proxy", *(sys.argv[1:] if argv is None else argv)])
        return run_proxy(args)
    except daemon.ConfigError as exc:
        print(f"kvcache proxy: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main_proxy())
