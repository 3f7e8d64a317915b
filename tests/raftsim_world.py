"""The world of tests/raftsim.py's simulations: a schedule's parameters, the replicated
state machine (a hash chain), simulated hosts (durable MemoryStorage, volatile Node), the
fake network and the failure report that names the seed.

Split from tests/raftsim.py (which holds the cluster and re-exports these names) so both
the single-group simulation and the multi-group one (tests/raftsim_multi.py) share them.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from dataclasses import dataclass, replace
from typing import Protocol

import msgpack
import xxhash

from core.raft import Config, Entry, MemoryStorage, Message, Node

__all__ = ["GroupSetup", "Link", "Network", "Params", "SafetyFail", "SafetyViolation",
           "SimNode", "StateMachine", "chain_step"]


class SafetyViolation(AssertionError):
    """A Raft property failed; the message carries the seed and the recent trace."""


@dataclass(frozen=True)
class Params:
    """One schedule, entirely derived from its seed (see `from_seed`)."""

    seed: int
    nodes: int
    election_tick: int
    heartbeat_tick: int
    pre_vote: bool
    check_quorum: bool
    max_entries_per_msg: int
    max_size_per_msg: int
    max_inflight: int
    max_committed: int
    loss: float
    duplicate: float
    max_delay: int
    ticks: int
    heal_ticks: int
    p_propose: float
    p_read: float
    p_crash: float
    p_restart: float
    p_partition: float
    p_heal: float
    p_snapshot: float
    p_conf: float
    p_transfer: float
    max_voters: int
    persistent_sm: bool  # state machines survive crashes; restarts pass Config.applied

    @classmethod
    def from_seed(cls, seed: int, nodes: int | None = None, ticks: int | None = None) -> Params:
        rng = random.Random(f"params-{seed}")
        n = nodes if nodes is not None else rng.choice((3, 3, 5))
        election = rng.choice((4, 6, 10))
        return cls(
            seed=seed,
            nodes=n,
            election_tick=election,
            heartbeat_tick=rng.choice((1, 2, 2)),
            pre_vote=rng.random() < 0.75,
            check_quorum=rng.random() < 0.75,
            max_entries_per_msg=rng.choice((1, 3, 64)),
            max_size_per_msg=rng.choice((40, 200, 4096)),
            max_inflight=rng.choice((1, 2, 8)),
            max_committed=rng.choice((40, 4096)),
            loss=rng.choice((0.0, 0.02, 0.1, 0.25)),
            duplicate=rng.choice((0.0, 0.05)),
            max_delay=rng.choice((0, 1, 2, 4)),
            ticks=ticks if ticks is not None else rng.randint(40, 120),
            heal_ticks=60 * election,
            p_propose=rng.choice((0.2, 0.6, 1.0)),
            p_read=rng.choice((0.0, 0.1, 0.3)),
            p_crash=rng.choice((0.0, 0.01, 0.04)),
            p_restart=rng.choice((0.05, 0.2)),
            p_partition=rng.choice((0.0, 0.01, 0.04)),
            p_heal=rng.choice((0.05, 0.15)),
            p_snapshot=rng.choice((0.0, 0.05, 0.2)),
            p_conf=rng.choice((0.0, 0.0, 0.03, 0.08)),
            p_transfer=rng.choice((0.0, 0.02, 0.06)),
            max_voters=n + 2,
            persistent_sm=rng.random() < 0.3,
        )


class StateMachine:
    """The replicated application: a hash chain over every applied entry."""

    __slots__ = ("index", "chain")

    def __init__(self, index: int = 0, chain: int = 0) -> None:
        self.index = index
        self.chain = chain

    def apply(self, entry: Entry) -> None:
        self.index = entry.index
        self.chain = chain_step(self.chain, entry)

    def dump(self) -> bytes:
        return msgpack.packb([self.index, self.chain])

    @classmethod
    def load(cls, data: bytes) -> StateMachine:
        if not data:
            return cls()
        index, chain = msgpack.unpackb(data)
        return cls(index, chain)


def chain_step(chain: int, entry: Entry) -> int:
    head = chain.to_bytes(8, "little") + entry.term.to_bytes(8, "little")
    return xxhash.xxh64_intdigest(head + bytes((entry.type,)) + entry.data)


class SimNode:
    """A simulated host: durable storage survives crashes, the Node and state machine do
    not."""

    def __init__(self, node_id: int, config: Config) -> None:
        self.id = node_id
        self.config = config
        self.storage = MemoryStorage()
        self.node: Node | None = None
        self.sm = StateMachine()
        self.decommissioned = False  # removed from the cluster and shut down for good
        self.recorded_commit = 0  # highest commit index reported to the checker
        self.synced_hard_state = self.storage.initial_state()  # what an fsync made durable

    def start(self, seed: int, persistent_sm: bool = False) -> None:
        """Start (or restart) the node. A volatile state machine is rebuilt from the stored
        snapshot; a persistent one is kept and its index passed as Config.applied."""
        config = self.config
        if persistent_sm:
            config = replace(config, applied=self.sm.index)
        else:
            self.sm = StateMachine.load(self.storage.snapshot().data)
        self.node = Node(config, self.storage, random.Random(seed))
        self.recorded_commit = 0

    def crash(self, lose_unsynced: bool = False) -> None:
        """Lose the volatile state; with `lose_unsynced`, also a hard state that was written
        without fsync (Ready.must_sync false: only the commit index changed)."""
        self.node = None
        if lose_unsynced:
            self.storage.set_hard_state(self.synced_hard_state)


class Network:
    """Messages in flight, keyed by delivery tick; drops, duplicates and partitions."""

    def __init__(self, rng: random.Random, params: Params) -> None:
        self.rng = rng
        self.loss = params.loss
        self.duplicate = params.duplicate
        self.max_delay = params.max_delay
        self._queue: list[tuple[int, int, Message]] = []
        self._seq = 0
        self.group: dict[int, int] = {}  # node -> partition group; absent: group 0

    def send(self, m: Message, now: int) -> None:
        rng = self.rng
        copies = 2 if self.duplicate and rng.random() < self.duplicate else 1
        for _ in range(copies):
            if self.loss and rng.random() < self.loss:
                continue
            delay = rng.randint(0, self.max_delay) if self.max_delay else 0
            self._seq += 1
            heapq.heappush(self._queue, (now + delay, self._seq, m))

    def pop_due(self, now: int) -> Message | None:
        while self._queue and self._queue[0][0] <= now:
            m = heapq.heappop(self._queue)[2]
            if self.group.get(m.frm, 0) == self.group.get(m.to, 0):
                return m
        return None

    def heal(self) -> None:
        self.group = {}


class SafetyFail:
    """Raises SafetyViolation with the seed, the reproduction command and the trace."""

    def __init__(self, seed: int, trace: deque[tuple[object, ...]],
                 test_file: str = "tests/test_raft_sim.py") -> None:
        self.seed = seed
        self.trace = trace
        self.test_file = test_file

    def __call__(self, what: str) -> None:
        lines = "\n".join(" ".join(str(x) for x in event) for event in self.trace)
        raise SafetyViolation(f"{what}\nseed {self.seed}: reproduce with RAFT_SEED={self.seed} "
                              f"pytest {self.test_file}\nlast events:\n{lines}")


class Link(Protocol):
    """Where a cluster's nodes send: `Network`, or one group's link into a shared one."""

    def send(self, m: Message, now: int) -> None: ...


@dataclass(frozen=True)
class GroupSetup:
    """A Cluster that is one group of a multi-group simulation (tests/raftsim_multi.py):
    the founding voters among the simulated hosts, the shared link, trace and failure
    report, the hosts a conf change may add, and the group's tag in the trace."""

    founders: tuple[int, ...]
    link: Link
    trace: deque[tuple[object, ...]]
    fail: SafetyFail
    hosts: tuple[int, ...]
    quiesce: bool
    tag: str
