"""The order service's rules without daemons: the settle compare-and-set, the cancel job,
the deadline, idempotent creates and the month listing, on in-memory stand-ins for the
daemons' clients that keep their contracts (SET NX, GET, a range read by the time inside
a Snowflake id, a cache that misses, a file store).

Strategy: an `OrderService` takes its clients from a thread-local; the test puts stand-ins
there for the test's thread, so every request runs the service's own code. Ids are made
with idgen's layout at a chosen time, so deadlines are reached without waiting.
"""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from examples.orders.cluster import Endpoints
from examples.orders.service import (
    NotFound,
    OrderService,
    Refused,
    Settings,
    invoice_path,
    render_invoice,
)
from examples.orders.store import (
    CANCELLED,
    PAID,
    PENDING,
    TABLE,
    OrderStore,
    month_start_ms,
    parse_month,
)
from idgen.layout import DEFAULT_EPOCH_MS, SEQUENCE_BITS, WORKER_BITS
from idgen.layout import parse as parse_id

NOWHERE = Endpoints([], "127.0.0.1:1", [], {"default": ["127.0.0.1:1"],
                                             "users": ["127.0.0.1:1"]}, [])
DEADLINE_S = 10.0
DEADLINE_MS = int(DEADLINE_S * 1000)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _point(value: Any) -> int:
    """A range point as TABLE.RANGE reads it for SNOWFLAKE: Unix ms or `YYYY-MM`."""
    text = str(value)
    return month_start_ms(*parse_month(text)) if "-" in text else int(text)


class FakeKV:
    """A shardstore client's contract for the calls the service makes."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def set(self, key: Any, value: Any, *, nx: bool = False, **_: Any) -> bool:
        key = _bytes(key)
        if nx and key in self.data:
            return False
        self.data[key] = _bytes(value)
        return True

    def get(self, key: Any) -> bytes | None:
        return self.data.get(_bytes(key))

    def range(self, table: str, low: Any, high: Any, count: int | None = None) -> list[bytes]:
        prefix = f"{table}:".encode()
        low_ms = -1 if low == "-" else _point(low)
        high_ms = 1 << 62 if high == "+" else _point(high)
        return sorted(k for k in self.data if k.startswith(prefix)
                      and low_ms <= parse_id(int(k[len(prefix):].split(b":")[0])).time_ms
                      < high_ms)

    def close(self) -> None:
        return


class FakeCache:
    """A cache that keeps what it is given."""

    def __init__(self) -> None:
        self.items: dict[str, bytes] = {}

    def get(self, key: str) -> Any:
        value = self.items.get(key)
        return None if value is None else SimpleNamespace(value=value)

    def set(self, key: str, value: bytes, exptime: int = 0) -> bool:
        self.items[key] = value
        return True


class FakeDfs:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def mkdir(self, path: str, parents: bool = False) -> None:
        return

    def write_bytes(self, path: str, data: bytes) -> None:
        self.files[path] = data

    def read_bytes(self, path: str) -> bytes:
        return self.files[path]


class FakeIds:
    """Ids of idgen's layout at `now - age_s`."""

    def __init__(self) -> None:
        self.age_s = 0.0
        self.sequence = itertools.count()

    def next_id(self) -> int:
        at = time.time_ns() // 1_000_000 - int(self.age_s * 1000)
        return ((at - DEFAULT_EPOCH_MS) << (WORKER_BITS + SEQUENCE_BITS)) | (
            (1 << SEQUENCE_BITS) + next(self.sequence) % (1 << SEQUENCE_BITS))


@pytest.fixture
def world() -> SimpleNamespace:
    store = OrderStore(["127.0.0.1:1"], ["127.0.0.1:1"])  # the clients connect lazily
    store.orders, store.users = FakeKV(), FakeKV()  # type: ignore[assignment]
    clients = SimpleNamespace(store=store, ids=FakeIds(), cache=FakeCache(), dfs=FakeDfs(),
                              months=set())
    service = OrderService(NOWHERE, Settings(deadline_s=DEADLINE_S))
    service._local.clients = clients
    for user in ("alice", "bob"):
        store.put_user(user, {"name": user})
    for product, price in (("tea", 250), ("cake", 400)):
        store.put_product(product, {"name": product, "price_cents": price})
    return SimpleNamespace(service=service, clients=clients)


def _serve(world: SimpleNamespace, deadline_s: float) -> OrderService:
    """Another service on the same stand-ins, with another deadline."""
    other = OrderService(NOWHERE, Settings(deadline_s=deadline_s))
    other._local.clients = world.clients
    return other


def test_pay_settles_once_and_the_job_never_cancels_a_paid_order(world: Any) -> None:
    order = world.service.create("alice", [{"product": "tea", "qty": 2}])
    assert order.status == PENDING and order.total_cents == 500
    paid = world.service.pay(order.id)
    assert world.service.pay(order.id).status == PAID  # a second pay is the same pay
    assert world.clients.dfs.files[invoice_path(order.id)] == render_invoice(paid)
    assert world.service.cancel_expired(now_ms=_now_ms() + 2 * DEADLINE_MS) == 0
    assert world.service.get(order.id).status == PAID


def test_the_job_cancels_an_unpaid_order_past_its_deadline_and_pay_is_refused(
        world: Any) -> None:
    world.clients.ids.age_s = DEADLINE_S / 2
    order = world.service.create("bob", [{"product": "cake", "qty": 1}])
    assert world.service.cancel_expired() == 0  # before its deadline
    # the next runs, a deadline later (the runs read one deadline behind their mark)
    later_ms = _now_ms() + DEADLINE_MS
    assert world.service.cancel_expired(now_ms=later_ms) == 1
    assert world.service.cancel_expired(now_ms=later_ms + 1000) == 0  # once
    with pytest.raises(Refused):
        world.service.pay(order.id)
    assert world.service.get(order.id).status == CANCELLED
    assert invoice_path(order.id) not in world.clients.dfs.files


def test_a_payment_past_the_deadline_cancels_the_order_instead(world: Any) -> None:
    world.clients.ids.age_s = DEADLINE_S / 2
    order = world.service.create("alice", [{"product": "tea", "qty": 1}])
    assert order.status == PENDING
    with pytest.raises(Refused):
        _serve(world, DEADLINE_S / 4).pay(order.id)
    assert world.service.get(order.id).status == CANCELLED


def test_a_create_finished_past_its_deadline_is_cancelled_by_its_creator(world: Any) -> None:
    world.clients.ids.age_s = DEADLINE_S * 2
    order = world.service.create("alice", [{"product": "tea", "qty": 1}])
    assert order.status == CANCELLED
    assert world.service.get(order.id).status == CANCELLED


def test_a_create_retried_with_its_id_makes_one_order(world: Any) -> None:
    store = world.clients.store
    order = world.service.create("bob", [{"product": "tea", "qty": 3}])
    record = store.orders.get(f"{TABLE}:{order.id}:bob")
    rows = len(store.orders.data)
    store.write_record(order.id, "bob", record)  # the same SET NX sent again
    assert len(store.orders.data) == rows
    with pytest.raises(RuntimeError):
        store.write_record(order.id, "bob", record + b" ")


def test_unknown_user_product_and_order_are_not_found(world: Any) -> None:
    with pytest.raises(NotFound):
        world.service.create("carol", [{"product": "tea", "qty": 1}])
    with pytest.raises(NotFound):
        world.service.create("alice", [{"product": "coffee", "qty": 1}])
    with pytest.raises(NotFound):
        world.service.get(12345)


def test_product_pages_are_read_through_the_cache(world: Any) -> None:
    for _ in range(3):
        world.service.create("alice", [{"product": "tea", "qty": 1}])
    counts = world.service.figures.counts
    assert (counts["cache_misses"], counts["cache_hits"]) == (1, 2)


def test_a_users_month_lists_only_theirs(world: Any) -> None:
    mine = {world.service.create("alice", [{"product": "tea", "qty": 1}]).id
            for _ in range(3)}
    world.service.create("bob", [{"product": "tea", "qty": 1}])
    month = datetime.now(UTC).strftime("%Y-%m")
    assert {o.id for o in world.service.user_orders("alice", month)} == mine
    assert world.service.user_orders("alice", "2001-01") == []


def test_the_daily_report_counts_the_days_orders(world: Any) -> None:
    paid = world.service.create("alice", [{"product": "tea", "qty": 1}])
    world.service.pay(paid.id)
    world.service.create("bob", [{"product": "cake", "qty": 1}])
    path = world.service.daily_report()
    text = world.clients.dfs.files[path].decode()
    assert "orders: 2\nsettled: 1\npending: 1\n" in text


def test_the_default_deadline_is_fifteen_minutes() -> None:
    assert Settings().deadline_s == 15 * 60
