"""Keyspace commands (DEL UNLINK EXISTS EXPIRE PEXPIRE TTL PTTL PERSIST TYPE DBSIZE
FLUSHALL SCAN) as sans-I/O handlers `cmd_x(view, args) -> reply`.

Expiry is an absolute millisecond time stored with each record (0 = none); EXPIRE and
PEXPIRE compute it from the View's `now_ms`, so a replica applying the same entry computes
the same time. A time at or before now deletes the key, as Redis does.

SCAN walks keys in key order (shardstore.scan_cursor encodes the position as the integer
cursor clients expect).
"""

from __future__ import annotations

from core.resp import OK, CommandError, Simple
from shardstore.glob import glob_match
from shardstore.kvview import View, walk_keys
from shardstore.scan_cursor import ScanCursors, decode_cursor, encode_cursor
from shardstore.values import (
    ERR_EXPIRE_GT_LT,
    ERR_EXPIRE_NX,
    ERR_EXPIRE_TIME,
    ERR_SYNTAX,
    ERR_UNSUPPORTED_OPTION,
    INT64_MAX,
    INT64_MIN,
    TYPE_NONE,
    int_arg,
)

MS_PER_S = 1000
# TTL rounds the remaining milliseconds to the nearest second, as Redis does.
HALF_SECOND_MS = 500
TTL_MISSING = -2
TTL_NONE = -1
SCAN_DEFAULT_COUNT = 10
FLUSH_CHUNK_KEYS = 1024
FLUSH_MODES = (b"SYNC", b"ASYNC")
EXPIRE_FLAGS = (b"NX", b"XX", b"GT", b"LT")


def cmd_del(view: View, args: list[bytes]) -> object:
    """DEL key...: how many of the keys existed (a repeated key counts once)."""
    removed = 0
    for key in args[1:]:
        if view.lookup(key) is not None:
            view.delete(key)
            removed += 1
    return removed


cmd_unlink = cmd_del


def cmd_exists(view: View, args: list[bytes]) -> object:
    """EXISTS key...: how many of the keys exist (a repeated key counts each time)."""
    return sum(1 for key in args[1:] if view.lookup(key) is not None)


def parse_expire_flags(words: list[bytes]) -> set[bytes]:
    """EXPIRE's NX/XX/GT/LT words, with Redis's errors for unknown and clashing ones."""
    flags: set[bytes] = set()
    for word in words:
        upper = word.upper()
        if upper not in EXPIRE_FLAGS:
            raise CommandError(ERR_UNSUPPORTED_OPTION.format(word.decode("utf-8", "replace")))
        flags.add(upper)
    if b"NX" in flags and flags & {b"XX", b"GT", b"LT"}:
        raise CommandError(ERR_EXPIRE_NX)
    if {b"GT", b"LT"} <= flags:
        raise CommandError(ERR_EXPIRE_GT_LT)
    return flags


def _expire_allowed(flags: set[bytes], current: int, when: int) -> bool:
    # current == 0 means no expiry, which GT and LT treat as infinite.
    if b"NX" in flags and current:
        return False
    if b"XX" in flags and not current:
        return False
    if b"GT" in flags and (not current or when <= current):
        return False
    return not (b"LT" in flags and current and when >= current)


def expire_generic(view: View, args: list[bytes], unit_ms: int) -> int:
    """EXPIRE/PEXPIRE key amount [NX|XX|GT|LT]: 1 when the expiry was set (or the key
    deleted by a time already past), 0 when the key is missing or a flag refused."""
    name = args[0].decode("ascii", "replace").lower()
    flags = parse_expire_flags(args[3:])
    when = int_arg(args[2])
    if unit_ms != 1:
        if when > INT64_MAX // unit_ms or when < INT64_MIN // unit_ms:
            raise CommandError(ERR_EXPIRE_TIME.format(name))
        when *= unit_ms
    if when > INT64_MAX - view.now_ms:
        raise CommandError(ERR_EXPIRE_TIME.format(name))
    when += view.now_ms
    entry = view.lookup(args[1])
    if entry is None or not _expire_allowed(flags, entry.expire_at_ms, when):
        return 0
    if when <= view.now_ms:
        view.delete(args[1])
    else:
        view.put(args[1], entry.tag + entry.payload, when)
    return 1


def cmd_expire(view: View, args: list[bytes]) -> object:
    """EXPIRE key seconds [NX|XX|GT|LT]."""
    return expire_generic(view, args, MS_PER_S)


def cmd_pexpire(view: View, args: list[bytes]) -> object:
    """PEXPIRE key milliseconds [NX|XX|GT|LT]."""
    return expire_generic(view, args, 1)


def remaining_ms(view: View, key: bytes) -> int:
    """Milliseconds left before `key` expires; TTL_MISSING or TTL_NONE as Redis's codes."""
    entry = view.lookup(key)
    if entry is None:
        return TTL_MISSING
    if not entry.expire_at_ms:
        return TTL_NONE
    return max(entry.expire_at_ms - view.now_ms, 0)


def cmd_ttl(view: View, args: list[bytes]) -> object:
    """TTL key: seconds left (rounded), -1 without expiry, -2 when missing."""
    left = remaining_ms(view, args[1])
    return left if left < 0 else (left + HALF_SECOND_MS) // MS_PER_S


def cmd_pttl(view: View, args: list[bytes]) -> object:
    """PTTL key: milliseconds left, -1 without expiry, -2 when missing."""
    return remaining_ms(view, args[1])


def cmd_persist(view: View, args: list[bytes]) -> object:
    """PERSIST key: 1 when an expiry was removed, else 0."""
    entry = view.lookup(args[1])
    if entry is None or not entry.expire_at_ms:
        return 0
    view.put(args[1], entry.tag + entry.payload, 0)
    return 1


def cmd_type(view: View, args: list[bytes]) -> object:
    """TYPE key: string, hash or none."""
    entry = view.lookup(args[1])
    return Simple(TYPE_NONE if entry is None else entry.type_name)


def cmd_dbsize(view: View, args: list[bytes]) -> object:
    """DBSIZE: the keys the store holds (expired ones not yet swept count, as in Redis)."""
    return view.kv.count()


def cmd_flushall(view: View, args: list[bytes]) -> object:
    """FLUSHALL [SYNC|ASYNC]: every key deleted, in this command's one batch."""
    if len(args) > 2 or (len(args) == 2 and args[1].upper() not in FLUSH_MODES):
        raise CommandError(ERR_SYNTAX)
    cursor: bytes | None = None
    while True:
        keys = walk_keys(view.kv, cursor, FLUSH_CHUNK_KEYS)
        if not keys:
            return OK
        for key in keys:
            view.delete(key)
        cursor = keys[-1]


def parse_scan_options(words: list[bytes]) -> tuple[int, bytes | None, bytes | None]:
    """SCAN's (COUNT, MATCH pattern or None, TYPE name or None), Redis's errors."""
    count, pattern, type_name = SCAN_DEFAULT_COUNT, None, None
    i = 0
    while i < len(words):
        word = words[i].upper()
        if i + 1 >= len(words) or word not in (b"COUNT", b"MATCH", b"TYPE"):
            raise CommandError(ERR_SYNTAX)
        value = words[i + 1]
        if word == b"COUNT":
            count = int_arg(value)
            if count < 1:
                raise CommandError(ERR_SYNTAX)
        elif word == b"MATCH":
            pattern = None if value == b"*" else value
        else:
            type_name = value
        i += 2
    return count, pattern, type_name


def scan(view: View, args: list[bytes], cursors: ScanCursors | None = None) -> object:
    """SCAN cursor [MATCH pattern] [COUNT n] [TYPE t]: [next cursor, keys]. Each call
    examines up to COUNT keys after the cursor's position and returns the live ones that
    match; the cursor is b"0" once the last key has been examined."""
    position = decode_cursor(args[1], cursors)
    count, pattern, type_name = parse_scan_options(args[2:])
    examined = walk_keys(view.kv, position, count)
    found: list[bytes] = []
    for key in examined:
        if pattern is not None and not glob_match(pattern, key):
            continue
        entry = view.lookup(key)
        if entry is None:
            continue
        if type_name is not None and entry.type_name.encode() != type_name.lower():
            continue
        found.append(key)
    done = len(examined) < count
    return [b"0" if done else encode_cursor(examined[-1], cursors), found]


def cmd_scan(view: View, args: list[bytes]) -> object:
    """SCAN without a cursor table (long-key positions become long integers)."""
    return scan(view, args)
