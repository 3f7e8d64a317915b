"""The payloads of a streamed snapshot (core/raft/snapshot_stream.py): chunks, acks, nacks.

A leader sends a snapshot to one follower as a run of chunk payloads; the follower answers
each with a reply. Both are msgpack-friendly dicts with str keys (core/rpc carries them as
"raft snapshot" messages of one group); this module builds them and checks them, no I/O.

A transfer is named by the leader's id and term and by the snapshot's index; the follower
orders transfers by (term, index), so a newer one pre-empts an older one.

    chunk  {"kind": "chunk", "frm", "to", "term", "index", "offset", "total", "data",
            "hash": xxh64(data),
            "meta": [snapshot term, [voter, ...]]      only on the chunk at offset 0,
            "digest": xxh64(whole snapshot)}           only on the last chunk, which is the
                                                       one that ends at `total`
    ack    {"kind": "ack", "frm", "to", "term", "index", "next"}
    nack   {"kind": "nack", "frm", "to", "term", "index", "next", "reason"}

`next` is the offset the follower expects next: it holds bytes [0, next) of the snapshot.
An ack whose `next` equals the transfer's total means the whole snapshot is on the
follower's disk, fsynced and verified. A nack's `reason` is one of the NACK_* strings.

Everything decoded here is remote input: `chunk_from_wire` and `reply_from_wire` check every
field and raise `SnapshotPayloadError` (a WireError) for anything malformed, and nothing
else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import xxhash

from core.raft.errors import WireError

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "KIND_ACK",
    "KIND_CHUNK",
    "KIND_NACK",
    "MAX_CHUNK_BYTES",
    "MAX_SNAPSHOT_BYTES",
    "MAX_VOTERS",
    "NACK_CHECKSUM",
    "NACK_DIGEST",
    "NACK_GAP",
    "NACK_REASONS",
    "NACK_STALE",
    "NACK_TOO_LARGE",
    "NACK_UNKNOWN",
    "Chunk",
    "ChunkReply",
    "SnapshotMeta",
    "SnapshotPayloadError",
    "chunk_from_wire",
    "chunk_hash",
    "reply_from_wire",
]

DEFAULT_CHUNK_BYTES = 1024 * 1024  # what a sender puts in one chunk
MAX_CHUNK_BYTES = 16 * 1024 * 1024  # the largest chunk a receiver takes (under an rpc frame)
MAX_SNAPSHOT_BYTES = 64 * 1024 * 1024 * 1024  # the largest snapshot a receiver takes
MAX_VOTERS = 1024  # voters listed in a chunk's metadata
MAX_U64 = 2**64 - 1  # every int field: ids, terms, offsets, hashes

KIND_CHUNK = "chunk"
KIND_ACK = "ack"
KIND_NACK = "nack"

NACK_GAP = "gap"  # the chunk starts after `next`: resend from `next`
NACK_CHECKSUM = "checksum"  # the chunk's data does not match its hash: resend from `next`
NACK_DIGEST = "digest"  # the whole snapshot does not match its digest: start over from 0
NACK_UNKNOWN = "unknown"  # no such transfer under way here: start over from 0
NACK_STALE = "stale"  # a newer transfer or term supersedes this one: give up
NACK_TOO_LARGE = "too large"  # over the receiver's size limits: give up
NACK_REASONS = frozenset({NACK_GAP, NACK_CHECKSUM, NACK_DIGEST, NACK_UNKNOWN, NACK_STALE,
                          NACK_TOO_LARGE})

_CHUNK_FIELDS = frozenset({"kind", "frm", "to", "term", "index", "offset", "total", "data",
                           "hash"})
_REPLY_FIELDS = frozenset({"kind", "frm", "to", "term", "index", "next"})


class SnapshotPayloadError(WireError):
    """A snapshot-stream payload that does not decode (wrong shape, types or bounds).

    The only error the decoders and `SnapshotReceiver.on_chunk` raise for remote input:
    drop the payload (and, if it keeps happening, the peer)."""


def chunk_hash(data: bytes | memoryview) -> int:
    """The checksum of a chunk's data, and of a whole snapshot: xxh64 as an int."""
    return xxhash.xxh64_intdigest(data)


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """What a snapshot is besides its bytes: its index, the term of that entry, and the
    configuration in force there (messages.Snapshot without `data`)."""

    index: int
    term: int
    voters: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Chunk:
    """Bytes [offset, offset + len(data)) of a snapshot of `total` bytes at `index`, sent by
    leader `frm` of `term` to `to`. Invariants (checked by `chunk_from_wire`): `meta` is set
    exactly on the chunk at offset 0, `digest` exactly on the last chunk (`last`), and only
    the last chunk may be empty."""

    frm: int
    to: int
    term: int
    index: int
    offset: int
    total: int
    data: bytes
    hash: int
    meta: SnapshotMeta | None = None
    digest: int | None = None

    @property
    def last(self) -> bool:
        """True for the chunk that ends the snapshot."""
        return self.offset + len(self.data) == self.total

    def to_wire(self) -> dict[str, Any]:
        """The payload dict (see the module header)."""
        out: dict[str, Any] = {
            "kind": KIND_CHUNK, "frm": self.frm, "to": self.to, "term": self.term,
            "index": self.index, "offset": self.offset, "total": self.total,
            "data": self.data, "hash": self.hash,
        }
        if self.meta is not None:
            out["meta"] = [self.meta.term, list(self.meta.voters)]
        if self.digest is not None:
            out["digest"] = self.digest
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkReply:
    """A follower's answer to a chunk: it holds bytes [0, next) of transfer (term, index).
    `reason` is None for an ack, one of NACK_REASONS for a nack."""

    frm: int
    to: int
    term: int
    index: int
    next: int
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    def to_wire(self) -> dict[str, Any]:
        """The payload dict (see the module header)."""
        out: dict[str, Any] = {
            "kind": KIND_ACK if self.reason is None else KIND_NACK, "frm": self.frm,
            "to": self.to, "term": self.term, "index": self.index, "next": self.next,
        }
        if self.reason is not None:
            out["reason"] = self.reason
        return out


def chunk_from_wire(w: object, max_chunk_bytes: int = MAX_CHUNK_BYTES) -> Chunk:
    """The chunk in payload `w`; SnapshotPayloadError if anything is off, including data
    longer than `max_chunk_bytes`."""
    m = _mapping(w, KIND_CHUNK)
    optional = {"meta", "digest"} & m.keys()
    _exact_fields(m, _CHUNK_FIELDS | optional, "chunk")
    data = m["data"]
    if not isinstance(data, bytes):
        raise SnapshotPayloadError(f"chunk data must be bytes, got {type(data).__name__}")
    if len(data) > max_chunk_bytes:
        raise SnapshotPayloadError(f"chunk of {len(data)} bytes exceeds {max_chunk_bytes}")
    offset, total = _u64(m["offset"], "offset"), _u64(m["total"], "total")
    end = offset + len(data)
    if end > total:
        raise SnapshotPayloadError(f"chunk ends at {end}, after the total {total}")
    if not data and end != total:
        raise SnapshotPayloadError("only the last chunk may be empty")
    last = end == total
    if ("meta" in m) != (offset == 0):
        raise SnapshotPayloadError("meta must be on the chunk at offset 0, and only there")
    if ("digest" in m) != last:
        raise SnapshotPayloadError("digest must be on the last chunk, and only there")
    return Chunk(frm=_u64(m["frm"], "frm"), to=_u64(m["to"], "to"),
                 term=_u64(m["term"], "term"), index=_u64(m["index"], "index"),
                 offset=offset, total=total, data=data, hash=_u64(m["hash"], "hash"),
                 meta=_meta(m["meta"], m["index"]) if "meta" in m else None,
                 digest=_u64(m["digest"], "digest") if last else None)


def reply_from_wire(w: object) -> ChunkReply:
    """The ack or nack in payload `w`; SnapshotPayloadError if anything is off."""
    if isinstance(w, Mapping) and w.get("kind") == KIND_NACK:
        m = _mapping(w, KIND_NACK)
        _exact_fields(m, _REPLY_FIELDS | {"reason"}, "nack")
        reason = m["reason"]
        if not isinstance(reason, str) or reason not in NACK_REASONS:
            raise SnapshotPayloadError(f"unknown nack reason {reason!r}")
    else:
        m = _mapping(w, KIND_ACK)
        _exact_fields(m, _REPLY_FIELDS, "ack")
        reason = None
    return ChunkReply(frm=_u64(m["frm"], "frm"), to=_u64(m["to"], "to"),
                      term=_u64(m["term"], "term"), index=_u64(m["index"], "index"),
                      next=_u64(m["next"], "next"), reason=reason)


def _mapping(w: object, kind: str) -> Mapping[str, Any]:
    if not isinstance(w, Mapping):
        raise SnapshotPayloadError(f"a snapshot payload must be a map, got {type(w).__name__}")
    if w.get("kind") != kind:
        raise SnapshotPayloadError(f"expected a {kind!r} payload, got kind {w.get('kind')!r}")
    return w


def _exact_fields(m: Mapping[str, Any], expected: frozenset[str] | set[str], what: str) -> None:
    if m.keys() != expected:
        missing = sorted(expected - m.keys())
        extra = sorted(map(repr, m.keys() - expected))
        raise SnapshotPayloadError(f"{what} lacks fields {missing} or has unknown ones {extra}")


def _u64(value: object, what: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_U64:
        raise SnapshotPayloadError(f"{what} must be an int in [0, 2**64), got {value!r}")
    return value


def _meta(value: object, index: object) -> SnapshotMeta:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise SnapshotPayloadError("meta must be [snapshot term, voters]")
    term, voters = value
    if not isinstance(voters, list | tuple) or len(voters) > MAX_VOTERS:
        raise SnapshotPayloadError(f"meta voters must be a list of at most {MAX_VOTERS} ids")
    return SnapshotMeta(_u64(index, "index"), _u64(term, "snapshot term"),
                        tuple(_u64(v, "voter id") for v in voters))
