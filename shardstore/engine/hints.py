"""Hint files: a compaction output's keydir entries, so opening need not read its values.

Strategy (Bitcask's hint files): when compaction writes `<gen>-<id>.cmp` it also writes
`<gen>-<id>.hint` with, per entry, its flags, seq, expiry, key and value position, and the
output's size, applied index and the segments it replaces; the hint is fsynced and renamed
into place before the output is. Opening uses a hint only if its checksum holds and the size
it names is the output's size; otherwise it scans the output as usual. So a hint can make
opening faster, never different. (A damaged value inside an output with a good hint is then
not noticed at open.)

Format: `[magic "SSH1"][u64 segment size][i64 applied index][u32 n][n x u64 segment id]`
then entries `[u8 flags][u64 seq][u64 expire_at_ms][u32 key length][u32 value length]
[u64 value offset] key`, then `[u64 xxh64 of everything before]`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import xxhash

from shardstore.engine.records import Entry

__all__ = ["HINT_SUFFIX", "Hint", "decode_hint", "encode_hint", "hint_path"]

HINT_SUFFIX = ".hint"
HINT_MAGIC = b"SSH1"
HINT_HEAD = struct.Struct("<4sQqI")  # magic, segment size, applied index, replaced count
HINT_ID = struct.Struct("<Q")
HINT_ENTRY = struct.Struct("<BQQIIQ")  # flags, seq, expire, key len, value len, value offset
HINT_TRAILER = struct.Struct("<Q")
FLAG_TOMBSTONE = 1


@dataclass(frozen=True, slots=True)
class Hint:
    """What a valid hint file says about its compaction output."""

    applied_index: int
    supersedes: list[int]
    entries: list[Entry]


def hint_path(segment: Path) -> Path:
    """The hint file of a compaction output."""
    return segment.with_suffix(HINT_SUFFIX)


def encode_hint(segment_size: int, applied_index: int, supersedes: Sequence[int],
                entries: Sequence[Entry]) -> bytes:
    parts = [HINT_HEAD.pack(HINT_MAGIC, segment_size, applied_index, len(supersedes))]
    parts.extend(HINT_ID.pack(i) for i in supersedes)
    for e in entries:
        flags = FLAG_TOMBSTONE if e.tombstone else 0
        parts.append(HINT_ENTRY.pack(flags, e.seq, e.expire_at_ms, len(e.key), e.value_len,
                                     e.value_offset))
        parts.append(e.key)
    body = b"".join(parts)
    return body + HINT_TRAILER.pack(xxhash.xxh64_intdigest(body))


def decode_hint(data: bytes, segment_size: int) -> Hint | None:
    """The hint in `data`, or None if it is damaged or names another segment size."""
    if len(data) < HINT_HEAD.size + HINT_TRAILER.size:
        return None
    body, (checksum,) = data[:-HINT_TRAILER.size], HINT_TRAILER.unpack(data[-HINT_TRAILER.size:])
    if xxhash.xxh64_intdigest(body) != checksum:
        return None
    magic, size, applied, count = HINT_HEAD.unpack_from(body, 0)
    if magic != HINT_MAGIC or size != segment_size:
        return None
    try:
        return _decode_body(body, applied, count)
    except (struct.error, ValueError):
        return None


def _decode_body(body: bytes, applied: int, count: int) -> Hint:
    pos = HINT_HEAD.size
    supersedes = [HINT_ID.unpack_from(body, pos + i * HINT_ID.size)[0] for i in range(count)]
    pos += count * HINT_ID.size
    entries = []
    while pos < len(body):
        flags, seq, expire, klen, vlen, offset = HINT_ENTRY.unpack_from(body, pos)
        start = pos + HINT_ENTRY.size
        pos = start + klen
        if pos > len(body):
            raise ValueError("hint entry runs past the end")
        entries.append(Entry(body[start:pos], seq, expire, offset, vlen,
                             bool(flags & FLAG_TOMBSTONE)))
    return Hint(applied, supersedes, entries)
