"""The RESP-on-Raft service's part of a group's replicated state machine, sans I/O: the
node address book, carried in the log beside the daemon's own entries and in its snapshots.

Strategy: `ServiceMachine` wraps the daemon's `StateMachine` and is what the Raft driver
calls. Entries whose data starts with SERVICE_TAG (0xC1, a byte msgpack never writes, so no
msgpack entry of a daemon starts with it) are the service's: a msgpack map with an "op";
today only OP_CLIENT, "node `id` serves clients at `addr`" ("" forgets it). Every other
entry goes to the daemon's `apply`, in log order, in runs between service entries; the
results come back in the entries' order (None for a service entry).

A snapshot is SNAPSHOT_MAGIC, a 4-byte big-endian length, the msgpack service state (the
address book) and then the daemon's blob, untouched. A blob without the magic is a
snapshot written before the service existed: the book starts empty and the whole blob goes
to the daemon's `restore` (which may hand over an old book through `merge_legacy`). When
the daemon's snapshot hook returns an encoder (to encode off the event loop), the wrapper
returns an encoder too, over a copy of the book taken at capture time; when it returns a
core StreamedSnapshot (written in pieces), the wrapper streams too, the book first. The
daemon's `restore` takes bytes here (a streamed daemon restores through its own group).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import msgpack

from core.raft.snapshot_file import SnapshotSink
from core.raft.snapshot_hooks import StreamedSnapshot

__all__ = [
    "ERR_BAD_ENTRY", "OP_CLIENT", "SERVICE_TAG", "SNAPSHOT_MAGIC", "AddressBook", "ServiceMachine",
    "StateMachine", "encode_client",
]

SERVICE_TAG = b"\xc1"
SNAPSHOT_MAGIC = b"\xc1RSVC1"
_LENGTH = struct.Struct(">I")
OP_CLIENT = "client"
ERR_BAD_ENTRY = "ERR bad service entry: {!r}"

Entries = Sequence[tuple[int, bytes]]
SnapshotResult = bytes | Callable[[], bytes] | StreamedSnapshot


class StateMachine(Protocol):
    """What a daemon hands the service: the Raft driver's three hooks, for its entries only.

    `apply(entries)` gets [(index, data), ...] in log order and returns one result per
    entry (a str result is an error text the client gets as the reply); `snapshot()`
    returns the blob or a zero-argument encoder of a view it captured; `restore(blob)`
    replaces the state with a blob `snapshot()` made."""

    def apply(self, entries: Entries) -> Sequence[Any] | None: ...

    def snapshot(self) -> SnapshotResult: ...

    def restore(self, blob: bytes) -> None: ...


def encode_client(node_id: int, address: str) -> bytes:
    """The service entry "node `node_id` serves clients at `address`" ("" forgets it)."""
    return SERVICE_TAG + msgpack.packb({"op": OP_CLIENT, "id": node_id, "addr": address})


class AddressBook:
    """Node id -> the node's client (RESP) address `host:port`, as the group applied it."""

    def __init__(self) -> None:
        self.clients: dict[int, str] = {}

    def get(self, node_id: int) -> str | None:
        """The client address of `node_id`, or None if the book does not know it."""
        return self.clients.get(node_id)

    def set(self, node_id: int, address: str) -> None:
        """Record `address` for `node_id`; "" forgets the node."""
        if address:
            self.clients[node_id] = address
        else:
            self.clients.pop(node_id, None)

    def merge_legacy(self, updates: Mapping[int, str]) -> None:
        """Apply address updates a daemon read from its own old entries or snapshot (the
        book lived in the daemon's state before): `set` each, in order."""
        for node_id, address in updates.items():
            self.set(int(node_id), address)

    def as_wire(self) -> dict[str, str]:
        """The book with string keys (msgpack maps of the snapshot, CLUSTER.INFO)."""
        return {str(k): v for k, v in sorted(self.clients.items())}


class ServiceMachine:
    """The driver's apply/snapshot/restore hooks: service entries here, the rest to the
    daemon's `machine` (see the module header)."""

    def __init__(self, machine: StateMachine, book: AddressBook | None = None) -> None:
        self.machine = machine
        self.book = book or AddressBook()

    def apply(self, entries: Entries) -> list[Any]:
        """One result per entry, in order; runs of daemon entries go to it together."""
        results: list[Any] = []
        run: list[tuple[int, bytes]] = []
        for index, data in entries:
            if data[:1] != SERVICE_TAG:
                run.append((index, data))
                continue
            self._flush(run, results)
            run = []
            results.append(self._apply_service(data))
        self._flush(run, results)
        return results

    def _flush(self, run: list[tuple[int, bytes]], results: list[Any]) -> None:
        if not run:
            return
        out = self.machine.apply(run)
        results.extend(out if out is not None else [None] * len(run))

    def _apply_service(self, data: bytes) -> Any:
        try:
            entry = msgpack.unpackb(data[1:])
            if entry["op"] == OP_CLIENT:
                self.book.set(int(entry["id"]), str(entry["addr"]))
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
            return ERR_BAD_ENTRY.format(exc)
        return None

    def snapshot(self) -> SnapshotResult:
        """The daemon's snapshot with the book in front (an encoder or a stream if the
        daemon's is)."""
        head = self._head()
        inner = self.machine.snapshot()
        if isinstance(inner, StreamedSnapshot):
            stream = inner

            def write(out: SnapshotSink) -> None:
                out.write(head)
                stream.write(out)

            return StreamedSnapshot(write, stream.release)
        if callable(inner):
            encoder = inner
            return lambda: head + encoder()
        return head + inner

    def _head(self) -> bytes:
        state = msgpack.packb({"clients": self.book.as_wire()})
        return SNAPSHOT_MAGIC + _LENGTH.pack(len(state)) + state

    def restore(self, blob: bytes) -> None:
        """Restore the book and hand the daemon its part (see the module header)."""
        self.book.clients = {}
        if blob[:len(SNAPSHOT_MAGIC)] != SNAPSHOT_MAGIC:
            self.machine.restore(blob)
            return
        start = len(SNAPSHOT_MAGIC) + _LENGTH.size
        (length,) = _LENGTH.unpack_from(blob, len(SNAPSHOT_MAGIC))
        state = msgpack.unpackb(blob[start:start + length])
        self.book.merge_legacy({int(k): v for k, v in state.get("clients", {}).items()})
        self.machine.restore(blob[start + length:])
