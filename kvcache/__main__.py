"""Command line: `kvcache serve ...`, a drop-in for `memcached ...`.

`serve` takes memcached 1.6's flags, short and long, so a memcached command line works
after `kvcache serve`:

    -p PORT      TCP port (11211)           -l ADDR[,ADDR]  interfaces (127.0.0.1: ours)
    -m MB        memory limit (64)          -c N            max simultaneous clients (1024)
    -I SIZE      max item size (1m; k/m/g)  -v / -vv        verbose / very verbose logs
    -s PATH      UNIX socket (no TCP then)  -a MASK         its permissions, octal (700)
    -M           errors instead of evictions when memory is full
    -A           enable the `shutdown` command
    -F / -X      disable flush_all / disable cachedump and metadump
    -d, -P FILE  run in the background / write the PID there
    -b N         listen backlog (1024)      -f, -n          slab growth factor, min chunk
    -V           print the version and exit
    -R N         write queued replies out at least every N commands (20)
    -o idle_timeout=N  close a client idle for more than N seconds (0, the default: never)
    -U N         also serve UDP on port N (0, the default: off), memcached's framing
    -C           disable CAS: items carry none (8 bytes less each), `cas` answers EXISTS
    -o slab_reassign / no_slab_reassign, slab_automove=N (0 off, 1 the default, 2
                 aggressive) / no_slab_automove: slab pages moving between classes
    -t N, -u USER, -o OPTS, -L, -k, -r, -D C, -W
                 accepted for compatibility and logged: one event loop serves every
                 client (-t), kvcache does not change user, other -o options are ignored
    -S, -Y, -Z, -e, -B binary   refused: SASL, auth files, TLS, memory files and the binary
                 protocol are not implemented (refusing beats silently serving without them)

plus the project's long options: `--listen HOST[:PORT]` (memcached's own --listen takes an
address, which this accepts too), `--log-level`, `--config FILE.toml` (keys are the long
option names: memory_limit = "16m", conn_limit = 9, ...). `-l`/`-p` override `--listen`.
Listening beyond loopback is allowed, as in memcached, with a warning: the text protocol has
no authentication.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ipaddress
import logging
import os
import resource
import sys
from pathlib import Path

from core import daemon
from kvcache.proxy import add_proxy_parser, run_proxy
from kvcache.replies import VERSION
from kvcache.settings import (
    DEFAULT_ITEM_SIZE_MAX,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MEMORY_MB,
    DEFAULT_PORT,
    MEGABYTE,
    Settings,
    SettingsError,
    parse_size,
)

log = logging.getLogger("kvcache")

FD_HEADROOM = 64  # listeners, logs, the event loop's own descriptors
DEFAULT_THREADS = Settings.threads_requested  # memcached's -t default, when -t is not given
IDLE_TIMEOUT_OPTION = "idle_timeout"  # -o options kvcache takes: this and SLAB_OPTIONS
SLAB_OPTIONS = frozenset(("slab_reassign", "no_slab_reassign", "slab_automove",
                          "no_slab_automove"))
DEFAULT_SLAB_AUTOMOVE = Settings.slab_automove


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except SettingsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _megabytes(text: str) -> int:
    """-m: megabytes, or a size with a k/m/g suffix."""
    return int(text) * MEGABYTE if text.strip().isdigit() else _size(text)


def add_serve_options(serve: argparse.ArgumentParser) -> None:
    add = serve.add_argument
    add("-p", "--port", type=int, default=None, help="TCP port (11211)")
    add("-l", "--listen-addr", dest="listen_addr", default=None,
        help="interfaces to listen on, comma separated (127.0.0.1)")
    add("--listen", default=None, help="HOST[:PORT] (the project's spelling)")
    add("-s", "--unix-socket", dest="unix_socket", default=None,
        help="listen on this UNIX socket instead of TCP")
    add("-a", "--unix-mask", dest="unix_mask", default="700", help="UNIX socket mode, octal")
    add("-m", "--memory-limit", dest="memory_limit", type=_megabytes,
        default=DEFAULT_MEMORY_MB * MEGABYTE, help="memory limit in MB (64)")
    add("-c", "--conn-limit", dest="conn_limit", type=int, default=DEFAULT_MAX_CONNECTIONS,
        help="max simultaneous clients (1024)")
    add("-I", "--max-item-size", dest="max_item_size", type=_size,
        default=DEFAULT_ITEM_SIZE_MAX, help="largest item, e.g. 1m, 512k (1m)")
    add("-v", "--verbose", action="count", default=0,
        help="-v logs connections and errors, -vv every command")
    add("-M", "--disable-evictions", dest="disable_evictions", action="store_true",
        help="refuse writes instead of evicting")
    add("-A", "--enable-shutdown", dest="enable_shutdown", action="store_true",
        help="allow the shutdown command")
    add("-F", "--disable-flush-all", dest="disable_flush_all", action="store_true",
        help="refuse the flush_all command")
    add("-X", "--disable-dumping", dest="disable_dumping", action="store_true",
        help="refuse lru_crawler metadump and stats cachedump")
    add("-d", "--daemon", action="store_true", help="run in the background")
    add("-P", "--pidfile", default=None, help="write the PID to this file")
    add("-b", "--listen-backlog", dest="backlog", type=int, default=1024,
        help="pending connections the listener queues (1024)")
    add("-f", "--slab-growth-factor", dest="growth_factor", type=float, default=1.25,
        help="chunk size factor between size classes (1.25)")
    add("-n", "--slab-min-size", dest="slab_min_size", type=int, default=48,
        help="smallest chunk of key, value and flags, in bytes (48)")
    add("-R", "--max-reqs-per-event", dest="reqs_per_event", type=int, default=20,
        help="write queued replies out at least every N commands (20)")
    add("-V", "--version", action="store_true", help="print the version and exit")
    add("-t", "--threads", type=int, default=None,
        help="accepted (logged when given); one event loop serves all clients")
    add("-U", "--udp-port", dest="udp_port", type=int, default=0,
        help="also serve UDP on this port (0: off, the default)")
    add("-u", "--user", default=None, help="accepted, ignored")
    add("-o", "--extended", action="append", default=[],
        help="idle_timeout=N is taken; other options are accepted and ignored")
    for flag, long in (("-L", "--enable-largepages"), ("-k", "--lock-memory"),
                       ("-r", "--enable-coredumps"), ("-W", "--disable-watch")):
        add(flag, long, action="store_true", help="accepted, ignored")
    add("-C", "--disable-cas", action="store_true",
        help="disable CAS: items carry none (8 bytes less each)")
    add("-D", dest="prefix_delimiter", default=None, help="accepted, ignored")
    add("-B", "--protocol", default="auto", choices=["auto", "ascii", "binary"],
        help="ascii (auto means ascii here); binary is not implemented")
    for flag, long in (("-S", "--enable-sasl"), ("-Z", "--enable-ssl")):
        add(flag, long, action="store_true", help="not implemented: refused")
    add("-Y", "--auth-file", default=None, help="not implemented: refused")
    add("-e", "--memory-file", default=None, help="not implemented: refused")
    add("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR")
    add("--config", default=None, help="TOML file with the same keys")
    daemon.add_metrics_option(serve)
    # Tests start a daemon with a shifted wall clock (core.daemon's hidden option).
    add("--clock-offset-ms", type=int, default=0, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvcache", description="memcached-compatible cache")
    sub = parser.add_subparsers(dest="action", required=True)
    serve = sub.add_parser("serve", help="run a cache daemon (takes memcached's flags)")
    add_serve_options(serve)
    add_proxy_parser(sub)
    return parser


def settings_from_args(args: argparse.Namespace) -> tuple[Settings, list[str]]:
    """Settings and the interfaces to listen on; raises ConfigError for bad combinations."""
    refused = [name for name, on in (
        ("-S (SASL)", args.enable_sasl), ("-Z (TLS)", args.enable_ssl),
        ("-Y (auth file)", args.auth_file), ("-e (memory file)", args.memory_file),
        ("-B binary", args.protocol == "binary")) if on]
    if refused:
        raise daemon.ConfigError(f"not implemented: {', '.join(refused)}")
    host, port = "127.0.0.1", DEFAULT_PORT
    if args.listen:
        host, port = daemon.parse_hostport(args.listen, DEFAULT_PORT)
    if args.listen_addr:
        host = args.listen_addr
    if args.port is not None:
        port = args.port
    hosts = [h.strip().strip("[]") for h in host.split(",") if h.strip()]
    try:
        unix_mask = int(args.unix_mask, 8)
    except ValueError:
        raise daemon.ConfigError(f"-a {args.unix_mask!r}: expected an octal mode") from None
    idle_timeout, _ = _extended(args.extended)
    slab_reassign, slab_automove = _slab_options(args.extended)
    settings = Settings(
        port=port,
        inter=",".join(hosts),
        maxbytes=args.memory_limit,
        maxconns=args.conn_limit,
        item_size_max=args.max_item_size,
        verbose=min(args.verbose, 2),
        threads_requested=DEFAULT_THREADS if args.threads is None else args.threads,
        evict_to_free=not args.disable_evictions,
        shutdown_command=args.enable_shutdown,
        flush_enabled=not args.disable_flush_all,
        dump_enabled=not args.disable_dumping,
        backlog=args.backlog,
        reqs_per_event=args.reqs_per_event,
        growth_factor=args.growth_factor,
        slab_min_size=args.slab_min_size,
        unix_socket=args.unix_socket,
        unix_mask=unix_mask,
        idle_timeout=idle_timeout,
        udp_port=0 if args.unix_socket else args.udp_port,
        use_cas=not args.disable_cas,
        slab_reassign=slab_reassign,
        slab_automove=slab_automove,
    )
    try:
        settings.validate()
    except SettingsError as exc:
        raise daemon.ConfigError(str(exc)) from None
    return settings, hosts


def _extended(values: list[str]) -> tuple[int, list[str]]:
    """The -o options (each a comma list of name[=value], as memcached takes them): the
    idle_timeout, and every other option but SLAB_OPTIONS (read by _slab_options), which
    is accepted and ignored."""
    idle_timeout, ignored = 0, []
    for value in values:
        for option in filter(None, (o.strip() for o in value.split(","))):
            name, _, setting = option.partition("=")
            if name in SLAB_OPTIONS:
                continue
            if name != IDLE_TIMEOUT_OPTION:
                ignored.append(option)
                continue
            if not (setting.isascii() and setting.isdigit()):  # "²".isdigit() is True
                raise daemon.ConfigError(f"-o {option}: expected whole seconds")
            idle_timeout = int(setting)
    return idle_timeout, ignored


def _slab_options(values: list[str]) -> tuple[bool, int]:
    """-o slab_reassign / no_slab_reassign and slab_automove[=N] / no_slab_automove, as
    memcached takes them (later options win): (slab_reassign, slab_automove)."""
    reassign, automove = True, DEFAULT_SLAB_AUTOMOVE
    for value in values:
        for option in filter(None, (o.strip() for o in value.split(","))):
            name, equals, setting = option.partition("=")
            if name in ("slab_reassign", "no_slab_reassign"):
                reassign = name == "slab_reassign"
            elif name == "no_slab_automove":
                automove = 0
            elif name == "slab_automove":
                if equals and not (setting.isascii() and setting.isdigit()):
                    raise daemon.ConfigError(f"-o {option}: expected 0, 1 or 2")
                automove = int(setting) if equals else 1
    return reassign, automove


def _beyond_loopback(host: str) -> bool:
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host != "localhost"


def _log_accepted(args: argparse.Namespace, settings: Settings, hosts: list[str]) -> None:
    """One line per flag taken for compatibility only, and the no-authentication warning."""
    if not settings.unix_socket:
        for host in hosts:
            if _beyond_loopback(host):
                log.warning("listening on %s: the memcached text protocol has no "
                            "authentication; anyone who can reach it can read and write the "
                            "cache", host)
    if args.threads is not None:
        log.info("-t %d: one event loop serves every client", args.threads)
    if args.udp_port and settings.unix_socket:
        log.warning("-U %d ignored: -s serves the UNIX socket only", args.udp_port)
    if args.user:
        log.info("-u %s ignored: kvcache does not change user", args.user)
    for option in _extended(args.extended)[1]:
        log.info("-o %s ignored", option)
    for name in ("enable_largepages", "lock_memory", "enable_coredumps", "disable_watch"):
        if getattr(args, name):
            log.info("--%s ignored", name.replace("_", "-"))


def _raise_fd_limit(maxconns: int) -> None:
    """Room for -c clients plus our own files, as memcached raises RLIMIT_NOFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = maxconns + FD_HEADROOM
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < wanted:
            log.warning("file limit %d leaves room for fewer than %d connections",
                        target, maxconns)


def _daemonize() -> None:
    """memcached -d: detach from the terminal (double fork, new session, no stdio)."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


# glibc's mallopt parameter number for the mmap threshold (malloc.h: M_MMAP_THRESHOLD).
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024


def _return_big_frees_to_the_os() -> None:
    """Serve allocations of 128 KiB and more (the index's tables) with mmap, so a table
    freed by a resize goes back to the OS instead of staying in the heap and counting
    against -m. glibc raises its threshold dynamically by default; fixing it keeps RSS near
    what the storage accounts. A no-op where glibc's mallopt is missing."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        log.debug("mallopt unavailable; the allocator keeps its defaults")


def serve(args: argparse.Namespace) -> int:
    from core import metrics
    from kvcache import metrics as kvcache_metrics
    from kvcache.server import KvcacheServer

    if args.version:
        print(f"kvcache (memcached {VERSION} text protocol)")
        return 0
    settings, hosts = settings_from_args(args)
    if args.daemon:
        _daemonize()
    level = args.log_level or ("DEBUG" if settings.verbose >= 2 else "INFO")
    daemon.setup_logging(level)
    _log_accepted(args, settings, hosts)
    _raise_fd_limit(settings.maxconns)
    _return_big_frees_to_the_os()
    pidfile = Path(args.pidfile) if args.pidfile else None
    clock = daemon.clock_from_args(args)

    async def run(stop: asyncio.Event) -> int:
        server = KvcacheServer(settings, clock)
        try:
            await server.start(hosts, settings.port)
        except OSError as exc:
            where = settings.unix_socket or f"{settings.inter}:{settings.port}"
            log.error("refusing to start: cannot listen on %s: %s", where, exc)
            return 1
        if pidfile is not None:
            pidfile.write_text(f"{os.getpid()}\n")
        log.info("kvcache ready: %d MB, items up to %d bytes, %d connections",
                 settings.maxbytes // MEGABYTE, settings.item_size_max, settings.maxconns)
        endpoint = await metrics.open_endpoint(args, lambda: kvcache_metrics.collectors(server))
        waits = [asyncio.create_task(stop.wait()),
                 asyncio.create_task(server.stop_requested.wait())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in waits:
            task.cancel()
        await metrics.close_endpoint(endpoint)
        await server.close()
        if pidfile is not None:
            pidfile.unlink(missing_ok=True)
        log.info("stopped")
        return 0

    return daemon.run(run)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = daemon.parse_args(parser, argv)
        if args.action == "serve":
            return serve(args)
        if args.action == "proxy":
            return run_proxy(args)
    except daemon.ConfigError as exc:
        print(f"kvcache: {exc}", file=sys.stderr)
        return 2
    parser.error(f"unknown action {args.action}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
