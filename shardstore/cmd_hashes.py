"""Hash commands (HSET HGET HMGET HDEL HGETALL HINCRBY HLEN) as sans-I/O handlers
`cmd_x(view, args) -> reply`.

A hash is stored whole (shardstore.values: a msgpack field map in insertion order); every
change rewrites it with its expiry kept, and a hash left with no field is deleted, as
Redis deletes an emptied hash.
"""

from __future__ import annotations

from core.resp import CommandError
from shardstore.kvview import View
from shardstore.values import (
    ERR_ARITY,
    ERR_HASH_NOT_INTEGER,
    checked_add,
    encode_hash,
    hash_of,
    int_arg,
    parse_int,
)


def _fields(view: View, key: bytes) -> tuple[dict[bytes, bytes], int]:
    """The hash at `key` ({} when missing) and its expiry; WRONGTYPE for a string."""
    entry = view.lookup(key)
    if entry is None:
        return {}, 0
    return hash_of(entry), entry.expire_at_ms


def _store(view: View, key: bytes, fields: dict[bytes, bytes], expire_at_ms: int) -> None:
    if fields:
        view.put(key, encode_hash(fields), expire_at_ms)
    else:
        view.delete(key)


def cmd_hset(view: View, args: list[bytes]) -> object:
    """HSET key field value [field value ...]: how many fields are new."""
    if len(args) % 2 == 1:
        raise CommandError(ERR_ARITY.format("hset"))
    fields, expire_at = _fields(view, args[1])
    added = 0
    for i in range(2, len(args), 2):
        added += args[i] not in fields
        fields[args[i]] = args[i + 1]
    _store(view, args[1], fields, expire_at)
    return added


def cmd_hget(view: View, args: list[bytes]) -> object:
    """HGET key field: the value or nil."""
    return _fields(view, args[1])[0].get(args[2])


def cmd_hmget(view: View, args: list[bytes]) -> object:
    """HMGET key field...: a value or nil per field."""
    fields = _fields(view, args[1])[0]
    return [fields.get(name) for name in args[2:]]


def cmd_hdel(view: View, args: list[bytes]) -> object:
    """HDEL key field...: how many fields were removed; an emptied hash is deleted."""
    fields, expire_at = _fields(view, args[1])
    removed = 0
    for name in args[2:]:
        if fields.pop(name, None) is not None:
            removed += 1
    if removed:
        _store(view, args[1], fields, expire_at)
    return removed


def cmd_hgetall(view: View, args: list[bytes]) -> object:
    """HGETALL key: the field map (a RESP3 map, a flat array in RESP2)."""
    return _fields(view, args[1])[0]


def cmd_hincrby(view: View, args: list[bytes]) -> object:
    """HINCRBY key field increment: the new value (the increment checked first)."""
    delta = int_arg(args[3])
    fields, expire_at = _fields(view, args[1])
    current = 0
    if args[2] in fields:
        parsed = parse_int(fields[args[2]])
        if parsed is None:
            raise CommandError(ERR_HASH_NOT_INTEGER)
        current = parsed
    total = checked_add(current, delta)
    fields[args[2]] = b"%d" % total
    _store(view, args[1], fields, expire_at)
    return total


def cmd_hlen(view: View, args: list[bytes]) -> object:
    """HLEN key: the number of fields (0 when missing)."""
    return len(_fields(view, args[1])[0])
