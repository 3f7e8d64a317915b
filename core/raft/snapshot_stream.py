"""Streaming a Raft snapshot to a follower in chunks: the leader's side, and the entry point.

Today a SnapshotRequest carries the whole snapshot in one rpc frame, which caps it at the
frame limit. Here the leader's transport turns that message into a run of chunk payloads
(core/raft/snapshot_wire.py) and the follower writes them to a temporary file as they arrive
(core/raft/snapshot_receive.py); once the file is complete, fsynced and verified, the
follower steps the snapshot into its Node as if it had come in one message. This module
re-exports what a caller needs from those two and from core/raft/snapshot_source.py.

Strategy, sans-I/O: no asyncio, no clock, no sockets. A `SnapshotSender` hands out payloads
(`poll`), takes replies (`on_reply`) and ticks (`tick`); the caller sends what `poll`
returns and reports `state`. The snapshot's bytes come from a `SnapshotSource`: in memory
(`BytesSource`) or a window of a file (`FileSource`, read with pread one chunk at a time),
so a snapshot on disk is never one bytes object on the leader.

Flow control, as TCP's in miniature: at most `window` chunks beyond the last acknowledged
offset are out; an ack moves the window on; a gap or checksum nack, or `resend_ticks` ticks
without progress, resends from the last acknowledged offset; after `max_stalls` timeouts in a
row, or a receiver that says stale or too large, the transfer has failed. The whole
snapshot's xxh64 is computed while the chunks are first read, in order, and travels on the
last chunk.

`SnapshotOutbox` holds one leader's senders, one per follower, so that a SnapshotRequest
the Node repeats for a transfer already under way does not restart it.

How a group uses it (payloads travel as one-way messages of their own service, e.g.
`transport.send(peer, "raft.snap", group_id, payload)`):
- leader, for each SnapshotRequest in a Ready's messages: `outbox.start(msg)` instead of
  sending the message; on a reply from `peer`: `outbox.on_reply(peer, payload)`; on each
  tick: `outbox.tick()`; after any of these: send every `(to, payload)` of `outbox.poll()`
  and call `node.report_snapshot(to, ok)` for every `(to, ok)` of `outbox.finished()`;
  `outbox.cancel_all()` when leadership is lost, `outbox.cancel(to)` when a follower is
  removed;
- follower: `reply, done = receiver.on_chunk(payload, node.term)`, send `reply` back; when
  `done`: `node.step(done.to_request(node.id))`, persist and restore the Ready as usual,
  then `receiver.release()`; `receiver.tick()` on each tick; `receiver.close()` when the
  group stops. SnapshotPayloadError from either side: log and drop the payload.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from enum import Enum
from typing import Any

import xxhash

from core.raft.messages import SnapshotRequest
from core.raft.snapshot_file import SnapshotFile
from core.raft.snapshot_receive import (
    DEFAULT_IDLE_TICKS,
    INCOMING_NAME,
    ReceivedSnapshot,
    SnapshotReceiver,
)
from core.raft.snapshot_source import (
    BytesSource,
    FileSource,
    SnapshotSource,
    snapshot_file_source,
)
from core.raft.snapshot_wire import (
    DEFAULT_CHUNK_BYTES,
    MAX_CHUNK_BYTES,
    MAX_SNAPSHOT_BYTES,
    NACK_DIGEST,
    NACK_STALE,
    NACK_TOO_LARGE,
    NACK_UNKNOWN,
    Chunk,
    ChunkReply,
    SnapshotMeta,
    SnapshotPayloadError,
    chunk_hash,
    reply_from_wire,
)

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_IDLE_TICKS",
    "DEFAULT_MAX_RESTARTS",
    "DEFAULT_MAX_STALLS",
    "DEFAULT_RESEND_TICKS",
    "DEFAULT_WINDOW_CHUNKS",
    "INCOMING_NAME",
    "MAX_CHUNK_BYTES",
    "MAX_SNAPSHOT_BYTES",
    "BytesSource",
    "FileSource",
    "ReceivedSnapshot",
    "SenderState",
    "SnapshotMeta",
    "SnapshotOutbox",
    "SnapshotPayloadError",
    "SnapshotReceiver",
    "SnapshotSender",
    "SnapshotSource",
    "snapshot_file_source",
]

log = logging.getLogger("core.raft.snapshot_stream")

DEFAULT_WINDOW_CHUNKS = 4  # chunks sent beyond the last acknowledged offset
DEFAULT_RESEND_TICKS = 50  # ticks without progress before resending from the acked offset
DEFAULT_MAX_STALLS = 5  # such timeouts in a row before the transfer has failed
DEFAULT_MAX_RESTARTS = 3  # whole-snapshot digest mismatches before the transfer has failed

FAIL_TIMED_OUT = "timed out"
FAIL_RESTARTS = "the receiver rejected the whole snapshot's digest too often"
FAIL_CANCELLED = "cancelled"


# ---------------------------------------------------------------------------------------------
# The sender


class SenderState(Enum):
    SENDING = "sending"
    DONE = "done"  # the receiver holds the whole snapshot, fsynced and verified
    FAILED = "failed"  # see `failure`


class SnapshotSender:
    """Streams one snapshot from leader `frm` (in `term`) to follower `to`.

    Use: send every payload `poll()` returns, now and after each `on_reply` and `tick`;
    stop when `state` is DONE or FAILED (`failure` says why), then `close()`. Invariants:
    0 <= acked <= total; acked never decreases; every chunk sent starts at or before the
    point up to which the whole-snapshot digest has been computed."""

    def __init__(self, frm: int, to: int, term: int, meta: SnapshotMeta,
                 source: SnapshotSource, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 window: int = DEFAULT_WINDOW_CHUNKS, resend_ticks: int = DEFAULT_RESEND_TICKS,
                 max_stalls: int = DEFAULT_MAX_STALLS,
                 max_restarts: int = DEFAULT_MAX_RESTARTS) -> None:
        if not 0 < chunk_bytes <= MAX_CHUNK_BYTES or window < 1 or resend_ticks < 1:
            raise ValueError("chunk_bytes, window and resend_ticks must be positive "
                             f"(chunk_bytes at most {MAX_CHUNK_BYTES})")
        self.frm, self.to, self.term, self.meta = frm, to, term, meta
        self._source = source
        self.total = source.size()
        self._chunk_bytes, self._window = chunk_bytes, window
        self._resend_ticks, self._max_stalls = resend_ticks, max_stalls
        self._max_restarts = max_restarts
        self.state = SenderState.SENDING
        self.failure: str | None = None
        self.acked = 0  # the receiver holds [0, acked)
        self._next = 0  # the next offset to send
        self._all_sent = False  # the last chunk went out since the last rewind
        self._rewound_to: int | None = None  # a rewind not yet followed by progress
        self._hasher = xxhash.xxh64()
        self._hashed_to = 0  # the digest covers [0, _hashed_to)
        self._idle = 0  # ticks since the last progress or rewind
        self._stalls = 0  # timeouts in a row without progress
        self._restarts = 0
        self.stats = {"chunks_sent": 0, "bytes_sent": 0, "resends": 0}

    @classmethod
    def from_request(cls, msg: SnapshotRequest, source: SnapshotSource | None = None,
                     **options: int) -> SnapshotSender:
        """The sender for a SnapshotRequest a leader's Ready produced. `source` defaults to
        the snapshot's data: its file read a chunk at a time (a SnapshotFile), or bytes.
        ValueError if the file now holds a newer snapshot, OSError if it cannot be read."""
        snap = msg.snapshot
        meta = SnapshotMeta(snap.index, snap.term, snap.voters)
        if source is None:
            data = snap.data
            source = (data.open_source() if isinstance(data, SnapshotFile)
                      else BytesSource(data))
        return cls(msg.frm, msg.to, msg.term, meta, source, **options)

    @property
    def index(self) -> int:
        return self.meta.index

    @property
    def finished(self) -> bool:
        return self.state is not SenderState.SENDING

    def poll(self) -> list[dict[str, Any]]:
        """The chunk payloads to send now (empty when the window is full or the sender is
        finished). A read error fails the transfer."""
        out: list[dict[str, Any]] = []
        limit = self.acked + self._window * self._chunk_bytes
        while self.state is SenderState.SENDING and not self._all_sent and self._next < limit:
            try:
                out.append(self._next_chunk().to_wire())
            except OSError as exc:
                log.error("raft: cannot read the snapshot for node %d: %r", self.to, exc)
                self._fail(f"cannot read the snapshot: {exc}")
                return []
        return out

    def on_reply(self, payload: object) -> bool:
        """Take a reply payload. False if it belongs to another transfer (ignored).
        Raises SnapshotPayloadError if it does not decode."""
        reply = reply_from_wire(payload)
        if (reply.frm, reply.to, reply.term, reply.index) != (self.to, self.frm, self.term,
                                                               self.index):
            return False
        if self.state is SenderState.SENDING:
            self._take(reply)
        return True

    def tick(self) -> None:
        """One tick of the caller's clock: resend after `resend_ticks` without progress."""
        if self.state is not SenderState.SENDING:
            return
        self._idle += 1
        if self._idle < self._resend_ticks:
            return
        self._stalls += 1
        if self._stalls > self._max_stalls:
            self._fail(FAIL_TIMED_OUT)
            return
        self._rewind(self.acked)

    def cancel(self) -> None:
        """Give up (leadership lost, a newer snapshot to send): the state becomes FAILED."""
        if self.state is SenderState.SENDING:
            self._fail(FAIL_CANCELLED)

    def close(self) -> None:
        """Release the source. Call once finished or cancelled."""
        self._source.close()

    # -- internals -----------------------------------------------------------------------------

    def _next_chunk(self) -> Chunk:
        offset = self._next
        data = self._source.read(offset, min(self._chunk_bytes, self.total - offset))
        assert offset <= self._hashed_to, "chunks are first read in order"
        if offset == self._hashed_to:
            self._hasher.update(data)
            self._hashed_to += len(data)
        end = offset + len(data)
        self._next = end
        self._all_sent = end == self.total
        self.stats["chunks_sent"] += 1
        self.stats["bytes_sent"] += len(data)
        return Chunk(frm=self.frm, to=self.to, term=self.term, index=self.index,
                     offset=offset, total=self.total, data=data, hash=chunk_hash(data),
                     meta=self.meta if offset == 0 else None,
                     digest=self._hasher.intdigest() if self._all_sent else None)

    def _take(self, reply: ChunkReply) -> None:
        if reply.next > self.total:
            raise SnapshotPayloadError(f"reply expects offset {reply.next} of {self.total}")
        if reply.ok:
            self._progress(reply.next)
        elif reply.reason in (NACK_STALE, NACK_TOO_LARGE):
            self._fail(f"the receiver refused the snapshot: {reply.reason}")
        elif reply.reason in (NACK_UNKNOWN, NACK_DIGEST):
            self._restart(reply.reason)
        elif self.acked <= reply.next < self.total:  # a gap or a bad checksum
            self._progress(reply.next)
            if self._rewound_to != reply.next and self.state is SenderState.SENDING:
                self._rewind(reply.next)  # else a resend from there is under way

    def _progress(self, offset: int) -> None:
        """The receiver holds [0, offset)."""
        if offset == self.total:
            self.acked = offset
            self.state = SenderState.DONE
            return
        if offset <= self.acked:
            return
        if offset > self._hashed_to and not self._hash_to(offset):
            return  # the receiver kept bytes of an earlier sender of this transfer
        self.acked = offset
        self._next = max(self._next, offset)
        self._idle = self._stalls = 0
        self._rewound_to = None

    def _hash_to(self, offset: int) -> bool:
        """Extend the whole-snapshot digest to `offset` by reading the source; False (and
        the transfer failed) if it cannot be read."""
        try:
            while self._hashed_to < offset:
                length = min(self._chunk_bytes, offset - self._hashed_to)
                self._hasher.update(self._source.read(self._hashed_to, length))
                self._hashed_to += length
        except OSError as exc:
            self._fail(f"cannot read the snapshot: {exc}")
            return False
        return True

    def _restart(self, reason: str) -> None:
        """The receiver holds nothing of this transfer: send it again from offset 0."""
        if reason == NACK_DIGEST:
            self._restarts += 1
            if self._restarts > self._max_restarts:
                self._fail(FAIL_RESTARTS)
                return
        if self._rewound_to == 0 and self.acked == 0:
            return  # already sending again from the start
        self.acked = 0
        self._rewind(0)

    def _rewind(self, offset: int) -> None:
        self._next = offset
        self._all_sent = False
        self._rewound_to = offset
        self._idle = 0
        self.stats["resends"] += 1

    def _fail(self, why: str) -> None:
        self.state = SenderState.FAILED
        self.failure = why

    def __repr__(self) -> str:
        return (f"SnapshotSender({self.frm}->{self.to}, term {self.term}, index {self.index}, "
                f"{self.acked}/{self.total} acked, {self.state.value})")


# ---------------------------------------------------------------------------------------------
# One leader's senders


class SnapshotOutbox:
    """A group leader's snapshot streams, at most one per follower.

    `start` on each SnapshotRequest in a Ready; `on_reply` for each reply payload; `tick`
    on each tick; after each of these, send what `poll` returns and report what `finished`
    returns to the Node (`node.report_snapshot(to, success)`)."""

    def __init__(self, **sender_options: int) -> None:
        self._options = sender_options
        self._senders: dict[int, SnapshotSender] = {}

    def start(self, msg: SnapshotRequest,
              source: SnapshotSource | None = None) -> SnapshotSender:
        """The sender for `msg`: the one under way if it streams the same transfer (the
        Node repeats a SnapshotRequest when it hears nothing), else a new one that
        replaces (cancels) the follower's previous stream. A `source` not used is closed."""
        current = self._senders.get(msg.to)
        if (current is not None and not current.finished and current.frm == msg.frm
                and (current.term, current.index) == (msg.term, msg.snapshot.index)):
            if source is not None:
                source.close()
            return current
        if current is not None:
            current.cancel()
            current.close()
        sender = SnapshotSender.from_request(msg, source, **self._options)
        self._senders[msg.to] = sender
        return sender

    def on_reply(self, peer_id: int, payload: object) -> bool:
        """Route a reply from `peer_id` to its stream; False if none takes it. Raises
        SnapshotPayloadError if it does not decode."""
        sender = self._senders.get(peer_id)
        if sender is None:
            reply_from_wire(payload)  # still check it: garbage is an error either way
            return False
        return sender.on_reply(payload)

    def tick(self) -> None:
        for sender in self._senders.values():
            sender.tick()

    def poll(self) -> list[tuple[int, dict[str, Any]]]:
        """(follower, payload) pairs to send now."""
        return [(to, p) for to, sender in self._senders.items() for p in sender.poll()]

    def finished(self) -> list[tuple[int, bool]]:
        """(follower, success) for each stream that ended since the last call; their
        senders are closed and forgotten."""
        done = [(to, s) for to, s in self._senders.items() if s.finished]
        for to, sender in done:
            del self._senders[to]
            sender.close()
            if sender.state is SenderState.FAILED:
                log.warning("raft: snapshot %d to node %d failed: %s", sender.index, to,
                            sender.failure)
        return [(to, s.state is SenderState.DONE) for to, s in done]

    def cancel(self, to: int) -> None:
        """Stop the stream to `to`, if any (the Node no longer wants it sent: its progress
        left the snapshot state, or the follower was removed); close its source."""
        sender = self._senders.pop(to, None)
        if sender is not None:
            sender.cancel()
            sender.close()

    def cancel_all(self) -> None:
        """Stop every stream (this node no longer leads); close their sources."""
        for sender in self._senders.values():
            sender.cancel()
            sender.close()
        self._senders.clear()

    def senders(self) -> Sequence[SnapshotSender]:
        return list(self._senders.values())
