"""`shardstore admin`'s replica actions: `add-node --replica-of` and the replica moves of
`remove-node` (SHARDSTORE.REPLICA, shardstore/replicas.py), with a progress bar.

Strategy: one shard at a time, ask for the change, then poll SHARDSTORE.SHARDS until the
shard records none under way, showing which node is joining or leaving and for how long.
The changes run inside the cluster (each shard's leader drives its own), so a killed
admin leaves them going; the same command run again asks for nothing twice (a change
already under way for the node is waited for, a shard already done is skipped) and goes
on with the rest. Before anything changes, `plan_leave` checks that every replica of the
leaving node has somewhere to go, so a refusal comes first.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from shardstore.admin_check import field_of
from shardstore.admin_retry import _run

__all__ = ["ERR_NOT_THIS_KEYSPACE", "ERR_NO_ROOM", "ERR_UNKNOWN_SHARDS", "ShardRecord",
           "add_replicas", "leave_replicas", "parse_replica_of", "plan_leave", "shard_records"]

POLL_S = 0.2
CHANGE_TIMEOUT_S = 600.0  # one shard's change with no end in sight for this long: give up
BAR_WIDTH = 30
ALL = "all"
ERR_UNKNOWN_SHARDS = "--replica-of names shards {} that keyspace {!r} does not have (it has {})"
ERR_REPLICA_OF = "--replica-of wants `all` or shard ids, comma-separated (got {!r})"
ERR_NOT_THIS_KEYSPACE = "--node serves keyspace {!r}, not {!r}: name a node of {!r}"
ERR_NO_ROOM = ("shard {} keeps {} replicas and keyspace {!r} has no other node to take the "
               "one on node {} (it would be left with {} nodes): add a node first")


@dataclass
class ShardRecord:
    """One row of SHARDSTORE.SHARDS."""

    shard: int
    members: list[int]
    slots: int
    replicas: int
    joining: int
    leaving: int


def shard_records(client: Any) -> list[ShardRecord]:
    """SHARDSTORE.SHARDS of the node `client` talks to, parsed."""
    return [ShardRecord(int(field_of(s, "shard")), [int(m) for m in field_of(s, "members")],
                        int(field_of(s, "slots")),
                        int(field_of(s, "replicas") or len(field_of(s, "members"))),
                        int(field_of(s, "joining") or 0), int(field_of(s, "leaving") or 0))
            for s in client.execute_command("SHARDSTORE.SHARDS")]


def parse_replica_of(text: str, shards: Sequence[int], keyspace: str) -> list[int]:
    """`--replica-of`'s shard ids: `all` (every shard of the keyspace) or a comma list.
    ValueError naming the problem otherwise."""
    if text.strip().lower() == ALL:
        return sorted(shards)
    try:
        chosen = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ValueError(ERR_REPLICA_OF.format(text)) from None
    if not chosen:
        raise ValueError(ERR_REPLICA_OF.format(text))
    unknown = [s for s in chosen if s not in shards]
    if unknown:
        raise ValueError(ERR_UNKNOWN_SHARDS.format(unknown, keyspace, sorted(shards)))
    return chosen


def plan_leave(records: Sequence[ShardRecord], nodes: Sequence[int], node_id: int,
               keyspace: str) -> tuple[list[int], list[ShardRecord]]:
    """(shards whose replica on `node_id` can move or go, shards where it cannot: every
    other node of the keyspace is a member already and it keeps its replica count)."""
    movable, stuck = [], []
    for record in records:
        if node_id not in record.members:
            continue
        free = [n for n in nodes if n not in record.members]
        if record.leaving == node_id or len(record.members) - 1 >= record.replicas or free:
            movable.append(record.shard)
        else:
            stuck.append(record)
    return movable, stuck


def add_replicas(client: Any, keyspace: str, node_id: int, which: str,
                 stream: TextIO) -> list[int]:
    """Node `node_id` joins `keyspace` with no shard of its own and becomes a replica of
    the shards `which` names (`parse_replica_of`); the shard ids."""
    mine = [_text(field_of(k, "name")) for k in client.execute_command("KEYSPACE.LIST")
            if int(field_of(k, "mine"))]
    if mine != [keyspace]:  # SHARDSTORE.SHARDS lists the answering node's keyspace
        serves = mine[0] if mine else ""
        raise ValueError(ERR_NOT_THIS_KEYSPACE.format(serves, keyspace, keyspace))
    client.execute_command("KEYSPACE.ADDNODE", keyspace, node_id, "REPLICA")
    records = {r.shard: r for r in shard_records(client)}
    chosen = parse_replica_of(which, list(records), keyspace)
    bar = ReplicaBar(len(chosen), f"replicas added on node {node_id}", stream)
    for done, sid in enumerate(chosen):
        _ask(client, sid, node_id, "ADD")
        _wait_change(client, sid, lambda text, done=done: bar.show(done, text))
        bar.show(done + 1, f"shard {sid} done")
    bar.close()
    return chosen


def leave_replicas(client: Any, shards: Sequence[int], node_id: int,
                   stream: TextIO) -> int:
    """Move (or drop) node `node_id`'s replica of each of `shards`, one at a time; how
    many changed."""
    bar = ReplicaBar(len(shards), f"replicas moved off node {node_id}", stream)
    for done, sid in enumerate(shards):
        _ask(client, sid, node_id, "REMOVE")
        _wait_change(client, sid, lambda text, done=done: bar.show(done, text))
        bar.show(done + 1, f"shard {sid} done")
    bar.close()
    return len(shards)


def _ask(client: Any, sid: int, node_id: int, action: str) -> None:
    """SHARDSTORE.REPLICA `action` sid node_id, unless done or under way already."""
    def attempt(node: Any) -> None:
        record = next((r for r in shard_records(node) if r.shard == sid), None)
        if record is None:
            return
        under_way = node_id in (record.joining, record.leaving)
        done = (node_id in record.members) == (action == "ADD")
        if under_way or done:
            return
        node.execute_command("SHARDSTORE.REPLICA", action, sid, node_id)

    _run(client, attempt)


def _wait_change(client: Any, sid: int, show: Any) -> None:
    """Poll until shard `sid` has no change under way, showing what it waits for."""
    started = time.monotonic()
    while True:
        record = next((r for r in shard_records(client) if r.shard == sid), None)
        if record is None or not (record.joining or record.leaving):
            return
        elapsed = time.monotonic() - started
        if elapsed > CHANGE_TIMEOUT_S:
            raise ValueError(f"shard {sid}'s replica change made no end in "
                             f"{CHANGE_TIMEOUT_S:.0f}s")
        parts = [f"node {record.joining} joining" if record.joining else "",
                 f"node {record.leaving} leaving" if record.leaving else ""]
        show(f"shard {sid}: {', '.join(p for p in parts if p)} ({elapsed:.0f}s)")
        time.sleep(POLL_S)


class ReplicaBar:
    """A progress bar of shards done on `stream`: redrawn in place on a terminal, else one
    line whenever its text changes."""

    def __init__(self, total: int, what: str, stream: TextIO) -> None:
        self.total = max(1, total)
        self.what = what
        self.stream = stream
        self.tty = stream.isatty()
        self.last = ""

    def show(self, done: int, text: str) -> None:
        filled = BAR_WIDTH * done // self.total
        line = (f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{self.total} "
                f"{self.what}: {text}")
        if self.tty:
            self.stream.write("\r" + line)
        elif _steady(line) != _steady(self.last):
            self.stream.write(line + "\n")
        self.last = line
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


def _steady(line: str) -> str:
    """The line without its elapsed seconds (a pipe gets a line per change, not per poll)."""
    head, sep, _ = line.rpartition(" (")
    return head if sep else line


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
