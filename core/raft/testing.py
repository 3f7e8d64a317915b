"""Test support for code built on core.raft (etcd-io/raft's rafttest in spirit).

- `InMemoryNetwork`: Raft nodes wired by a synchronous in-memory network (the `network` of
  etcd's raft_test.go), so a daemon's tests (the scheduler's, the dfs master's) can run
  their state machine on a real Raft group with partitions and dropped messages, without
  sockets, clocks or threads. Deterministic: each node's rng is seeded from `seed`.
- `SafetyChecker`: checks Raft's safety properties over everything a simulation observes
  (tests/raftsim.py feeds it after every input of every node).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol

from core.raft.config import Config
from core.raft.log import MemoryStorage, Storage
from core.raft.messages import NONE, Entry, EntryType, Message
from core.raft.node import Node
from core.raft.ready import Ready, Role

__all__ = ["InMemoryNetwork", "PersistingStorage", "SafetyChecker"]


class PersistingStorage(Storage, Protocol):
    """A Storage that carries out step 1 of the Ready loop (MemoryStorage, DiskStorage)."""

    def persist(self, ready: Ready) -> None: ...


class InMemoryNetwork:
    """Nodes wired by a lossless, in-order network that tests drive step by step.

    `deliver()` carries out every node's Ready (persist, send, apply, advance) and delivers
    messages until none is left, except those the test drops: `isolate`, `cut` and
    `drop_if` filters. `applied[id]` lists the entries each node applied.
    """

    def __init__(self, ids: tuple[int, ...] = (1, 2, 3), seed: int = 0,
                 storages: dict[int, PersistingStorage] | None = None,
                 **config: object) -> None:
        self.config = config
        self.seed = seed
        self.storages: dict[int, PersistingStorage] = {}
        self.nodes: dict[int, Node] = {}
        self.applied: dict[int, list[Entry]] = {}
        self.read_states: dict[int, list[tuple[int, bytes]]] = {}
        self.sent: list[Message] = []
        self.cut_pairs: set[tuple[int, int]] = set()
        self.filters: list[Callable[[Message], bool]] = []
        for node_id in ids:
            self.start(node_id, ids, (storages or {}).get(node_id))

    def start(self, node_id: int, peers: tuple[int, ...],
              storage: PersistingStorage | None = None, **overrides: object) -> Node:
        """(Re)start a node on `storage` (default: its existing storage, or a new one)."""
        storage = storage or self.storages.get(node_id) or MemoryStorage()
        settings = {**self.config, **overrides}
        config = Config(id=node_id, peers=peers, **settings)  # type: ignore[arg-type]
        node = Node(config, storage, random.Random(self.seed * 1000 + node_id))
        self.storages[node_id] = storage
        self.nodes[node_id] = node
        self.applied.setdefault(node_id, [])
        self.read_states.setdefault(node_id, [])
        return node

    def crash(self, node_id: int) -> None:
        del self.nodes[node_id]

    def isolate(self, node_id: int) -> None:
        for other in list(self.storages):
            if other != node_id:
                self.cut(node_id, other)

    def cut(self, a: int, b: int) -> None:
        self.cut_pairs |= {(a, b), (b, a)}

    def recover(self) -> None:
        self.cut_pairs.clear()
        self.filters.clear()

    def drop_if(self, predicate: Callable[[Message], bool]) -> None:
        """Drop every message for which `predicate(m)` is true (until `recover`)."""
        self.filters.append(predicate)

    def process(self, node_id: int) -> list[Message]:
        """Carry out the node's Readies; returns the messages it sent (not yet delivered)."""
        node, storage = self.nodes[node_id], self.storages[node_id]
        out: list[Message] = []
        while node.has_ready():
            rd = node.ready()
            storage.persist(rd)
            out.extend(rd.messages)
            self.applied[node_id].extend(rd.committed_entries)
            self.read_states[node_id].extend((rs.index, rs.ctx) for rs in rd.read_states)
            node.advance(rd)
        return out

    def deliver(self, msgs: Iterable[Message] = (), max_messages: int = 100_000) -> int:
        """Deliver `msgs`, then run until quiet; returns the number of messages delivered."""
        queue: deque[Message] = deque(msgs)
        for node_id in list(self.nodes):
            queue.extend(self.process(node_id))
        delivered = 0
        while queue and delivered < max_messages:
            m = queue.popleft()
            self.sent.append(m)
            if m.to not in self.nodes or (m.frm, m.to) in self.cut_pairs:
                continue
            if any(f(m) for f in self.filters):
                continue
            delivered += 1
            self.nodes[m.to].step(m)
            queue.extend(self.process(m.to))
            for node_id in list(self.nodes):
                queue.extend(self.process(node_id))
        return delivered

    def tick(self, node_id: int | None = None, times: int = 1) -> None:
        """Tick one node (or all) `times` times, delivering after each tick."""
        for _ in range(times):
            for nid in ([node_id] if node_id is not None else list(self.nodes)):
                self.nodes[nid].tick()
            self.deliver()

    def elect(self, node_id: int) -> Node:
        """Make `node_id` campaign and deliver everything; returns the node."""
        self.nodes[node_id].campaign()
        self.deliver()
        return self.nodes[node_id]

    def leader(self) -> Node | None:
        leaders = [n for n in self.nodes.values() if n.role is Role.LEADER]
        return max(leaders, key=lambda n: n.term) if leaders else None

    def propose(self, node_id: int, data: bytes) -> int:
        index = self.nodes[node_id].propose(data)
        self.deliver()
        return index

    def data_applied(self, node_id: int) -> list[bytes]:
        return [e.data for e in self.applied[node_id] if e.type is EntryType.NORMAL]


class SafetyChecker:
    """Global knowledge of a simulated cluster, checking Raft's safety properties.

    `fail(message)` must raise. What is checked, and when the caller reports it:
    - Election Safety and Leader Completeness: `on_leader` when a node becomes leader;
    - Log Matching: `on_entries` with every batch a node persists (the node's log already
      holds them): an (index, term) pair always names the same entry and the same term
      before it, so equal pairs imply equal prefixes by induction;
    - committed entries never change: `on_commit` after every Ready;
    - State Machine Safety: `on_apply` / `on_restore` with a digest of the application
      state after each entry or snapshot; applying is gap-free and never goes backwards;
    - durability: `on_hard_state` with every persisted hard state (a vote never changes
      within a term, terms never decrease).
    """

    def __init__(self, fail: Callable[[str], None]) -> None:
        self.fail = fail
        self.leaders: dict[int, int] = {}  # term -> leader id
        self.entries: dict[tuple[int, int], tuple[int, bytes, int]] = {}  # type, data, prev t
        self.committed: dict[int, int] = {}  # index -> term, for every entry known committed
        self.max_commit = 0
        self.applied: dict[int, tuple[int, object]] = {}  # index -> (term, state after it)
        self.persisted: dict[int, tuple[int, int]] = {}  # node -> (term, vote) on disk

    def on_leader(self, node: Node) -> None:
        known = self.leaders.setdefault(node.term, node.id)
        if known != node.id:
            self.fail(f"Election Safety: nodes {known} and {node.id} both lead term {node.term}")
        first = node.log.first_index()
        for index, term in self.committed.items():
            if index >= first and node.log.term(index) != term:
                self.fail(f"Leader Completeness: leader {node.id} (term {node.term}) lacks "
                          f"committed entry {index} of term {term}")

    def on_entries(self, node: Node, entries: Iterable[Entry]) -> None:
        for entry in entries:
            prev_term = node.log.term(entry.index - 1)
            if prev_term is None:
                prev_term = -1  # compacted away; not comparable
            key = (entry.index, entry.term)
            seen = self.entries.get(key)
            if seen is None:
                self.entries[key] = (entry.type, entry.data, prev_term)
                continue
            if seen[0] != entry.type or seen[1] != entry.data:
                self.fail(f"Log Matching: node {node.id} holds a different entry at {key}")
            if prev_term >= 0 and seen[2] >= 0 and seen[2] != prev_term:
                self.fail(f"Log Matching: node {node.id} entry {key} follows term {prev_term}, "
                          f"another log has term {seen[2]} before it")

    def on_commit(self, node: Node, recorded: int) -> int:
        """Record the entries `node` has committed after index `recorded`; returns the new
        recorded index (the caller keeps one per node life)."""
        commit = node.log.committed
        for index in range(max(recorded + 1, node.log.first_index()), commit + 1):
            term = node.log.term(index)
            if term is None:
                continue
            known = self.committed.setdefault(index, term)
            if known != term:
                self.fail(f"commit: node {node.id} committed term {term} at {index}, "
                          f"another node committed term {known}")
        self.max_commit = max(self.max_commit, commit)
        return max(recorded, commit)

    def on_apply(self, node_id: int, entry: Entry, applied_before: int, state: object) -> None:
        """Node `node_id`, whose state machine was at `applied_before`, applied `entry` and
        reached `state` (a digest of the whole application state)."""
        if entry.index != applied_before + 1:
            self.fail(f"apply: node {node_id} applied {entry.index} after {applied_before}")
        known = self.applied.setdefault(entry.index, (entry.term, state))
        if known != (entry.term, state):
            self.fail(f"State Machine Safety: node {node_id} applied term {entry.term} at "
                      f"{entry.index}, others term {known[0]} (or a different history)")

    def on_restore(self, node_id: int, index: int, state: object, applied_before: int) -> None:
        """Node `node_id` restored a snapshot at `index` with application state `state`."""
        if index <= applied_before:
            self.fail(f"un-apply: node {node_id} at {applied_before} got snapshot {index}")
        known = self.applied.get(index)
        if known is not None and known[1] != state:
            self.fail(f"State Machine Safety: snapshot {index} on node {node_id} differs "
                      "from the applied history")

    def on_hard_state(self, node_id: int, term: int, vote: int) -> None:
        old_term, old_vote = self.persisted.get(node_id, (0, NONE))
        if term < old_term:
            self.fail(f"durability: node {node_id} term went back from {old_term} to {term}")
        if term == old_term and old_vote != NONE and vote != old_vote:
            self.fail(f"durability: node {node_id} changed its vote in term {term} "
                      f"from {old_vote} to {vote}")
        self.persisted[node_id] = (term, vote)
