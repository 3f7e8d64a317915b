"""The demo's load through the HTTP API, the node kills during it, and the checks after it.

Strategy: `run_load` spreads N orders over a few threads, each with its own keep-alive HTTP
connection: create (a random user, one to three random products), then pay with
probability `pay_share`, else leave the order for the cancel job. A create answered 503 or
lost with its connection is sent again as a new order (the lost one, if written, was never
acknowledged: the job cancels it); a pay is sent again until it is answered, since paying
is idempotent. Only answered creates and pays are recorded. `Chaos` SIGKILLs one node of
each daemon in turn once the load is under way and starts it again (one node down at a
time). `check` reads everything back: every acknowledged create is found, no id twice,
no order pending past its deadline (polled until the job has had its chance), every paid
order's invoice in dfs equal to its rendering, and a pay of a cancelled order refused.
"Past its deadline" allows LATE_SLACK_MS for the job to come round.
"""

from __future__ import annotations

import http.client
import json
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TextIO

from examples.orders.cluster import Cluster
from examples.orders.service import OrderService, render_invoice
from examples.orders.store import CANCELLED, PAID, Order, classify, month_of_ms
from idgen.client import parse as parse_id

__all__ = ["Chaos", "Checks", "LoadResult", "Progress", "check", "run_load"]

THREADS = 16
HTTP_TIMEOUT_S = 60.0
RETRY_PAUSE_S = 0.2
MAX_ATTEMPTS = 100  # per request; each waits out a client deadline at worst
CHAOS_START_SHARE = 0.15  # kills begin once this share of the orders is done
CHAOS_GAP_ORDERS = 5  # orders done between one node's restart and the next kill
VICTIMS = ("idgen-1", "kvcache-1", "scheduler-1", "shardstore-1", "dfs-master-1")
CHECK_THREADS = 8
SETTLE_TIMEOUT_S = 120.0
# how long past its deadline an order may still be seen pending: the job's period, a
# scheduler election after a kill and a loaded machine's delays
LATE_SLACK_MS = 60_000
POLL_S = 0.5
BAR_WIDTH = 30
REDRAW_S = 0.2
ERR_GAVE_UP = "{} {} failed {} times: {}"


class Progress:
    """A bar of orders done on a stream (stderr): redrawn in place at most every REDRAW_S."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = max(1, total)
        self.done = 0
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self._drawn = 0.0
        self._lock = threading.Lock()

    def step(self) -> None:
        """One more order done."""
        with self._lock:
            self.done += 1
            if time.monotonic() - self._drawn >= REDRAW_S or self.done == self.total:
                self._draw()

    def _draw(self) -> None:
        self._drawn = time.monotonic()
        rate = self.done / max(1e-6, self._drawn - self.started)
        filled = BAR_WIDTH * self.done // self.total
        self.stream.write(f"\rorders [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] "
                          f"{self.done}/{self.total} {rate:.0f}/s")
        self.stream.flush()

    def note(self, text: str) -> None:
        """A line of its own above the bar, which is then drawn again."""
        with self._lock:
            self.stream.write(f"\r{text:<{BAR_WIDTH + 40}}\n")
            self._draw()

    def close(self) -> None:
        """End the bar's line."""
        self.stream.write("\n")
        self.stream.flush()


@dataclass
class LoadResult:
    """What the load saw acknowledged."""

    created: list[tuple[int, str]] = field(default_factory=list)  # (id, user)
    paid: set[int] = field(default_factory=set)
    refused: set[int] = field(default_factory=set)
    create_retries: int = 0
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Api:
    """One thread's keep-alive connection to the API, reopened after a failure."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.conn: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """(status, JSON body), or (0, error text) when the connection failed."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection(*self.address, timeout=HTTP_TIMEOUT_S)
        data = None if body is None else json.dumps(body).encode()
        try:
            self.conn.request(method, path, body=data,
                              headers={"Content-Type": "application/json"})
            reply = self.conn.getresponse()
            return reply.status, json.loads(reply.read() or b"null")
        except (OSError, http.client.HTTPException) as exc:
            self.conn.close()
            self.conn = None
            return 0, str(exc)

    def until_answered(self, method: str, path: str, body: Any, done: set[int]) -> tuple[int, Any]:
        """Send until the status is one of `done` (MAX_ATTEMPTS at most)."""
        status, reply = 0, None
        for _ in range(MAX_ATTEMPTS):
            status, reply = self.call(method, path, body)
            if status in done:
                return status, reply
            time.sleep(RETRY_PAUSE_S)
        raise RuntimeError(ERR_GAVE_UP.format(method, path, MAX_ATTEMPTS, reply))


def _one_order(api: _Api, rng: random.Random, users: list[str], products: list[str],
               pay_share: float, result: LoadResult) -> None:
    items = [{"product": p, "qty": rng.randint(1, 3)}
             for p in rng.sample(products, rng.randint(1, 3))]
    body = {"user": rng.choice(users), "items": items}
    _, order = api.until_answered("POST", "/orders", body, {201})
    order_id = int(order["id"])
    with result.lock:
        result.created.append((order_id, body["user"]))
    if rng.random() < pay_share:
        status, _ = api.until_answered("POST", f"/orders/{order_id}/pay", None, {200, 409})
        with result.lock:
            (result.paid if status == 200 else result.refused).add(order_id)


def run_load(address: tuple[str, int], orders: int, users: list[str], products: list[str],
             *, pay_share: float = 0.8, seed: int = 1,
             progress: Progress | None = None) -> LoadResult:
    """Send `orders` orders to the API at `address` (see the module header)."""
    result = LoadResult()
    shares = [orders // THREADS + (i < orders % THREADS) for i in range(THREADS)]
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        api, rng = _Api(address), random.Random(seed * 1000 + index)
        try:
            for _ in range(shares[index]):
                _one_order(api, rng, users, products, pay_share, result)
                if progress:
                    progress.step()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.monotonic() - started
    if errors:
        raise errors[0]
    return result


class Chaos:
    """SIGKILL and restart one node of each daemon in turn, during the load."""

    def __init__(self, cluster: Cluster, progress: Progress,
                 log: Callable[[str], None]) -> None:
        self.cluster = cluster
        self.progress = progress
        self.log = log
        self.done: list[str] = []
        self.thread = threading.Thread(target=self._run, name="chaos", daemon=True)

    def start(self) -> None:
        """Begin in the background."""
        self.thread.start()

    def _wait_for(self, orders: int) -> None:
        while self.progress.done < min(orders, self.progress.total - 1):
            time.sleep(0.05)

    def _run(self) -> None:
        self._wait_for(int(self.progress.total * CHAOS_START_SHARE))
        for name in VICTIMS:
            self.cluster.kill(name)
            self.log(f"SIGKILLed {name}")
            self._wait_for(self.progress.done + CHAOS_GAP_ORDERS)
            self.cluster.start_again(name)
            self.log(f"{name} restarted")
            self.done.append(name)

    def join(self) -> None:
        """Wait for every kill and restart."""
        self.thread.join()


@dataclass
class Checks:
    """The results of `check`."""

    lost: list[int]
    duplicates: int
    late_pending: list[int]
    invoices_ok: int
    invoices_bad: list[int]
    cancelled: int
    pay_after_cancel_refused: bool | None
    month_listing_complete: bool


def _pending(service: OrderService) -> list[int]:
    """The ids of every order still pending, oldest first."""
    rows = classify(service.clients.store.keys_between("-", "+"))
    return sorted(rows.records.keys() - rows.settled)


def _settled(service: OrderService, log: Callable[[str], None]) -> list[int]:
    """Poll until no order is pending (every deadline passed and the job ran), at most
    the deadline plus SETTLE_TIMEOUT_S; the orders seen pending more than LATE_SLACK_S past
    their deadline meanwhile, or still pending past it at the end."""
    give_up = time.monotonic() + service.settings.deadline_s + SETTLE_TIMEOUT_S
    late: set[int] = set()
    while True:
        pending = _pending(service)
        now_ms = time.time_ns() // 1_000_000
        overdue = [now_ms - parse_id(i).time_ms - service.deadline_ms for i in pending]
        late.update(i for i, ms in zip(pending, overdue, strict=True) if ms > LATE_SLACK_MS)
        if not pending or time.monotonic() > give_up:
            return sorted(late | {i for i, ms in zip(pending, overdue, strict=True) if ms > 0})
        log(f"waiting for the cancel job: {len(pending)} order(s) pending")
        time.sleep(POLL_S)


def _cancelled(service: OrderService, pool: ThreadPoolExecutor) -> int:
    """How many orders are cancelled (their final rows read, no write)."""
    rows = classify(service.clients.store.keys_between("-", "+"))
    settled = [(i, rows.records[i]) for i in rows.settled if i in rows.records]
    finals = pool.map(lambda pair: service.clients.store.final(*pair), settled)
    return sum(status == CANCELLED for status in finals)


def check(service: OrderService, result: LoadResult, api: tuple[str, int],
          log: Callable[[str], None]) -> Checks:
    """Read everything back (see the module header)."""
    ids = [order_id for order_id, _ in result.created]
    paid = sorted(result.paid)
    with ThreadPoolExecutor(CHECK_THREADS) as pool:  # the service's clients are per thread
        found = list(pool.map(lambda pair: _read(service, *pair), result.created))
        lost = [i for (i, _), order in zip(result.created, found, strict=True) if order is None]
        late = _settled(service, log)
        users = dict(result.created)
        invoices = list(pool.map(lambda i: _invoice_ok(service, i, users[i]), paid))
        cancelled = _cancelled(service, pool)
    good = sum(invoices)
    bad = [i for i, ok in zip(paid, invoices, strict=True) if not ok]
    return Checks(lost, len(ids) - len(set(ids)), late, good, bad, cancelled,
                  _pay_after_cancel(service, result, api), _month_listing(result, api))


def _read(service: OrderService, order_id: int, user: str) -> Order | None:
    return service.clients.store.read(order_id, user)


def _invoice_ok(service: OrderService, order_id: int, user: str) -> bool:
    order = _read(service, order_id, user)
    return (order is not None and order.status == PAID
            and service.invoice(order_id) == render_invoice(order))


def _pay_after_cancel(service: OrderService, result: LoadResult,
                      api: tuple[str, int]) -> bool | None:
    """Pay one cancelled order through the API: True when refused with 409 (None: no
    cancelled order to try)."""
    unpaid = [i for i, _ in result.created if i not in result.paid]
    users = dict(result.created)
    for order_id in unpaid:
        order = _read(service, order_id, users[order_id])
        if order is not None and order.status == CANCELLED:
            status, _ = _Api(api).until_answered("POST", f"/orders/{order_id}/pay", None,
                                                 {200, 409})
            return status == 409
    return None


def _month_listing(result: LoadResult, api: tuple[str, int]) -> bool:
    """The busiest user's orders of each month through GET /users/{u}/orders?month=...:
    every acknowledged order of theirs is listed, with the status GET /orders/{id} gives."""
    users = Counter(user for _, user in result.created)
    if not users:
        return True
    user = users.most_common(1)[0][0]
    mine = {i for i, u in result.created if u == user}
    client, listed = _Api(api), {}
    for month in sorted({month_of_ms(parse_id(i).time_ms) for i in mine}):
        _, reply = client.until_answered("GET", f"/users/{user}/orders?month={month}", None,
                                         {200})
        listed.update({int(o["id"]): o["status"] for o in reply["orders"]})
    if not mine <= listed.keys():
        return False
    sample = min(mine)
    _, order = client.until_answered("GET", f"/orders/{sample}", None, {200})
    return order["status"] == listed[sample] and order["user"] == user
