"""`make demo`: the whole local cluster, the order service on it, a load, and where it went.

Strategy: start every daemon of `make run` on free ports with data under a temporary
directory (examples/orders/cluster.py), set up users, products and the orders table (a
range per month), add the two jobs and start the embedded worker, serve the HTTP API,
send the load with a progress bar on stderr (examples/orders/load.py), optionally kill and
restart one node of each daemon during it (`--kill`), read everything back, and print the
summary. Everything is stopped at the end, on an error, and on Ctrl-C. The exit status is
1 when a check failed, 130 when interrupted (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from examples.orders.cluster import Cluster
from examples.orders.http_api import serve
from examples.orders.jobs import REPORT_JOB, add_jobs, run_now, start_worker
from examples.orders.load import Chaos, Checks, LoadResult, Progress, check, run_load
from examples.orders.service import OrderService, Settings
from examples.orders.store import month_bounds
from idgen.client import parse as parse_id
from native.crc16 import key_slot

__all__ = ["main", "summary"]

DEFAULT_ORDERS = 3000
QUICK_ORDERS = 200
DEFAULT_DEADLINE_S = 10.0  # the demo's; the service's own default is 15 minutes
CANCEL_EVERY_S = 1.0
REPORT_WAIT_S = 60.0
POLL_S = 0.2
LOG_NAME = "orders-demo.log"  # under the data directory, beside the daemons' logs
USERS = [f"user{i:03d}" for i in range(50)]
PRODUCTS = {f"product{i:02d}": 100 + 37 * i for i in range(20)}


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _months(now: datetime) -> list[str]:
    _, following = month_bounds(now.year, now.month)
    return [now.strftime("%Y-%m"), following]


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m examples.orders.demo",
                                     description="the order service on all five daemons")
    parser.add_argument("--orders", type=int, default=None,
                        help=f"orders to send (default {DEFAULT_ORDERS}; "
                             f"--quick: {QUICK_ORDERS})")
    parser.add_argument("--quick", action="store_true", help="a small run")
    parser.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE_S,
                        help="seconds before an unpaid order is cancelled "
                             f"(default {DEFAULT_DEADLINE_S:g})")
    parser.add_argument("--kill", action="store_true",
                        help="SIGKILL and restart one node of each daemon during the load")
    parser.add_argument("--small", action="store_true",
                        help="a smaller cluster: two caches behind the proxy, three chunk "
                             "servers (the tests use it)")
    parser.add_argument("--var", type=Path, default=None,
                        help="data directory (default: a temporary one, removed after)")
    args = parser.parse_args(argv)
    if args.orders is None:
        args.orders = QUICK_ORDERS if args.quick else DEFAULT_ORDERS
    if args.orders < 1 or args.deadline <= 0:
        parser.error("--orders and --deadline must be positive")
    return args


def _shards_of_orders(service: OrderService, ids: list[int]) -> dict[str, int]:
    """Orders per range of the orders table: `[low, high) shard N` -> count."""
    ranges = service.clients.store.table_info()[b"ranges"]
    counts: Counter[str] = Counter()
    for order_id in ids:
        at = parse_id(order_id).time_ms
        for low, high, shard, *_ in ranges:
            if (low == b"-" or int(low) <= at) and (high == b"+" or at < int(high)):
                counts[f"shard {shard}"] += 1
                break
    return dict(counts)


def _shards_of_users(service: OrderService, users: list[str]) -> dict[str, int]:
    """Users per slot range (one per shard) of keyspace users."""
    ranges = service.clients.store.users.execute("CLUSTER", "SLOTS")
    counts: Counter[str] = Counter()
    for user in users:
        slot = key_slot(f"user:{user}".encode())
        for low, high, *_ in ranges:
            if low <= slot <= high:
                counts[f"slots {low}-{high}"] += 1
    return dict(counts)


def summary(service: OrderService, result: LoadResult, checks: Checks,
            killed: list[str]) -> tuple[list[str], bool]:
    """The summary lines, and whether every check passed."""
    figures = service.figures.counts
    ids = [order_id for order_id, _ in result.created]
    hits, misses = figures["cache_hits"], figures["cache_misses"]
    workers = Counter(f"worker {parse_id(i).worker}" for i in ids)
    ok = not (checks.lost or checks.duplicates or checks.late_pending or checks.invoices_bad
              or checks.pay_after_cancel_refused is False
              or not checks.month_listing_complete)
    lines = [
        f"orders: {len(ids)} created in {result.seconds:.1f} s "
        f"({len(ids) / max(result.seconds, 1e-9):.1f} orders/s), {len(result.paid)} paid, "
        f"{len(ids) - len(result.paid)} left unpaid",
        f"idgen: ids by {_counts(workers)}",
        f"shardstore keyspace default (orders table): {_counts(_shards_of_orders(service, ids))}",
        f"shardstore keyspace users: {_counts(_shards_of_users(service, USERS))}",
        f"kvcache: product page hit ratio {hits / max(1, hits + misses):.3f} "
        f"({hits} hits, {misses} misses)",
        f"dfs: invoices written {figures['invoices']}, reports written {figures['reports']}",
        f"scheduler: orders cancelled by the job {figures['cancelled_by_job']} "
        f"(cancelled in all: {checks.cancelled})",
        f"checks: lost {len(checks.lost)}, duplicate ids {checks.duplicates}, unpaid past "
        f"deadline {len(checks.late_pending)}, invoices verified {checks.invoices_ok}/"
        f"{len(result.paid)}, pay after cancel refused: "
        f"{_yes(checks.pay_after_cancel_refused)}, a user's month listed in full: "
        f"{_yes(checks.month_listing_complete)}",
        f"killed and restarted: {', '.join(killed) or 'none'}",
        f"result: {'OK' if ok else 'FAILED'}",
    ]
    return lines, ok


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name}: {count}" for name, count in sorted(counts.items())) or "none"


def _yes(value: bool | None) -> str:
    return {True: "yes", False: "NO", None: "no cancelled order to try"}[value]


def run(args: argparse.Namespace, var: Path) -> int:
    """The demo on a cluster with data under `var`; the exit status."""
    var.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=var / LOG_NAME, level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    _log(f"starting the local cluster, data under {var} (the clients' log: {LOG_NAME})")
    with Cluster(var, log=_log, small=args.small) as cluster:
        service = OrderService(cluster.endpoints, Settings(deadline_s=args.deadline))
        opened = service.setup(USERS, PRODUCTS, _months(datetime.now(UTC)))
        add_jobs(cluster.endpoints.scheduler, CANCEL_EVERY_S)
        stop_worker = start_worker(service, cluster.endpoints.scheduler)
        server, _ = serve(service)
        try:
            return _drive(args, cluster, service, server.server_address[:2], opened)
        finally:
            server.shutdown()
            stop_worker()
            service.close()


def _wait_for_report(service: OrderService) -> None:
    """Poll until the embedded worker has written the report (REPORT_WAIT_S at most)."""
    give_up = time.monotonic() + REPORT_WAIT_S
    while not service.figures.counts["reports"] and time.monotonic() < give_up:
        time.sleep(POLL_S)


def _drive(args: argparse.Namespace, cluster: Cluster, service: OrderService,
           api: tuple[Any, ...], opened: dict[str, int | None]) -> int:
    _log(f"order API on http://{api[0]}:{api[1]}; sending {args.orders} orders")
    progress = Progress(args.orders)
    chaos = Chaos(cluster, progress, progress.note) if args.kill else None
    if chaos:
        chaos.start()
    result = run_load((api[0], api[1]), args.orders, USERS, list(PRODUCTS), progress=progress)
    progress.close()
    if chaos:
        chaos.join()
    run_now(cluster.endpoints.scheduler, REPORT_JOB)
    _wait_for_report(service)
    checks = check(service, result, (api[0], api[1]), _log)
    lines, ok = summary(service, result, checks, chaos.done if chaos else [])
    months = ", ".join(f"{m} on shard {s}" for m, s in opened.items() if s is not None)
    lines.insert(3, f"shardstore months opened by TABLE.SPLIT: {months or 'none'}")
    print("\n".join(lines), flush=True)
    return 0 if ok else 1


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module header)."""
    args = _arguments(argv)
    started = time.monotonic()
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if args.var is not None:
            code = run(args, args.var)
        else:
            with tempfile.TemporaryDirectory(prefix="orders-demo-") as tmp:
                code = run(args, Path(tmp))
    except KeyboardInterrupt:
        _log("interrupted: the cluster is stopped")
        return 130
    _log(f"demo done in {time.monotonic() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
