"""A group's snapshot transfers: a leader streams, a follower receives, in chunks.

The Node asks for InstallSnapshot with a SnapshotRequest carrying the whole snapshot; the
host does not send that message. It hands it to the group's `SnapshotTransfers`, which
streams it as chunk payloads of the "raft.snap" service (core/raft/snapshot_stream.py: a
window of chunks, acks, resends), and the follower's transfers write them to a temporary
file in the group's directory as they arrive, verify the whole, and step the completed
snapshot into its Node as if it had come in one message, its data naming the received
file; if the Node takes it, the file is handed over (the storage renames it into place
when the usual Ready path persists it, then the machine restores from it), else removed.
A leader's sender reads its snapshot file one chunk at a time. The outcome of a stream is
reported to the leader's Node with `report_snapshot`, as a sent message was before.

The host calls, for one group: `start` for each SnapshotRequest of a Ready, `on_payload` for
each payload received, `tick` on ticks while `active`, and after each of them `drain`, which
returns the payloads to send and reports finished streams to the Node.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from core.raft.messages import SnapshotRequest
from core.raft.node import Node
from core.raft.snapshot_file import SnapshotFile
from core.raft.snapshot_stream import (
    SnapshotOutbox,
    SnapshotPayloadError,
    SnapshotReceiver,
)

__all__ = ["SNAPSHOT_SERVICE", "SnapshotTransfers"]

log = logging.getLogger("core.raft.group")

SNAPSHOT_SERVICE = "raft.snap"  # the core/rpc service of snapshot chunks and their replies
CHUNK = "chunk"
REPLIES = ("ack", "nack")


class SnapshotTransfers:
    """The snapshot streams of one group on this node (see the module header)."""

    def __init__(self, directory: Path, node_id: int) -> None:
        self.outbox = SnapshotOutbox()
        self.receiver = SnapshotReceiver(directory, node_id)
        self._replies: list[tuple[int, dict[str, Any]]] = []
        self._unsent: list[int] = []  # followers whose snapshot could not be opened
        self.stats = {"snapshots_streamed": 0, "snapshots_received": 0, "bad_payloads": 0}

    @property
    def active(self) -> bool:
        """A stream out or in is under way (it needs ticks)."""
        return bool(self.outbox.senders()) or self.receiver.receiving is not None

    def start(self, msg: SnapshotRequest) -> None:
        """Stream the snapshot of `msg` to `msg.to` (a repeat of one under way continues).
        If its file cannot be opened (a newer snapshot replaced it), the stream fails at
        once and the Node sends the newer one later."""
        try:
            self.outbox.start(msg)
        except (ValueError, OSError) as exc:
            log.warning("raft: snapshot %d for node %d not sent: %s", msg.snapshot.index,
                        msg.to, exc)
            self._unsent.append(msg.to)

    def on_payload(self, peer_id: int, payload: Any, node: Node) -> None:
        """A chunk, ack or nack from `peer_id`; a bad one is logged and dropped."""
        kind = payload.get("kind") if isinstance(payload, dict) else None
        try:
            if kind == CHUNK:
                reply, done = self.receiver.on_chunk(payload, node.term)
                self._replies.append((peer_id, reply))
                if done is not None:
                    node.step(done.to_request(node.id))
                    if _holds(node, done.path):
                        self.receiver.hand_over()  # the storage moves it into place
                    else:
                        self.receiver.release()
                    self.stats["snapshots_received"] += 1
            elif kind in REPLIES:
                self.outbox.on_reply(peer_id, payload)
            else:
                raise SnapshotPayloadError(f"unknown payload kind {kind!r}")
        except SnapshotPayloadError as exc:
            self.stats["bad_payloads"] += 1
            log.warning("raft: node %d drops a snapshot payload from node %d: %s", node.id,
                        peer_id, exc)

    def tick(self) -> None:
        self.outbox.tick()
        self.receiver.tick()

    def drain(self, node: Node) -> list[tuple[int, dict[str, Any]]]:
        """The payloads to send now; finished streams are reported to `node`."""
        out, self._replies = self._replies, []
        out += self.outbox.poll()
        for to in self._unsent:
            node.report_snapshot(to, False)
        self._unsent.clear()
        for to, ok in self.outbox.finished():
            self.stats["snapshots_streamed"] += int(ok)
            node.report_snapshot(to, ok)
        return out

    def leadership_lost(self) -> None:
        self.outbox.cancel_all()

    def close(self) -> None:
        self.outbox.cancel_all()
        self.receiver.close()


def _holds(node: Node, path: Path) -> bool:
    """Whether `node` took the snapshot in the file `path` (it waits to be persisted)."""
    pending = node.log.unstable.snapshot
    return (pending is not None and isinstance(pending.data, SnapshotFile)
            and pending.data.path == path)
