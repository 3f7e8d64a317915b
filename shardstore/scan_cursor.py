"""SCAN cursors: a position in key order, spelled as the unsigned integer clients expect.

The position is the last key a SCAN call examined; the next call resumes strictly after
it, so a full iteration returns every key that existed throughout, never loops, and
terminates (keys are ordered, and new keys sort somewhere ahead or behind, as Redis's
guarantees allow). Cursor 0 is the start and the end.

The empty key is a key like any other: its cursor is 1 (0x01 and no byte), the start's 0.

Encoding, chosen so the cursors of short keys need no server state:
- a key of at most SHORT_KEY_BYTES bytes: the integer of the bytes 0x01 + key (big-endian),
  below 2**57, so it fits the unsigned 64-bit cursor redis-cli and hiredis parse;
- a longer key, when the caller keeps a `ScanCursors` table (the daemon keeps one per node):
  an id from TABLE_BASE up, mapped to the key; the table keeps the newest TABLE_SIZE ids and
  an id it no longer holds restarts the scan from the beginning (Redis too accepts any
  integer as a cursor);
- a longer key without a table: the integer of 0x01 + key, however long; redis-py reads
  such cursors, 64-bit clients would not (the daemon passes a table to avoid this).
A cursor that is not a decimal integer is Redis's "invalid cursor" error; a signed one is
read as C's strtoull reads it, as Redis does.
"""

from __future__ import annotations

from collections import OrderedDict

from core.resp import CommandError
from shardstore.values import ERR_INVALID_CURSOR

SHORT_KEY_BYTES = 7
MARKER = b"\x01"
TABLE_BASE = 1 << 60
TABLE_END = 1 << 63
TABLE_SIZE = 65536
UINT64_SPAN = 1 << 64


class ScanCursors:
    """Ids for the positions of long keys, the newest TABLE_SIZE kept."""

    def __init__(self, size: int = TABLE_SIZE) -> None:
        self.size = size
        self.next_id = TABLE_BASE
        self.positions: OrderedDict[int, bytes] = OrderedDict()

    def issue(self, key: bytes) -> int:
        """A new id for position `key`."""
        cursor = self.next_id
        self.next_id = self.next_id + 1 if self.next_id + 1 < TABLE_END else TABLE_BASE
        self.positions[cursor] = key
        while len(self.positions) > self.size:
            self.positions.popitem(last=False)
        return cursor

    def position(self, cursor: int) -> bytes | None:
        """The key of id `cursor`, or None (the start) for an id not held."""
        return self.positions.get(cursor)


def encode_cursor(key: bytes, cursors: ScanCursors | None = None) -> bytes:
    """The cursor (decimal digits) that resumes after `key`."""
    if len(key) > SHORT_KEY_BYTES and cursors is not None:
        return b"%d" % cursors.issue(key)
    return b"%d" % int.from_bytes(MARKER + key, "big")


def parse_cursor(text: bytes) -> int:
    """The integer of a cursor as C's strtoull reads it (a sign allowed, "-n" wrapping to
    2**64 - n); anything else is Redis's "invalid cursor" error. Integers beyond 64 bits are
    accepted: they are this module's long-key cursors."""
    sign, digits = (text[:1], text[1:]) if text[:1] in (b"-", b"+") else (b"", text)
    if not digits.isdigit():
        raise CommandError(ERR_INVALID_CURSOR)
    value = int(digits)
    return (UINT64_SPAN - value) % UINT64_SPAN if sign == b"-" else value


def decode_cursor(text: bytes, cursors: ScanCursors | None = None) -> bytes | None:
    """The position of cursor `text`: resume strictly after this key; None = the start."""
    value = parse_cursor(text)
    if value == 0:
        return None
    if cursors is not None and TABLE_BASE <= value < TABLE_END:
        return cursors.position(value)
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    # A well-formed cursor starts with the marker; any other integer is some position.
    return raw[1:] if raw[:1] == MARKER else raw
