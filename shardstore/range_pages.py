"""Pages of a range read: `TABLE.RANGE table from to [COUNT n] [CURSOR c]`; sans I/O.

Strategy: a range table's keys come back in key order, so a page is "the first COUNT keys
after the last key of the page before". The cursor is that last key, written in hex (so
any key travels as a printable word); `0` (not valid hex: no key is empty) is the start
of the read, as the first call sends it, and the end, as the last page answers it, the
way SCAN's cursor works. Being a key, not a position in one node's walk, the cursor means
the same thing on every node and across shards: the router and shardstore.client send it
on to every shard the range meets, take the first COUNT keys of their merged replies, and
answer the last one as the next cursor (or `0` when no shard had more).

Without CURSOR the reply is the plain list of keys (at most COUNT), as it always was;
with CURSOR it is `[next cursor, [keys]]`. A shard reads one key more than COUNT to know
whether the walk goes on, so a page never ends on an empty last call.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from shardstore import table_keys
from shardstore.catalog import (
    ERR_COUNT,
    ERR_POINT,
    ERR_SYNTAX,
    MAX_RANGE_KEYS,
    Catalog,
    CatalogError,
    Table,
)
from shardstore.table_keys import KeyFormatError
from shardstore.table_scan import merge_keys

__all__ = [
    "CURSOR_END", "CURSOR_START", "ERR_CURSOR", "RangeRequest", "decode_cursor",
    "encode_cursor", "join_pieces", "merge_page", "page_reply", "parse_range_request",
    "piece_args", "split_page",
]

CURSOR_START = b"0"
CURSOR_END = b"0"
MAX_CURSOR_CHARS = 2 * 512 * 1024  # a key of 512 KiB at most, in hex
MAX_COUNT_DIGITS = 7
OPTION_COUNT = b"COUNT"
OPTION_CURSOR = b"CURSOR"
ERR_CURSOR = "ERR invalid cursor (TABLE.RANGE's cursor is 0 or the one the last page answered)"
ERR_PAGE_REPLY = "ERR a TABLE.RANGE page reply not understood: {!r}"


@dataclass(frozen=True)
class RangeRequest:
    """One TABLE.RANGE: positions [low, high) of `table`, at most `count` keys, after key
    `after` (None: from the start); `paged` when the caller sent CURSOR (the reply then
    carries the next cursor)."""

    table: Table
    low: int
    high: int
    count: int
    after: bytes | None = None
    paged: bool = False


def encode_cursor(last: bytes | None) -> bytes:
    """The cursor that goes on after key `last` (None: the read is over)."""
    return CURSOR_END if last is None else binascii.hexlify(last)


def decode_cursor(word: bytes) -> bytes | None:
    """The key a cursor goes on after (None: from the start); CatalogError otherwise."""
    if word == CURSOR_START:
        return None
    if len(word) > MAX_CURSOR_CHARS or len(word) % 2:
        raise CatalogError(ERR_CURSOR)
    try:
        key = binascii.unhexlify(word)
    except (binascii.Error, ValueError):
        raise CatalogError(ERR_CURSOR) from None
    if not key:
        raise CatalogError(ERR_CURSOR)
    return key


def _count(word: bytes) -> int:
    if not word.isdigit() or len(word) > MAX_COUNT_DIGITS or not (
            1 <= int(word) <= MAX_RANGE_KEYS):
        raise CatalogError(ERR_COUNT)
    return int(word)


def _options(words: Sequence[bytes]) -> tuple[int, bytes | None, bool]:
    """COUNT n and CURSOR c, each at most once, in either order."""
    if len(words) % 2:
        raise CatalogError(ERR_SYNTAX)
    count, after, paged = MAX_RANGE_KEYS, None, False
    seen: set[bytes] = set()
    for name, value in zip(words[::2], words[1::2], strict=True):
        option = name.upper()
        if option in seen:
            raise CatalogError(ERR_SYNTAX)
        seen.add(option)
        if option == OPTION_COUNT:
            count = _count(value)
        elif option == OPTION_CURSOR:
            after, paged = decode_cursor(value), True
        else:
            raise CatalogError(ERR_SYNTAX)
    return count, after, paged


def parse_range_request(args: Sequence[bytes], catalog: Catalog) -> RangeRequest:
    """The request of `TABLE.RANGE name from to [COUNT n] [CURSOR c]` (args: every word,
    the command's first; bounds as table_keys.parse_bound reads them). CatalogError with
    the reply's text on bad syntax, table, bound, count or cursor."""
    if len(args) < 4:
        raise CatalogError(ERR_SYNTAX)
    table = catalog.range_table(args[1].decode("utf-8", "replace"))
    try:
        low = table_keys.parse_bound(table.kind, args[2], low=True)
        high = table_keys.parse_bound(table.kind, args[3], low=False)
    except KeyFormatError as exc:
        raise CatalogError(ERR_POINT.format(exc)) from None
    count, after, paged = _options(args[4:])
    return RangeRequest(table, low, high, count, after, paged)


def merge_page(parts: Iterable[Sequence[bytes]], count: int,
               more: bool = False) -> tuple[list[bytes], bytes | None]:
    """The first `count` keys of key-ordered `parts` (each the first keys after the same
    cursor in its piece of the range) and the key the next page goes on after (None: no
    key is left). `more`: some part said it had more keys than it sent."""
    merged = merge_keys(parts, count + 1)
    if len(merged) > count or (more and merged):
        page = merged[:count]
        return page, page[-1]
    return merged, None


def page_reply(keys: list[bytes], count: int, request: RangeRequest) -> object:
    """The reply to `request` given the keys read with one more than `count` asked for:
    the plain list, or [cursor, keys] when the caller pages."""
    page, last = merge_page([keys], count)
    if not request.paged:
        return page
    return [encode_cursor(last), page]


def split_page(reply: object) -> tuple[bytes, list[bytes]]:
    """(cursor, keys) of a paged TABLE.RANGE reply; ValueError when it is not one."""
    if isinstance(reply, list | tuple) and len(reply) == 2 and isinstance(
            reply[0], bytes | str) and isinstance(reply[1], list | tuple):
        cursor = reply[0].encode() if isinstance(reply[0], str) else reply[0]
        keys = [k.encode() if isinstance(k, str) else k for k in reply[1]]
        if all(isinstance(k, bytes) for k in keys):
            return cursor, keys
    raise ValueError(ERR_PAGE_REPLY.format(reply))


def piece_args(request: RangeRequest, low: int, high: int) -> list[bytes]:
    """The paged TABLE.RANGE that reads the piece [low, high) of `request` on its shard."""
    table = request.table
    return [b"TABLE.RANGE", table.name.encode(),
            table_keys.point_text(table.kind, low).encode(),
            table_keys.point_text(table.kind, high).encode(),
            OPTION_COUNT, str(request.count).encode(),
            OPTION_CURSOR, encode_cursor(request.after)]


def join_pieces(replies: Sequence[object], request: RangeRequest) -> object:
    """The reply to `request` from the paged replies of its pieces (`piece_args`):
    ValueError when one is not a page."""
    pages = [split_page(reply) for reply in replies]
    more = any(cursor != CURSOR_END for cursor, _ in pages)
    page, last = merge_page([keys for _, keys in pages], request.count, more)
    if not request.paged:
        return page
    return [encode_cursor(last), page]
