"""The order service: what each request does with the five daemons.

Strategy: `OrderService` is shared by the HTTP threads and the scheduler worker's threads;
every daemon client it uses is created per thread (`_Clients` in a threading.local), since
the blocking clients are not thread-safe. The rules of each action:
- create: the user must exist (keyspace users); each item's price comes from its product
  page, read through kvcache's proxy (miss: render from shardstore, set with a TTL); the
  id comes from idgen, then the record is written with SET NX (store.py), retried with the
  same id while shardstore is unavailable. A create that finishes past its own deadline
  cancels the order before it answers, so the cancel job never has to see a late row.
- pay: compare-and-set to `paid` (store.py); past the deadline the order is cancelled
  instead and the pay refused; once paid, the invoice is written to dfs
  (`/invoices/<YYYY-MM>/<id>.txt`, the same bytes on every retry) before the reply.
- the cancel job (`cancel_expired`): reads the rows whose id time lies in [mark - deadline,
  now - deadline) (the mark: the previous run's start, a plain key; the first run reads
  from the beginning), cancels every pending order there with the compare-and-set, then
  moves the mark to this run's start. Consecutive windows meet end to end, and a failed run
  leaves the mark, so the next covers its window too. A row of the window was written
  before its deadline passed (a create that finished later cancelled its own order), so
  before the run began, and the run's read sees it. The deadline must stay the same from
  run to run (a shorter one would skip the stretch between the two windows).
- the daily report job writes `/reports/<YYYY-MM-DD>.txt` (orders per status that day).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from dfs.client import DfsClient
from examples.orders.cluster import Endpoints
from examples.orders.store import (
    CANCELLED,
    PAID,
    PENDING,
    Order,
    OrderStore,
    classify,
    month_of_ms,
    parse_month,
    record_bytes,
    valid_name,
)
from idgen.client import IdgenClient
from idgen.client import parse as parse_id
from kvcache.client import CacheError, Client
from shardstore.client import ShardstoreError, ShardstoreUnavailable

__all__ = ["DEFAULT_DEADLINE_S", "BadRequest", "NotFound", "OrderService", "Refused",
           "Settings"]

T = TypeVar("T")
DEFAULT_DEADLINE_S = 15 * 60.0  # an unpaid order is cancelled this long after its id time
DEFAULT_PAGE_TTL_S = 60
MAX_ITEMS = 50
MAX_QUANTITY = 1000
WRITE_ATTEMPTS = 5  # a create's record write, each attempt within the client's deadline
RETRY_PAUSE_S = 0.2
SETUP_TIMEOUT_S = 120.0
# error replies after which the outcome is unknown or the shard had no leader: the same
# SET NX is sent again (shardstore/admin_retry.py treats the same ones as transient)
TRANSIENT_PREFIXES = ("UNKNOWN", "TRYAGAIN", "CLUSTERDOWN", "LOADING", "MASTERDOWN")
MARK_KEY = "orders-job:cancel-mark"
ERR_USER = "unknown user {!r}"
ERR_PRODUCT = "unknown product {!r}"
ERR_ITEMS = f"items must be 1 to {MAX_ITEMS} of {{\"product\": name, \"qty\": 1..{MAX_QUANTITY}}}"
ERR_NAME = "bad name {!r} (1 to 64 of A-Z a-z 0-9 _ -)"
ERR_NO_ORDER = "no order {}"
ERR_CANCELLED = "order {} was cancelled: it cannot be paid"


class BadRequest(ValueError):
    """The request itself is wrong (HTTP 400)."""


class NotFound(LookupError):
    """No such user, product or order (HTTP 404)."""


class Refused(Exception):
    """The order's state forbids the action (HTTP 409)."""


@dataclass(frozen=True)
class Settings:
    """The service's knobs: the unpaid deadline and the product pages' cache TTL."""

    deadline_s: float = DEFAULT_DEADLINE_S
    page_ttl_s: int = DEFAULT_PAGE_TTL_S


@dataclass
class Figures:
    """What the service did, for the demo's summary (guarded by `lock`)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: Counter[str] = field(default_factory=Counter)

    def add(self, name: str, amount: int = 1) -> None:
        """Count `amount` more of `name`."""
        with self.lock:
            self.counts[name] += amount


class _Clients:
    """One thread's clients of the five daemons (dfs is the only one opened lazily)."""

    def __init__(self, endpoints: Endpoints) -> None:
        self.store = OrderStore(endpoints.shardstore["default"], endpoints.shardstore["users"])
        self.ids = IdgenClient(endpoints.idgen)
        self.cache = Client([endpoints.kvproxy], timeout=2.0)
        self.dfs = DfsClient(endpoints.dfs)
        self.months: set[str] = set()

    def close(self) -> None:
        self.store.close()
        self.ids.close()
        self.cache.close()
        self.dfs.close()


def render_invoice(order: Order) -> bytes:
    """The invoice of a paid order, byte for byte the same for one order."""
    lines = [f"INVOICE {order.id}", f"user: {order.user}",
             f"date: {datetime.fromtimestamp(order.created_ms / 1000, tz=UTC).isoformat()}"]
    lines += [f"{i['qty']} x {i['product']} @ {i['price_cents']} cents" for i in order.items]
    lines.append(f"total: {order.total_cents} cents")
    return ("\n".join(lines) + "\n").encode()


def invoice_path(order_id: int) -> str:
    """Where the invoice of an order lives in dfs."""
    return f"/invoices/{month_of_ms(parse_id(order_id).time_ms)}/{order_id}.txt"


class OrderService:
    """The order service over the five daemons (see the module header). Thread-safe."""

    def __init__(self, endpoints: Endpoints, settings: Settings | None = None) -> None:
        self.endpoints = endpoints
        self.settings = settings or Settings()
        self.figures = Figures()
        self._local = threading.local()
        self._all: list[_Clients] = []
        self._all_lock = threading.Lock()

    @property
    def clients(self) -> _Clients:
        """This thread's clients."""
        clients = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = _Clients(self.endpoints)
            with self._all_lock:
                self._all.append(clients)
        return clients

    def close(self) -> None:
        """Close every thread's clients."""
        with self._all_lock:
            for clients in self._all:
                clients.close()
            self._all.clear()

    @property
    def deadline_ms(self) -> int:
        """The unpaid deadline in ms."""
        return int(self.settings.deadline_s * 1000)

    # -- catalogue ---------------------------------------------------------------------------

    def setup(self, users: list[str], products: dict[str, int],
              months: list[str]) -> dict[str, int | None]:
        """Create the orders table with a range for the first of `months`, open the others
        (TABLE.SPLIT, each on the next shard), write the users and the products. Returns
        the shard each month opened went to (None: open already)."""
        store = self.clients.store
        store.wait_ready()
        opened = _retried(lambda: _table(store, months))
        for name in users:
            store.put_user(name, {"name": name})
        for name, price in products.items():
            store.put_product(name, {"name": name, "price_cents": price})
        return opened

    def product_page(self, name: str) -> dict[str, Any]:
        """A product page, read through the cache: a miss renders it from shardstore and
        sets it with the TTL. A cache that fails counts as a miss."""
        if not valid_name(name):
            raise BadRequest(ERR_NAME.format(name))
        key = f"page:product:{name}"
        cache = self.clients.cache
        try:
            item = cache.get(key)
        except CacheError:
            item = None
        if item is not None:
            self.figures.add("cache_hits")
            return _page_fields(item.value)
        self.figures.add("cache_misses")
        product = self.clients.store.product(name)
        if product is None:
            raise NotFound(ERR_PRODUCT.format(name))
        page = _render_page(product)
        try:
            cache.set(key, page, exptime=self.settings.page_ttl_s)
        except CacheError:
            self.figures.add("cache_errors")
        return _page_fields(page)

    # -- orders ------------------------------------------------------------------------------

    def create(self, user: str, items: list[dict[str, Any]]) -> Order:
        """A new order (see the module header); BadRequest, NotFound."""
        if not isinstance(user, str) or not valid_name(user):
            raise BadRequest(ERR_NAME.format(user))
        lines = [self._line(item) for item in _checked_items(items)]
        if not self.clients.store.user_exists(user):
            raise NotFound(ERR_USER.format(user))
        total = sum(line["qty"] * line["price_cents"] for line in lines)
        order_id = self.clients.ids.next_id()
        record = record_bytes(order_id, user, lines, total)
        self._write(order_id, user, record)
        created = parse_id(order_id).time_ms
        status = PENDING
        if _now_ms() - created > self.deadline_ms:
            status = self.clients.store.settle(order_id, user, CANCELLED)
        self.figures.add("created")
        return Order(order_id, user, lines, total, created, status)

    def _line(self, item: dict[str, Any]) -> dict[str, Any]:
        page = self.product_page(item["product"])
        return {"product": item["product"], "qty": item["qty"],
                "price_cents": page["price_cents"]}

    def _write(self, order_id: int, user: str, record: bytes) -> None:
        for attempt in range(WRITE_ATTEMPTS):
            try:
                self.clients.store.write_record(order_id, user, record)
                return
            except ShardstoreError as exc:
                transient = isinstance(exc, ShardstoreUnavailable) or str(exc).startswith(
                    TRANSIENT_PREFIXES)
                if not transient or attempt == WRITE_ATTEMPTS - 1:
                    raise
                self.figures.add("create_retries")
                time.sleep(RETRY_PAUSE_S)

    def get(self, order_id: int) -> Order:
        """The order; NotFound."""
        order = self.clients.store.find(order_id)
        if order is None:
            raise NotFound(ERR_NO_ORDER.format(order_id))
        return order

    def pay(self, order_id: int) -> Order:
        """Pay an order: its invoice is in dfs when this returns; NotFound, Refused (the
        order was cancelled, by the job or because its deadline passed)."""
        order = self.get(order_id)
        store = self.clients.store
        late = _now_ms() - order.created_ms > self.deadline_ms
        outcome = store.settle(order_id, order.user, CANCELLED if late else PAID)
        if outcome != PAID:
            self.figures.add("pay_refused")
            raise Refused(ERR_CANCELLED.format(order_id))
        paid = Order(order.id, order.user, order.items, order.total_cents, order.created_ms,
                     PAID)
        self._write_invoice(paid)
        self.figures.add("paid")
        return paid

    def _write_invoice(self, order: Order) -> None:
        path = invoice_path(order.id)
        directory = path.rsplit("/", 1)[0]
        clients = self.clients
        if directory not in clients.months:
            clients.dfs.mkdir(directory, parents=True)
            clients.months.add(directory)
        clients.dfs.write_bytes(path, render_invoice(order))
        self.figures.add("invoices")

    def invoice(self, order_id: int) -> bytes:
        """The invoice file of a paid order, as dfs has it."""
        return self.clients.dfs.read_bytes(invoice_path(order_id))

    def user_orders(self, user: str, month: str) -> list[Order]:
        """A user's orders of one month (`YYYY-MM`); BadRequest."""
        if not valid_name(user):
            raise BadRequest(ERR_NAME.format(user))
        try:
            parse_month(month)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        return self.clients.store.user_month(user, month)

    # -- the jobs ----------------------------------------------------------------------------

    def cancel_expired(self, now_ms: int | None = None) -> int:
        """The cancel job's run: cancel every pending order past its deadline; how many."""
        now_ms = _now_ms() if now_ms is None else now_ms
        store = self.clients.store
        mark_raw = store.orders.get(MARK_KEY)
        low = "-" if mark_raw is None else max(0, int(mark_raw) - self.deadline_ms)
        high = now_ms - self.deadline_ms
        rows = classify(store.keys_between(low, high))
        cancelled = 0
        for order_id, user in rows.records.items():
            if order_id not in rows.settled and store.settle(order_id, user,
                                                               CANCELLED) == CANCELLED:
                cancelled += 1
        store.orders.set(MARK_KEY, str(now_ms))
        self.figures.add("cancelled_by_job", cancelled)
        return cancelled

    def daily_report(self, day: datetime | None = None) -> str:
        """The report job's run: orders per status of one UTC day (default today) written
        to `/reports/<YYYY-MM-DD>.txt`; returns the path."""
        day = (day or datetime.now(UTC)).replace(hour=0, minute=0, second=0, microsecond=0)
        start_ms = int(day.timestamp() * 1000)
        end_ms = int((day + timedelta(days=1)).timestamp() * 1000)
        rows = classify(self.clients.store.keys_between(start_ms, end_ms))
        settled = len(rows.settled & rows.records.keys())
        text = (f"report {day.date().isoformat()}\norders: {len(rows.records)}\n"
                f"settled: {settled}\npending: {len(rows.records) - settled}\n")
        path = f"/reports/{day.date().isoformat()}.txt"
        self.clients.dfs.mkdir("/reports", parents=True)
        self.clients.dfs.write_bytes(path, text.encode())
        self.figures.add("reports")
        return path


def _table(store: OrderStore, months: list[str]) -> dict[str, int | None]:
    store.create_table(months[:1])
    return {month: store.open_month(month) for month in months[1:]}


def _retried(step: Callable[[], T]) -> T:
    """Run an idempotent set-up step again after a shardstore error (a configuration group
    or shard electing its leader, a move in progress) for up to SETUP_TIMEOUT_S."""
    give_up = time.monotonic() + SETUP_TIMEOUT_S
    while True:
        try:
            return step()
        except ShardstoreError:
            if time.monotonic() > give_up:
                raise
            time.sleep(RETRY_PAUSE_S)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _checked_items(items: object) -> list[dict[str, Any]]:
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_ITEMS:
        raise BadRequest(ERR_ITEMS)
    for item in items:
        if not (isinstance(item, dict) and isinstance(item.get("product"), str)
                and type(item.get("qty")) is int and 1 <= item["qty"] <= MAX_QUANTITY):
            raise BadRequest(ERR_ITEMS)
        if not valid_name(item["product"]):
            raise BadRequest(ERR_NAME.format(item["product"]))
    return items  # type: ignore[return-value]


PAGE_HEADER = b"<!-- product page -->\n"


def _render_page(product: dict[str, Any]) -> bytes:
    return (PAGE_HEADER + f"<h1>{product['name']}</h1>\n<p class=price>"
            f"{product['price_cents']}</p>\n".encode())


def _page_fields(page: bytes) -> dict[str, Any]:
    text = page.decode()
    name = text.split("<h1>", 1)[1].split("</h1>", 1)[0]
    price = int(text.split("<p class=price>", 1)[1].split("</p>", 1)[0])
    return {"name": name, "price_cents": price}
