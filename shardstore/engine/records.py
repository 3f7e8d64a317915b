"""On-disk format of segment files: frames of entries, each frame checksummed.

A segment file is a sequence of frames `[u32 LE payload length][u32 LE xxh32 of those four
bytes][u64 LE xxh64(payload)][payload]`. The length has its own checksum so that a damaged
length in the middle of a file is corruption, not a frame that seems to run past the end.
One `Engine.write` batch is one frame, so a batch is atomic across a crash: a torn frame
fails its length or checksum and is dropped whole. A frame payload is

    [u8 kind][i64 applied index, -1 = none][u32 entry count] entries...

(kind SUPERSEDES instead carries `count` u64 segment ids: the first frame of a compaction's
output names the segments it replaces, so recovery ignores them if a crash left them behind)
and an entry is `[u8 flags][u64 seq][u64 expire_at_ms][u32 key length][u32 value length]
key value`. `seq` orders every write of the store: recovery keeps, per key, the entry with the
highest seq, so compaction may copy entries into segments of any name and replay order does
not matter. A tombstone has the TOMBSTONE flag and no value.

Scanning (`scan_segment`) reports entries with the file offset of their value, which is what
the keydir keeps. Where a frame is bad it stops: at the end of the file that is a torn tail
(the caller may truncate it), anywhere else it raises `CorruptStore` naming file and offset.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import xxhash

from shardstore.engine.errors import CorruptStore

__all__ = [
    "ENTRY_HEADER",
    "FRAME_HEADER",
    "PAYLOAD_HEADER",
    "Entry",
    "ScanResult",
    "encode_frame",
    "encode_supersedes",
    "entry_bytes",
    "read_supersedes",
    "scan_segment",
    "supersedes_bytes",
]

FRAME_HEADER = struct.Struct("<IIQ")  # payload length, xxh32(length field), xxh64(payload)
LENGTH_FIELD = struct.Struct("<I")
ZERO_CHECK_BYTES = 64 * 1024
PAYLOAD_HEADER = struct.Struct("<BqI")  # kind, applied index (-1 = none), entry count
ENTRY_HEADER = struct.Struct("<BQQII")  # flags, seq, expire_at_ms, key length, value length
KIND_BATCH = 1
KIND_SUPERSEDES = 2  # a compaction output's first frame: the segment ids it replaces
SEGMENT_ID = struct.Struct("<Q")
FLAG_TOMBSTONE = 1
NO_APPLIED_INDEX = -1
MAX_FRAME_PAYLOAD_BYTES = 2**32 - 1
SCAN_READ_BYTES = 1024 * 1024

Reader = Callable[[int, int], bytes]  # (length, offset) -> bytes


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry found in a segment; `value_offset` is where its value starts in the file."""

    key: bytes
    seq: int
    expire_at_ms: int
    value_offset: int
    value_len: int
    tombstone: bool


@dataclass(slots=True)
class ScanResult:
    """What a scan found: entries in file order, the end of the last good frame, the highest
    applied index of any frame, whether bytes after `good_end` were a torn tail, and the
    segment ids a SUPERSEDES frame named."""

    entries: list[Entry]
    good_end: int
    applied_index: int
    torn: bool
    supersedes: list[int]


def entry_bytes(key_len: int, value_len: int) -> int:
    """Bytes an entry takes in a frame (header, key and value)."""
    return ENTRY_HEADER.size + key_len + value_len


def encode_frame(
    items: Sequence[tuple[bytes, bytes | None, int, int]],
    applied_index: int | None,
    frame_offset: int,
) -> tuple[bytes, list[int]]:
    """Frame `items` (key, value or None, expire_at_ms, seq) to be written at `frame_offset`.

    Returns the frame and, per item, the file offset its value will have.
    """
    parts = [b"", PAYLOAD_HEADER.pack(KIND_BATCH, _applied(applied_index), len(items))]
    offsets: list[int] = []
    pos = frame_offset + FRAME_HEADER.size + PAYLOAD_HEADER.size
    for key, value, expire_at_ms, seq in items:
        flags = FLAG_TOMBSTONE if value is None else 0
        data = b"" if value is None else value
        parts.append(ENTRY_HEADER.pack(flags, seq, expire_at_ms, len(key), len(data)))
        parts.append(key)
        parts.append(data)
        offsets.append(pos + ENTRY_HEADER.size + len(key))
        pos += entry_bytes(len(key), len(data))
    payload = b"".join(parts)
    if len(payload) > MAX_FRAME_PAYLOAD_BYTES:
        raise ValueError(f"batch of {len(payload)} bytes exceeds one frame")
    return frame_header(payload) + payload, offsets


def frame_header(payload: bytes) -> bytes:
    length = LENGTH_FIELD.pack(len(payload))
    return FRAME_HEADER.pack(len(payload), xxhash.xxh32_intdigest(length),
                             xxhash.xxh64_intdigest(payload))


def _applied(applied_index: int | None) -> int:
    return NO_APPLIED_INDEX if applied_index is None else applied_index


def scan_segment(path: Path, read: Reader, file_size: int, *, tail_ok: bool) -> ScanResult:
    """Decode every frame of one segment.

    A frame cut short by the end of the file, or whose checksum fails and which ends exactly
    at the end of the file, or a bad header followed by nothing but zeros, is a torn tail:
    with `tail_ok` the scan stops before it (torn = True), otherwise it raises CorruptStore.
    Any other bad frame raises CorruptStore.
    """
    result = ScanResult([], 0, NO_APPLIED_INDEX, False, [])
    offset = 0
    while offset < file_size:
        end = _scan_frame(path, read, offset, file_size, result)
        if end is None:
            if not tail_ok:
                raise CorruptStore(path, offset, "torn frame in a sealed segment")
            result.torn = True
            break
        offset = end
        result.good_end = end
    return result


def read_supersedes(path: Path, read: Reader, file_size: int) -> list[int]:
    """The segment ids named by the SUPERSEDES frame a compaction output starts with.

    Compaction outputs are fsynced before they get their name, so a bad first frame is
    corruption (CorruptStore), never a torn tail.
    """
    result = ScanResult([], 0, NO_APPLIED_INDEX, False, [])
    if _scan_frame(path, read, 0, file_size, result) is None or not result.supersedes:
        raise CorruptStore(path, 0, "a compaction output must start with a supersedes frame")
    return result.supersedes


def _scan_frame(path: Path, read: Reader, offset: int, file_size: int,
                result: ScanResult) -> int | None:
    """Decode the frame at `offset` into `result`; its end offset, or None if torn."""
    header = read(FRAME_HEADER.size, offset)
    if len(header) < FRAME_HEADER.size:
        return None
    length, length_check, checksum = FRAME_HEADER.unpack(header)
    if xxhash.xxh32_intdigest(LENGTH_FIELD.pack(length)) != length_check:
        if _zeros_to_end(read, offset, file_size):
            return None
        raise CorruptStore(path, offset, "frame length fails its checksum")
    end = offset + FRAME_HEADER.size + length
    if end > file_size:
        return None
    payload = read(length, offset + FRAME_HEADER.size)
    if len(payload) < length:
        return None
    if xxhash.xxh64_intdigest(payload) != checksum:
        if end == file_size:
            return None
        raise CorruptStore(path, offset, f"checksum mismatch with {file_size - end} bytes "
                           "after the frame; refusing to truncate")
    try:
        applied, entries = _decode_payload(payload, offset + FRAME_HEADER.size, result)
    except (struct.error, ValueError) as exc:
        raise CorruptStore(path, offset, f"undecodable frame: {exc}") from exc
    result.entries.extend(entries)
    result.applied_index = max(result.applied_index, applied)
    return end


def _zeros_to_end(read: Reader, offset: int, file_size: int) -> bool:
    """True if every byte from `offset` to the end of the file is zero (a file system that
    extended the file but lost the data leaves zeros: a torn tail, not corruption)."""
    while offset < file_size:
        chunk = read(min(ZERO_CHECK_BYTES, file_size - offset), offset)
        if not chunk or chunk.count(0) != len(chunk):
            return False
        offset += len(chunk)
    return True


def _decode_payload(payload: bytes, payload_offset: int,
                    result: ScanResult) -> tuple[int, list[Entry]]:
    kind, applied, count = PAYLOAD_HEADER.unpack_from(payload, 0)
    if kind == KIND_SUPERSEDES:
        if len(payload) != PAYLOAD_HEADER.size + count * SEGMENT_ID.size:
            raise ValueError("supersedes frame of the wrong length")
        start = PAYLOAD_HEADER.size
        result.supersedes.extend(i for (i,) in SEGMENT_ID.iter_unpack(payload[start:]))
        return applied, []
    if kind != KIND_BATCH:
        raise ValueError(f"unknown frame kind {kind}")
    entries: list[Entry] = []
    pos = PAYLOAD_HEADER.size
    for _ in range(count):
        flags, seq, expire, klen, vlen = ENTRY_HEADER.unpack_from(payload, pos)
        key_start = pos + ENTRY_HEADER.size
        value_start = key_start + klen
        pos = value_start + vlen
        if pos > len(payload):
            raise ValueError("entry runs past the end of its frame")
        entries.append(Entry(payload[key_start:value_start], seq, expire,
                             payload_offset + value_start, vlen,
                             bool(flags & FLAG_TOMBSTONE)))
    if pos != len(payload):
        raise ValueError("bytes left over after the last entry")
    return applied, entries


def supersedes_bytes(count: int) -> int:
    """Bytes of a SUPERSEDES frame naming `count` segments."""
    return FRAME_HEADER.size + PAYLOAD_HEADER.size + count * SEGMENT_ID.size


def encode_supersedes(segment_ids: Sequence[int], applied_index: int | None) -> bytes:
    """The SUPERSEDES frame naming `segment_ids` (always written at offset 0)."""
    payload = PAYLOAD_HEADER.pack(KIND_SUPERSEDES, _applied(applied_index), len(segment_ids))
    payload += b"".join(SEGMENT_ID.pack(i) for i in segment_ids)
    return frame_header(payload) + payload
