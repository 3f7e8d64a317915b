"""What the router sends where, and how the replies make one; sans I/O.

Strategy: `RouteMap` is the router's picture of the cluster: each slot's master (from
`CLUSTER SLOTS`) and the tables (from `TABLE.LIST` and `TABLE.INFO`), with the master of
every shard a range table's map names. A key's *target* is ("shard", id) when it is a row
of a range table (the range map decides) or of a HASH table bound to another keyspace
than the seeds' (its TABLE.INFO's `slots`, that keyspace's slot map, decides:
shardstore/table_bindings.py), and ("slot", n) otherwise (CRC16, hash tags).

`plan` cuts one client command into parts, each for one target:

- MGET, MSET, DEL, EXISTS, UNLINK: the keys are grouped by target, first seen first, one
  part per group with the command's own name (MSET keeps each key with its value), and
  `assemble` puts the replies together: MGET's values back in the order of the request,
  the counts of DEL/EXISTS/UNLINK summed, MSET's OK once every part said it (so an MSET
  over several slots is not atomic, as with Codis or twemproxy);
- any other command with keys: one part to the target of its keys; keys of several targets
  are refused as Redis Cluster refuses them (`-CROSSSLOT`), or for rows of range tables on
  several shards with the catalog's error.

Redirections: `moved(slot, address)` repoints one slot, as a `-MOVED` says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from core.command_table import ERR_CROSSSLOT, Command, KeysError, get_keys
from core.resp import OK, CommandError
from native.crc16 import SLOT_COUNT, key_slot
from shardstore.catalog import Catalog, CatalogError, Table
from shardstore.table_keys import parse_point

__all__ = ["SLOT", "SHARD", "Part", "RouteMap", "assemble", "plan"]

SLOT = "slot"
SHARD = "shard"
SPLIT_VALUES = "MGET"
SPLIT_OK = "MSET"
SPLIT_SUM = frozenset({"DEL", "EXISTS", "UNLINK"})
ERR_ARITY = "ERR wrong number of arguments for '{}' command"
ERR_BAD_SLOTS = "ERR router: CLUSTER SLOTS reply not understood: {!r}"
ERR_BAD_TABLE = "ERR router: TABLE.INFO reply not understood: {!r}"
OPEN_ENDS = ("-", "+")

Target = tuple[str, int]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class Part:
    """One command for one target; `positions`: where its keys stood in the request."""

    target: Target
    args: list[bytes]
    positions: list[int] = field(default_factory=list)


@dataclass
class RouteMap:
    """The router's picture of the cluster (see the module header)."""

    slots: dict[int, str] = field(default_factory=dict)  # slot -> master "host:port"
    shards: dict[int, list[str]] = field(default_factory=dict)  # shard -> addresses
    catalog: Catalog = field(default_factory=Catalog)
    masters: list[str] = field(default_factory=list)  # every slot master, first seen first
    hashed: dict[str, list[int]] = field(default_factory=dict)  # HASH table -> slot -> shard

    def load_slots(self, reply: object) -> None:
        """Take a `CLUSTER SLOTS` reply: each slot to its master."""
        if not isinstance(reply, list):
            raise ValueError(ERR_BAD_SLOTS.format(reply))
        slots: dict[int, str] = {}
        masters: list[str] = []
        for entry in reply:
            try:
                first, last, master = int(entry[0]), int(entry[1]), entry[2]
                address = f"{_text(master[0])}:{int(master[1])}"
            except (TypeError, ValueError, IndexError):
                raise ValueError(ERR_BAD_SLOTS.format(entry)) from None
            if address not in masters:
                masters.append(address)
            slots.update(dict.fromkeys(range(first, last + 1), address))
        self.slots, self.masters = slots, masters

    def load_tables(self, infos: Sequence[object]) -> None:
        """Take the `TABLE.INFO` replies of every table (the catalog and shard masters)."""
        catalog = Catalog()
        shards: dict[int, list[str]] = {}
        hashed: dict[str, list[int]] = {}
        for info in infos:
            table, addresses = _table_of(info)
            catalog.tables[table.name] = table
            shards.update(addresses)
            slot_map = _slots_of(info, shards)
            if slot_map is not None and not table.ranged:
                hashed[table.name] = slot_map
        catalog.version += 1
        self.catalog, self.shards, self.hashed = catalog, shards, hashed

    def target(self, key: bytes) -> Target:
        """Where `key` goes; CatalogError for a range table's key without a position."""
        table = self.catalog.table_of(key)
        if table is not None and table.ranged:
            return SHARD, table.shard_at(table.position(key))
        if table is not None and table.name in self.hashed:
            return SHARD, self.hashed[table.name][key_slot(key)]
        return SLOT, key_slot(key)

    def address(self, target: Target) -> str | None:
        """The master of a target, None when the map does not know it."""
        kind, number = target
        if kind == SLOT:
            return self.slots.get(number)
        addresses = self.shards.get(number)
        return addresses[0] if addresses else None

    def moved(self, slot: int, address: str) -> None:
        self.slots[slot] = address


def _pairs(reply: object) -> dict[bytes, Any]:
    if isinstance(reply, dict):
        return {k.encode() if isinstance(k, str) else k: v for k, v in reply.items()}
    try:
        if isinstance(reply, list) and len(reply) % 2 == 0:
            return dict(zip(reply[::2], reply[1::2], strict=True))
    except TypeError:  # an aggregate where a name should be
        pass
    raise ValueError(ERR_BAD_TABLE.format(reply))


def _table_of(reply: object) -> tuple[Table, dict[int, list[str]]]:
    info = _pairs(reply)
    try:
        table = Table(_text(info[b"name"]), _text(info[b"keyspace"]), _text(info[b"rule"]),
                      _text(info[b"kind"]))
        if info[b"epoch"]:
            table.epoch_ms = int(info[b"epoch"])
        addresses: dict[int, list[str]] = {}
        for low, _, sid, members, _ in info[b"ranges"]:
            if _text(low) not in OPEN_ENDS:
                table.splits.append(parse_point(table.kind, _text(low).encode()))
            table.shards.append(int(sid))
            addresses[int(sid)] = [_text(m) for m in members]
    except (KeyError, TypeError, ValueError):
        raise ValueError(ERR_BAD_TABLE.format(reply)) from None
    if table.ranged and (len(table.shards) != len(table.splits) + 1 or any(
            b <= a for a, b in zip(table.splits, table.splits[1:], strict=False))):
        raise ValueError(ERR_BAD_TABLE.format(reply))
    return table, addresses


def _slots_of(reply: object, shards: dict[int, list[str]]) -> list[int] | None:
    """A HASH table's `slots` (its keyspace's map, slot -> shard id), adding each shard's
    addresses to `shards`; None when the reply has none."""
    runs = _pairs(reply).get(b"slots")
    if not runs:
        return None
    table = [0] * SLOT_COUNT
    try:
        for first, last, sid, members in runs:
            table[int(first):int(last) + 1] = [int(sid)] * (int(last) - int(first) + 1)
            shards[int(sid)] = [_text(m) for m in members]
    except (TypeError, ValueError):
        raise ValueError(ERR_BAD_TABLE.format(reply)) from None
    if len(table) != SLOT_COUNT:
        raise ValueError(ERR_BAD_TABLE.format(reply))
    return table


def plan(row: Command, args: list[bytes], routes: RouteMap) -> list[Part]:
    """The parts of one command with keys (see the module header); CommandError for
    arity, CROSSSLOT, and range tables' refusals. [] for a command without keys."""
    name = row.name.upper()
    try:
        keys = get_keys(row, args)
        targets = [routes.target(key) for key in keys]
    except KeysError:
        raise CommandError(ERR_ARITY.format(row.name.lower())) from None
    except CatalogError as exc:
        raise CommandError(str(exc)) from None
    if not keys:
        return []
    if name == SPLIT_VALUES or name in SPLIT_SUM:
        return _group(args[0], [[k] for k in keys], targets)
    if name == SPLIT_OK:
        pairs = [[args[i], args[i + 1]] for i in range(1, len(args) - 1, 2)]
        return _group(args[0], pairs, targets)
    if len(set(targets)) > 1:
        if any(kind == SHARD for kind, _ in targets):
            try:
                routes.catalog.range_shard(keys)
            except CatalogError as exc:
                raise CommandError(str(exc)) from None
        raise CommandError(ERR_CROSSSLOT)
    return [Part(targets[0], list(args), list(range(len(keys))))]


def _group(name: bytes, items: list[list[bytes]], targets: list[Target]) -> list[Part]:
    parts: dict[Target, Part] = {}
    for position, (item, target) in enumerate(zip(items, targets, strict=True)):
        part = parts.setdefault(target, Part(target, [name]))
        part.args.extend(item)
        part.positions.append(position)
    return list(parts.values())


def assemble(row: Command, parts: list[Part], replies: list[Any]) -> Any:
    """One reply from the parts' replies (in the order of `parts`)."""
    name = row.name.upper()
    if len(parts) == 1 and name != SPLIT_VALUES:
        return replies[0]
    if name == SPLIT_VALUES:
        values: list[Any] = [None] * sum(len(p.positions) for p in parts)
        for part, reply in zip(parts, replies, strict=True):
            for position, value in zip(part.positions, reply, strict=True):
                values[position] = value
        return values
    if name in SPLIT_SUM:
        return sum(int(r) for r in replies)
    return OK
