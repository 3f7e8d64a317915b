"""Typed values as the shardstore engine stores them, and the wire texts of their errors.

The engine keeps opaque bytes; this module gives them a type. A stored value is one tag
byte and a payload:

    b"s" + the string's bytes
    b"h" + msgpack of the hash's field map (bytes -> bytes, in insertion order)

Insertion order is kept on purpose: Redis answers HGETALL of a small hash (a listpack) in
the order its fields were first set, and a dict packed and unpacked keeps that order, so
our replies equal Redis's for the hashes clients usually hold.

Integers follow Redis's string2ll: optional "-", no "+", no spaces, no leading zeros, and
within a signed 64-bit range; anything else is "value is not an integer or out of range".
Every error text clients can see is a named constant here, written once.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from core.resp import CommandError

TAG_STRING = b"s"
TAG_HASH = b"h"
TYPE_NAMES = {TAG_STRING: "string", TAG_HASH: "hash"}
TYPE_NONE = "none"

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
# Redis's proto-max-bulk-len: the largest string APPEND may build.
MAX_STRING_BYTES = 512 * 1024 * 1024
# The longest decimal string2ll reads ("-9223372036854775808").
MAX_INT_CHARS = 20

ERR_WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"
ERR_NOT_INTEGER = "ERR value is not an integer or out of range"
ERR_HASH_NOT_INTEGER = "ERR hash value is not an integer"
ERR_SYNTAX = "ERR syntax error"
ERR_OVERFLOW = "ERR increment or decrement would overflow"
ERR_DECR_OVERFLOW = "ERR decrement would overflow"
ERR_STRING_TOO_LONG = "ERR string exceeds maximum allowed size (proto-max-bulk-len)"
ERR_INVALID_CURSOR = "ERR invalid cursor"
ERR_EXPIRE_TIME = "ERR invalid expire time in '{}' command"
ERR_ARITY = "ERR wrong number of arguments for '{}' command"
ERR_UNKNOWN_COMMAND = "ERR unknown command '{}', with args beginning with: {}"
ERR_UNSUPPORTED_OPTION = "ERR Unsupported option {}"
ERR_EXPIRE_NX = "ERR NX and XX, GT or LT options at the same time are not compatible"
ERR_EXPIRE_GT_LT = "ERR GT and LT options at the same time are not compatible"
# Misuse by the daemon (a write run as a read, or the reverse), never a client's doing.
ERR_NOT_A_READ = "ERR '{}' is a write command"
ERR_NOT_A_WRITE = "ERR '{}' is not a write command"


@dataclass(frozen=True)
class Entry:
    """A live key's decoded record: its tag, payload (the bytes after the tag) and expiry
    (absolute ms since the epoch; 0 = none)."""

    tag: bytes
    payload: bytes
    expire_at_ms: int

    @property
    def type_name(self) -> str:
        """Redis's TYPE word for this value."""
        return TYPE_NAMES.get(self.tag, TYPE_NONE)


def decode(stored: bytes, expire_at_ms: int) -> Entry:
    """The Entry of a stored value (tag byte first)."""
    return Entry(stored[:1], stored[1:], expire_at_ms)


def encode_string(data: bytes) -> bytes:
    """The stored form of a string value."""
    return TAG_STRING + data


def encode_hash(fields: dict[bytes, bytes]) -> bytes:
    """The stored form of a hash (its field map, order kept)."""
    return TAG_HASH + msgpack.packb(fields, use_bin_type=True)


def string_of(entry: Entry) -> bytes:
    """The entry's string, or WRONGTYPE."""
    if entry.tag != TAG_STRING:
        raise CommandError(ERR_WRONGTYPE)
    return entry.payload


def hash_of(entry: Entry) -> dict[bytes, bytes]:
    """The entry's field map, or WRONGTYPE."""
    if entry.tag != TAG_HASH:
        raise CommandError(ERR_WRONGTYPE)
    fields: dict[bytes, bytes] = msgpack.unpackb(entry.payload, raw=True, strict_map_key=False)
    return fields


def parse_int(data: bytes) -> int | None:
    """The signed 64-bit integer `data` spells exactly as Redis's string2ll reads it, or None."""
    if not data or len(data) > MAX_INT_CHARS:
        return None
    digits = data[1:] if data[:1] == b"-" else data
    if not digits or not digits.isdigit() or not digits.isascii():
        return None
    if digits[:1] == b"0" and data != b"0":
        return None
    value = int(data)
    return value if INT64_MIN <= value <= INT64_MAX else None


def int_arg(data: bytes, error: str = ERR_NOT_INTEGER) -> int:
    """An integer argument, or CommandError(`error`)."""
    value = parse_int(data)
    if value is None:
        raise CommandError(error)
    return value


def checked_add(value: int, delta: int) -> int:
    """value + delta, or the overflow error when it leaves the signed 64-bit range."""
    total = value + delta
    if not INT64_MIN <= total <= INT64_MAX:
        raise CommandError(ERR_OVERFLOW)
    return total
