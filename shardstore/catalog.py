"""Tables: key prefixes bound to a keyspace and a sharding rule, kept in the configuration
group; sans I/O.

Strategy: a table `orders` owns the keys `orders:<rest>`. Its rule is HASH (its keys are
slot-addressed like every other key: the catalog only records it) or RANGE on an ordered
part of the key (shardstore/table_keys.py: a date, or the time inside a Snowflake id).
A range table's map is its ordered split points s1 < s2 < ... < sn, cutting the positions
into n + 1 ranges (-inf, s1), [s1, s2), ..., [sn, +inf), each held by one shard (a Raft
group of the configuration); routing a key is one bisect of its position.

The catalog changes only by configuration entries (msgpack maps whose "op" starts with
"table."), which `ConfigMachine` (shardstore/cluster.py) hands to `Catalog.apply` with the
configuration they apply against:

- OP_CREATE {name, keyspace, rule, kind, epoch, splits, shards}: a new table;
- OP_SPLIT {name, at, shard}: the range holding position `at` is cut there; [at, its end)
  goes to `shard`. The proposer (shardstore/cmd_tables.py) checked that no key lies there
  when the shard changes (moving keys waits for resharding's generic move);
- OP_MOVE, OP_MOVE_REVERSE, OP_MOVE_CANCEL, OP_MOVE_FINISH: a table's move to another
  keyspace (shardstore/table_move.py says its life), whose record (`TableMove`) is kept
  on the table; shardstore/table_move_record.py applies them, and its `settle` switches
  the table's binding when the ranges (a HASH table's slot runs) have arrived.

Apply results are True, or an error reply's text. The syntax of TABLE.CREATE and
TABLE.SPLIT is parsed here too (`parse_create`, `parse_split`), into those entries.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from shardstore import table_keys
from shardstore import table_move_record as record
from shardstore.table_keys import (
    KIND_DATE,
    KINDS,
    MAX_POSITION,
    MIN_POSITION,
    SNOWFLAKE_EPOCH_MS,
    KeyFormatError,
)
from shardstore.table_move_record import (
    ERR_MOVE_HASH,
    ERR_NO_KEYSPACE,
    MOVE_CANCELLING,
    MOVE_COPYING,
    MOVE_REVERSING,
    MOVE_SWITCHED,
    OP_MOVE,
    OP_MOVE_CANCEL,
    OP_MOVE_FINISH,
    OP_MOVE_REVERSE,
    TableMove,
)

__all__ = [
    "DEFAULT_KEYSPACE", "ERR_MOVE_HASH", "ERR_NO_KEYSPACE", "MAX_RANGE_KEYS", "MOVE_CANCELLING",
    "MOVE_COPYING", "MOVE_REVERSING",
    "MOVE_SWITCHED", "NOT_HERE", "OP_CREATE", "OP_MOVE", "OP_MOVE_CANCEL", "OP_MOVE_FINISH",
    "OP_MOVE_REVERSE", "OP_PREFIX",
    "OP_SPLIT", "RULE_HASH", "RULE_RANGE",
    "Catalog", "CatalogError", "Table", "TableMove", "encode_create", "encode_split",
    "parse_create", "parse_range", "parse_split",
]

OP_PREFIX = "table."
OP_CREATE = "table.create"
OP_SPLIT = "table.split"
RULE_HASH = "HASH"
RULE_RANGE = "RANGE"
DEFAULT_KEYSPACE = "default"
SEPARATOR = b":"
MAX_TABLES = 1024
MAX_RANGES = 4096  # ranges of one table
MAX_NAME_CHARS = 64
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
ERR_SYNTAX = "ERR syntax error"
ERR_NAME = "ERR bad table name {!r} (1..64 of A-Z a-z 0-9 _ . -)"
ERR_EXISTS = "ERR table {!r} exists"
ERR_NO_TABLE = "ERR no such table {!r}"
ERR_TOO_MANY_TABLES = "ERR too many tables (at most 1024)"
ERR_TOO_MANY_RANGES = "ERR too many ranges (at most 4096 per table)"
ERR_NO_MAP = "ERR the cluster has no slot map yet"
ERR_NO_SHARD = "ERR no such shard {} (the shards are: {})"
ERR_SPLITS_ORDER = "ERR split points must be strictly increasing"
ERR_SHARDS_COUNT = "ERR SHARDS needs one shard per range: {} (the split points plus one)"
ERR_NOT_RANGE = "ERR table {!r} is not a RANGE table"
ERR_SPLIT_EXISTS = "ERR table {!r} is already split at {}"
ERR_KEY = "ERR key {!r} of range table {!r}: {}"
ERR_POINT = "ERR {}"
ERR_MIXED = "ERR keys of range tables and other keys in one command"
ERR_SPAN = "ERR the keys of range table rows lie on different shards ({})"
ERR_COUNT = "ERR COUNT must be 1..100000"
ERR_SPLIT_MOVING = "ERR table {!r} is moving to keyspace {!r}: split it after TABLE.MOVE.FINISH"
MAX_RANGE_KEYS = 100_000  # keys one TABLE.RANGE answers at most (its COUNT's ceiling)
# The words by which a node refusing a range row it does not hold names the way to it; the
# router and shardstore.client recognise the refusal by them.
NOT_HERE = "use the router or shardstore.client"


class CatalogError(ValueError):
    """A request the catalog refuses; the message is the error reply's text."""


@dataclass
class Table:
    """One table. RANGE only: `kind` (DATE or SNOWFLAKE), `epoch_ms` (SNOWFLAKE), `splits`
    strictly increasing positions and `shards` the shard id of each of the
    len(splits) + 1 ranges, in order."""

    name: str
    keyspace: str = DEFAULT_KEYSPACE
    rule: str = RULE_HASH
    kind: str = ""
    epoch_ms: int = SNOWFLAKE_EPOCH_MS
    splits: list[int] = field(default_factory=list)
    shards: list[int] = field(default_factory=list)
    moving: TableMove | None = None  # a move to another keyspace under way

    @property
    def prefix(self) -> bytes:
        return self.name.encode() + SEPARATOR

    @property
    def ranged(self) -> bool:
        return self.rule == RULE_RANGE

    def position(self, key: bytes) -> int:
        """The position of one of this table's keys; CatalogError if it has none."""
        try:
            return table_keys.key_position(self.kind, key[len(self.prefix):], self.epoch_ms)
        except KeyFormatError as exc:
            shown = key.decode("utf-8", "replace")
            raise CatalogError(ERR_KEY.format(shown, self.name, exc)) from None

    def shard_at(self, position: int) -> int:
        """The shard of the range holding `position`."""
        return self.shards[bisect.bisect_right(self.splits, position)]

    def ranges(self) -> list[tuple[int, int, int]]:
        """Every range as (low, high, shard), the open ends MIN_POSITION / MAX_POSITION."""
        edges = [MIN_POSITION, *self.splits, MAX_POSITION]
        return [(edges[i], edges[i + 1], sid) for i, sid in enumerate(self.shards)]

    def pieces(self, low: int, high: int) -> list[tuple[int, int, int]]:
        """The ranges [low, high) meets, clipped to it, in order: (low, high, shard)."""
        return [(max(low, a), min(high, b), sid) for a, b, sid in self.ranges()
                if max(low, a) < min(high, b)]

    def rule_text(self) -> str:
        return f"{RULE_RANGE} {self.kind}" if self.ranged else RULE_HASH

    def to_wire(self) -> list[Any]:
        return [self.name, self.keyspace, self.rule, self.kind, self.epoch_ms,
                list(self.splits), list(self.shards),
                self.moving.to_wire() if self.moving else None]

    @classmethod
    def from_wire(cls, wire: Sequence[Any]) -> Table:
        name, keyspace, rule, kind, epoch, splits, shards, *rest = wire
        moving = TableMove.from_wire(rest[0]) if rest and rest[0] else None
        return cls(str(name), str(keyspace), str(rule), str(kind), int(epoch),
                   [int(s) for s in splits], [int(s) for s in shards], moving)


class Catalog:
    """The tables by name (see the module header)."""

    def __init__(self) -> None:
        self.tables: dict[str, Table] = {}
        self.version = 0  # bumped by every change, so readers can cache
        self._has_ranges = False
        self._ranges_at = -1  # the version _has_ranges was computed at

    def table_of(self, key: bytes) -> Table | None:
        """The table a key belongs to by its prefix, or None."""
        name, sep, _ = key.partition(SEPARATOR)
        if not sep:
            return None
        return self.tables.get(name.decode("utf-8", "replace"))

    def is_range_row(self, key: bytes) -> bool:
        """True for a key of a RANGE table: not slot-addressed, so a move of slots must
        leave it where it is."""
        table = self.table_of(key)
        return table is not None and table.ranged

    @property
    def has_ranges(self) -> bool:
        """True when some table is a RANGE table (asked on every keyed command: cached
        per version)."""
        if self._ranges_at != self.version:
            self._has_ranges = any(t.ranged for t in self.tables.values())
            self._ranges_at = self.version
        return self._has_ranges

    def range_shard(self, keys: Iterable[bytes]) -> int | None:
        """The one shard the keys of a command go to when they are rows of range tables;
        None when none is (the slot map decides). CatalogError when some are and some are
        not, when they lie on several shards, or when a key has no position."""
        shards: set[int] = set()
        others = 0
        for key in keys:
            table = self.table_of(key)
            if table is None or not table.ranged:
                others += 1
                continue
            shards.add(table.shard_at(table.position(key)))
        if not shards:
            return None
        if others:
            raise CatalogError(ERR_MIXED)
        if len(shards) > 1:
            raise CatalogError(ERR_SPAN.format(", ".join(str(s) for s in sorted(shards))))
        return shards.pop()

    # -- entries -------------------------------------------------------------------------------

    def apply(self, entry: dict[str, Any], shard_ids: Iterable[int],
              keyspaces: Iterable[str]) -> Any:
        """Apply one "table.*" entry against the configuration's shards (ids, or a map
        id -> Shard: a range table's default ranges then go round-robin over its own
        keyspace's shards) and keyspaces; True, or an error reply's text (the catalog is
        then unchanged)."""
        try:
            if entry["op"] == OP_CREATE:
                self._create(entry, shard_ids, set(keyspaces))
            elif entry["op"] == OP_SPLIT:
                self._split(entry, set(shard_ids))
            elif entry["op"] == OP_MOVE:
                record.begin(self._table(entry["name"]), entry, set(shard_ids),
                             set(keyspaces))
            elif entry["op"] in (OP_MOVE_REVERSE, OP_MOVE_FINISH, OP_MOVE_CANCEL):
                record.step(self._table(entry["name"]), entry["op"])
            else:
                return ERR_SYNTAX
        except (CatalogError, record.MoveRefused) as exc:
            return str(exc)
        self.version += 1
        return True

    def _create(self, entry: dict[str, Any], shard_ids: Iterable[int],
                keyspaces: set[str]) -> None:
        table = Table(str(entry["name"]), str(entry["keyspace"]), str(entry["rule"]),
                      str(entry.get("kind", "")), int(entry.get("epoch", SNOWFLAKE_EPOCH_MS)),
                      [int(s) for s in entry.get("splits", [])],
                      [int(s) for s in entry.get("shards", [])])
        _check_name(table.name)
        if table.name in self.tables:
            raise CatalogError(ERR_EXISTS.format(table.name))
        if len(self.tables) >= MAX_TABLES:
            raise CatalogError(ERR_TOO_MANY_TABLES)
        if table.keyspace not in keyspaces:
            raise CatalogError(ERR_NO_KEYSPACE.format(table.keyspace,
                                                      ", ".join(sorted(keyspaces))))
        if table.ranged:
            _check_range(table, sorted(shard_ids), _own_shards(shard_ids, table.keyspace))
        self.tables[table.name] = table

    def _split(self, entry: dict[str, Any], shard_ids: set[int]) -> None:
        table = self.range_table(str(entry["name"]))
        if table.moving is not None:
            raise CatalogError(ERR_SPLIT_MOVING.format(table.name, table.moving.target))
        at, shard = int(entry["at"]), int(entry["shard"])
        if shard not in shard_ids:
            raise CatalogError(ERR_NO_SHARD.format(shard, _listed(shard_ids)))
        if at in table.splits:
            raise CatalogError(ERR_SPLIT_EXISTS.format(table.name,
                                                       table_keys.point_text(table.kind, at)))
        if len(table.shards) >= MAX_RANGES:
            raise CatalogError(ERR_TOO_MANY_RANGES)
        index = bisect.bisect_right(table.splits, at)
        table.splits.insert(index, at)
        table.shards.insert(index + 1, shard)

    def _table(self, name: object) -> Table:
        table = self.tables.get(str(name))
        if table is None:
            raise CatalogError(ERR_NO_TABLE.format(name))
        return table

    def settle(self, table: Table) -> None:
        """After a range of `table` changed shard: table_move_record.settle (a move's
        switch of keyspace, or its end after a reverse or a cancel)."""
        record.settle(table)
        self.version += 1

    def range_table(self, name: str) -> Table:
        """The RANGE table `name`; CatalogError if there is none."""
        table = self.tables.get(name)
        if table is None:
            raise CatalogError(ERR_NO_TABLE.format(name))
        if not table.ranged:
            raise CatalogError(ERR_NOT_RANGE.format(name))
        return table

    def to_wire(self) -> list[Any]:
        return [t.to_wire() for _, t in sorted(self.tables.items())]

    @classmethod
    def from_wire(cls, wire: Sequence[Any]) -> Catalog:
        catalog = cls()
        catalog.tables = {str(t[0]): Table.from_wire(t) for t in wire}
        catalog.version += 1
        return catalog


def _listed(ids: Iterable[int]) -> str:
    return ", ".join(str(i) for i in sorted(ids)) or "none"


def _own_shards(shard_ids: Iterable[int], keyspace: str) -> list[int]:
    """The shards a new range table's ranges may take: with a map of shards (id ->
    shardstore.cluster.Shard) those of its keyspace, else every one."""
    if isinstance(shard_ids, Mapping):
        return sorted(sid for sid, shard in shard_ids.items()
                      if getattr(shard, "keyspace", keyspace) == keyspace)
    return sorted(shard_ids)


def _check_name(name: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise CatalogError(ERR_NAME.format(name))


def _check_range(table: Table, shard_ids: list[int], own: list[int]) -> None:
    if table.kind not in KINDS:
        raise CatalogError(ERR_SYNTAX)
    if not own:
        raise CatalogError(ERR_NO_MAP)
    if any(b <= a for a, b in zip(table.splits, table.splits[1:], strict=False)):
        raise CatalogError(ERR_SPLITS_ORDER)
    if len(table.splits) + 1 > MAX_RANGES:
        raise CatalogError(ERR_TOO_MANY_RANGES)
    if not table.shards:  # round-robin over its keyspace's shards, in shard id order
        table.shards = [own[i % len(own)] for i in range(len(table.splits) + 1)]
    if len(table.shards) != len(table.splits) + 1:
        raise CatalogError(ERR_SHARDS_COUNT.format(len(table.splits) + 1))
    for sid in table.shards:
        if sid not in shard_ids:
            raise CatalogError(ERR_NO_SHARD.format(sid, _listed(shard_ids)))


# -- the syntax of TABLE.CREATE and TABLE.SPLIT ---------------------------------------------

def _word(args: Sequence[bytes], i: int) -> str:
    if i >= len(args):
        raise CatalogError(ERR_SYNTAX)
    return args[i].decode("utf-8", "replace")


def _int(text: str) -> int:
    if not re.fullmatch(r"-?[0-9]{1,18}", text):
        raise CatalogError(ERR_SYNTAX)
    return int(text)


def _point(kind: str, word: bytes) -> int:
    try:
        return table_keys.parse_point(kind, word)
    except KeyFormatError as exc:
        raise CatalogError(ERR_POINT.format(exc)) from None


def parse_create(args: Sequence[bytes]) -> dict[str, Any]:
    """The entry of `TABLE.CREATE name [KEYSPACE ks] HASH` or `TABLE.CREATE name
    [KEYSPACE ks] RANGE DATE|SNOWFLAKE [EPOCH ms] [SPLITS point ...] [SHARDS id ...]`
    (args: every word, the command's first). CatalogError on bad syntax."""
    name = _word(args, 1)
    _check_name(name)
    entry: dict[str, Any] = {"op": OP_CREATE, "name": name, "keyspace": DEFAULT_KEYSPACE}
    i = 2
    if _word(args, i).upper() == "KEYSPACE":
        entry["keyspace"] = _word(args, i + 1)
        i += 2
    rule = _word(args, i).upper()
    if rule == RULE_HASH and len(args) == i + 1:
        entry["rule"] = RULE_HASH
        return entry
    if rule != RULE_RANGE:
        raise CatalogError(ERR_SYNTAX)
    kind = _word(args, i + 1).upper()
    if kind not in KINDS:
        raise CatalogError(ERR_SYNTAX)
    entry.update(rule=RULE_RANGE, kind=kind, epoch=SNOWFLAKE_EPOCH_MS, splits=[], shards=[])
    _range_options(entry, kind, args[i + 2:])
    return entry


def _range_options(entry: dict[str, Any], kind: str, words: Sequence[bytes]) -> None:
    """EPOCH ms (SNOWFLAKE only), SPLITS point ..., SHARDS id ..., each at most once."""
    current, i = "", 0
    seen: set[str] = set()
    while i < len(words):
        word = words[i].decode("utf-8", "replace").upper()
        i += 1
        if word in ("SPLITS", "SHARDS") and word not in seen:
            current = word
        elif word == "EPOCH" and word not in seen and kind != KIND_DATE:
            entry["epoch"] = _int(_word(words, i))
            current, i = "", i + 1
        elif current == "SPLITS":
            entry["splits"].append(_point(kind, words[i - 1]))
            continue
        elif current == "SHARDS":
            entry["shards"].append(_int(word))
            continue
        else:
            raise CatalogError(ERR_SYNTAX)
        seen.add(word)


def parse_split(args: Sequence[bytes], catalog: Catalog) -> dict[str, Any]:
    """The entry of `TABLE.SPLIT name point [SHARD id]` against `catalog` (without SHARD:
    the range's own shard, a pure map change). CatalogError on bad syntax or table."""
    table = catalog.range_table(_word(args, 1))
    at = _point(table.kind, args[2] if len(args) > 2 else b"")
    shard = table.shard_at(at)
    if len(args) == 5 and _word(args, 3).upper() == "SHARD":
        shard = _int(_word(args, 4))
    elif len(args) != 3:
        raise CatalogError(ERR_SYNTAX)
    return {"op": OP_SPLIT, "name": table.name, "at": at, "shard": shard}


def parse_range(args: Sequence[bytes], catalog: Catalog) -> tuple[Table, int, int, int]:
    """(table, low, high, count) of `TABLE.RANGE name from to [COUNT n]` (points, or `-`
    and `+` for the open ends; COUNT 1..MAX_RANGE_KEYS, MAX_RANGE_KEYS without it).
    CatalogError on bad syntax, table or bound."""
    if len(args) not in (4, 6) or (len(args) == 6 and args[4].upper() != b"COUNT"):
        raise CatalogError(ERR_SYNTAX)
    table = catalog.range_table(_word(args, 1))
    try:
        low = table_keys.parse_bound(table.kind, args[2], low=True)
        high = table_keys.parse_bound(table.kind, args[3], low=False)
    except KeyFormatError as exc:
        raise CatalogError(ERR_POINT.format(exc)) from None
    count = MAX_RANGE_KEYS
    if len(args) == 6:
        text = _word(args, 5)
        if not text.isdigit() or not 1 <= int(text[:7]) <= MAX_RANGE_KEYS:
            raise CatalogError(ERR_COUNT)
        count = int(text)
    return table, low, high, count


def encode_create(entry: dict[str, Any]) -> bytes:
    return msgpack.packb(entry)


def encode_split(entry: dict[str, Any]) -> bytes:
    return msgpack.packb(entry)
