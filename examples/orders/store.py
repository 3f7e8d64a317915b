"""Orders and users in shardstore, and the order status compare-and-set.

Strategy
- Vertical split: users live in keyspace `users` (`user:<name>`, slot-routed over that
  keyspace's shards); products and orders in keyspace `default`.
- Horizontal split: orders are rows of the RANGE table `orders` of kind SNOWFLAKE, so a
  row's position is the time inside its order id; split points at month starts give each
  month its own range (`open_month` is a TABLE.SPLIT). An order is two rows:
  `orders:<id>:<user>` (the record, JSON) and, once the order is settled,
  `orders:<id>:<user>:final` (`paid` or `cancelled`). A pending order has no final row.
- A pointer row `order-user:<id>` (a plain key, slot-routed) names an order's user, so
  reading one order by its id is three GETs; a user's month is a TABLE.RANGE over that
  month only, filtered by the user part of the keys.
- The compare-and-set: the final row is written with SET ... NX, once, by whoever settles
  the order first; pay writes `paid`, the cancel job writes `cancelled`. The loser reads the
  row back to learn the outcome, so pay after cancel is refused and cancel after pay never
  happens. A SET NX whose reply was lost is sent again: NX then fails and the read-back
  names the value, the writer's own when it won. Pays of one order race harmlessly (both
  write `paid`).
- A create is idempotent: its id comes from idgen first, then the pointer and the record
  are written with SET NX; a retry after an unknown outcome finds the same rows (ids are
  unique, so no one else writes those keys) and counts as done. A pointer without its
  record (a create that never finished) reads as no order.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from idgen.client import parse as parse_id
from shardstore.client import ShardstoreClient, ShardstoreError, ShardstoreUnavailable

__all__ = [
    "CANCELLED", "PAID", "PENDING", "TABLE", "Order", "OrderStore", "month_bounds",
    "parse_month", "valid_name",
]

TABLE = "orders"
DEFAULT_KEYSPACE = "default"
PAID = "paid"
CANCELLED = "cancelled"
PENDING = "pending"
FINAL_SUFFIX = ":final"
POINTER_PREFIX = "order-user:"  # outside the table's prefix `orders:`
ERR_OTHER = "order {} exists with other contents"
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
MONTH_PATTERN = re.compile(r"(\d{4})-(\d{2})")
MAX_YEAR = 9998  # so that the month after any month is a date TABLE.RANGE takes
ERR_MONTH = f"month must be YYYY-MM (a real month, years 1970-{MAX_YEAR}): {{!r}}"
ERR_TABLE_EXISTS = "exists"
READY_KEY = "orders-service:ready"
SETTLE_ATTEMPTS = 3
ERR_SETTLE = "order {}: SET NX of its final row failed and no final row is there"
READY_TIMEOUT_S = 120.0
READY_POLL_S = 0.5


def valid_name(name: str) -> bool:
    """A user or product name: 1 to 64 of A-Z a-z 0-9 _ -."""
    return NAME_PATTERN.fullmatch(name) is not None


def parse_month(text: str) -> tuple[int, int]:
    """`YYYY-MM` as (year, month); ValueError naming the text otherwise."""
    match = MONTH_PATTERN.fullmatch(text)
    if match is None:
        raise ValueError(ERR_MONTH.format(text))
    year, month = int(match.group(1)), int(match.group(2))
    if not (1970 <= year <= MAX_YEAR and 1 <= month <= 12):
        raise ValueError(ERR_MONTH.format(text))
    return year, month


def month_bounds(year: int, month: int) -> tuple[str, str]:
    """The TABLE.RANGE points of a month: its first day and the next month's."""
    following = (year + 1, 1) if month == 12 else (year, month + 1)
    return f"{year:04d}-{month:02d}", f"{following[0]:04d}-{following[1]:02d}"


def month_start_ms(year: int, month: int) -> int:
    """The Unix ms of a month's first instant (UTC)."""
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp() * 1000)


def _field(reply: Any, name: bytes) -> Any:
    """A field of a map reply (a dict, or RESP2's flat list of pairs)."""
    if isinstance(reply, dict):
        return reply[name]
    return dict(zip(reply[::2], reply[1::2], strict=True))[name]


def month_of_ms(ms: int) -> str:
    """The UTC month `YYYY-MM` of a Unix time in ms."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m")


@dataclass(frozen=True)
class Order:
    """One order as read back: its record and its status (pending, paid or cancelled)."""

    id: int
    user: str
    items: list[dict[str, Any]]
    total_cents: int
    created_ms: int
    status: str

    def as_json(self) -> dict[str, Any]:
        """The order as the HTTP API shows it."""
        return {"id": str(self.id), "user": self.user, "items": self.items,
                "total_cents": self.total_cents, "created_ms": self.created_ms,
                "status": self.status}


def record_key(order_id: int, user: str) -> str:
    """The record row of an order."""
    return f"{TABLE}:{order_id}:{user}"


def pointer_key(order_id: int) -> str:
    """The pointer row of an order (a plain key, slot-routed): its user."""
    return f"{POINTER_PREFIX}{order_id}"


def _split_key(key: bytes) -> tuple[int, str, bool]:
    """(id, user, is the final row) of a row key of the table."""
    text = key.decode()
    final = text.endswith(FINAL_SUFFIX)
    if final:
        text = text[: -len(FINAL_SUFFIX)]
    _, order_id, user = text.split(":", 2)
    return int(order_id), user, final


def record_bytes(order_id: int, user: str, items: list[dict[str, Any]], total: int) -> bytes:
    """The record's bytes; the same for every retry of one create."""
    body = {"user": user, "items": items, "total_cents": total}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


class OrderStore:
    """The service's view of shardstore: one client per keyspace (not thread-safe: one
    OrderStore per thread)."""

    def __init__(self, default_nodes: list[str], users_nodes: list[str]) -> None:
        self.orders = ShardstoreClient(default_nodes)
        self.users = ShardstoreClient(users_nodes)

    def close(self) -> None:
        """Close both clients."""
        self.orders.close()
        self.users.close()

    # -- set-up ----------------------------------------------------------------------------

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Wait until both keyspaces have a slot map and answer a write (a cluster just
        started elects its shards' leaders first); the last error after `timeout_s`."""
        give_up = time.monotonic() + timeout_s
        while True:
            try:
                self.orders.set(READY_KEY, "1")
                self.users.set(READY_KEY, "1")
                return
            except (ShardstoreError, OSError):
                if time.monotonic() > give_up:
                    raise
                time.sleep(READY_POLL_S)
                self.orders.refresh_slots()
                self.users.refresh_slots()

    def create_table(self, months: list[str]) -> None:
        """TABLE.CREATE the orders table split at the start of each of `months` (already
        there: fine)."""
        points = sorted({month_bounds(*parse_month(m))[0] for m in months})
        try:
            self.orders.execute("TABLE.CREATE", TABLE, "RANGE", "SNOWFLAKE", "SPLITS", *points)
        except ShardstoreError as exc:
            if ERR_TABLE_EXISTS not in str(exc):
                raise

    def open_month(self, month: str) -> int | None:
        """Give `month` a range of its own on the next shard of the keyspace after the one
        holding the month before it: a TABLE.SPLIT at the month's start (and one at its end,
        keeping that shard) . Returns the shard, or None when the month's start is a split
        point already."""
        low, high = (month_start_ms(*parse_month(p)) for p in month_bounds(*parse_month(month)))
        ranges = self.table_info()[b"ranges"]
        if any(r[0] == str(low).encode() for r in ranges):
            return None
        holder = next(int(r[2]) for r in ranges
                      if (r[0] == b"-" or int(r[0]) < low) and (r[1] == b"+" or low < int(r[1])))
        spaces = self.orders.execute("KEYSPACE.LIST")
        shards = next(_field(ks, b"shards") for ks in spaces
                      if _field(ks, b"name") == DEFAULT_KEYSPACE.encode())
        target = shards[(shards.index(holder) + 1) % len(shards)]
        if not any(r[0] == str(high).encode() for r in ranges):
            self.orders.execute("TABLE.SPLIT", TABLE, high)
        self.orders.execute("TABLE.SPLIT", TABLE, low, "SHARD", target)
        return int(target)

    def table_info(self) -> dict[bytes, Any]:
        """TABLE.INFO orders, as a map (a RESP2 reply is a flat list of pairs)."""
        reply = self.orders.execute("TABLE.INFO", TABLE)
        return reply if isinstance(reply, dict) else {k: _field(reply, k) for k in reply[::2]}

    def put_user(self, name: str, profile: dict[str, Any]) -> None:
        """Write a user (keyspace users)."""
        self.users.set(f"user:{name}", json.dumps(profile))

    def user_exists(self, name: str) -> bool:
        """Whether the user is known."""
        return self.users.get(f"user:{name}") is not None

    def put_product(self, name: str, product: dict[str, Any]) -> None:
        """Write a product (keyspace default, slot-routed)."""
        self.orders.set(f"product:{name}", json.dumps(product))

    def product(self, name: str) -> dict[str, Any] | None:
        """A product, or None."""
        raw = self.orders.get(f"product:{name}")
        return None if raw is None else json.loads(raw)

    # -- orders ----------------------------------------------------------------------------

    def write_record(self, order_id: int, user: str, record: bytes) -> None:
        """SET NX of the pointer, then of the record; a retry that finds its own rows is a
        success (ids are unique: other contents are a bug, RuntimeError)."""
        for key, value in ((pointer_key(order_id), user.encode()),
                           (record_key(order_id, user), record)):
            if not self.orders.set(key, value, nx=True) and self.orders.get(key) != value:
                raise RuntimeError(ERR_OTHER.format(order_id))

    def settle(self, order_id: int, user: str, outcome: str) -> str:
        """Compare-and-set the final row to `outcome` if the order is pending; returns the
        outcome that holds afterwards (ours, or the one written first)."""
        key = record_key(order_id, user) + FINAL_SUFFIX
        for _ in range(SETTLE_ATTEMPTS):
            if self.orders.set(key, outcome, nx=True):
                return outcome
            held = self.orders.get(key)
            if held is not None:  # final rows are never deleted: None means none yet
                return held.decode()
        raise RuntimeError(ERR_SETTLE.format(order_id))

    def keys_between(self, low: str | int, high: str | int) -> list[bytes]:
        """The table's row keys with a position (an id's time) in [low, high). A range read
        asks each shard's master directly, without failover: a node that fails it (killed,
        or no longer master) is ridden out by reloading the table map and reading again,
        for up to READY_TIMEOUT_S."""
        give_up = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                return self.orders.range(TABLE, low, high)
            except (ShardstoreUnavailable, ShardstoreError, OSError):
                if time.monotonic() > give_up:
                    raise
                time.sleep(READY_POLL_S)
                with contextlib.suppress(ShardstoreError, OSError):  # tried again next round
                    self.orders.refresh_slots()
                    self.orders.load_tables()

    def find(self, order_id: int) -> Order | None:
        """The order with this id, or None: its pointer row names the user, then the
        record and final rows are read (three GETs; no range read, which on a SNOWFLAKE
        table walks the shard's whole table)."""
        user = self.orders.get(pointer_key(order_id))
        return None if user is None else self.read(order_id, user.decode())

    def final(self, order_id: int, user: str) -> str:
        """The order's status as its final row says (pending when it has none)."""
        held = self.orders.get(record_key(order_id, user) + FINAL_SUFFIX)
        return PENDING if held is None else held.decode()

    def read(self, order_id: int, user: str) -> Order | None:
        """The order when its user is known: two GETs, no range read."""
        return self._load(record_key(order_id, user).encode(), settled=True)

    def _load(self, key: bytes, settled: bool) -> Order | None:
        raw = self.orders.get(key)
        if raw is None:
            return None
        order_id, user, _ = _split_key(key)
        status = PENDING
        if settled:
            final = self.orders.get(key + FINAL_SUFFIX.encode())
            status = final.decode() if final is not None else PENDING
        body = json.loads(raw)
        return Order(order_id, user, body["items"], body["total_cents"],
                     parse_id(order_id).time_ms, status)

    def user_month(self, user: str, month: str) -> list[Order]:
        """A user's orders of one month, oldest first (a range read of that month only)."""
        low, high = month_bounds(*parse_month(month))
        rows = classify(self.keys_between(low, high))
        orders = [self._load(record_key(i, u).encode(), i in rows.settled)
                  for i, u in rows.records.items() if u == user]
        return [o for o in orders if o is not None]


@dataclass
class Rows:
    """Row keys of a range read, sorted out: records by id (-> user) and settled ids."""

    records: dict[int, str]
    settled: set[int]


def classify(keys: list[bytes]) -> Rows:
    """Sort a range read's keys into records and settled ids."""
    rows = Rows({}, set())
    for key in keys:
        order_id, user, final = _split_key(key)
        if final:
            rows.settled.add(order_id)
        else:
            rows.records[order_id] = user
    return rows
