"""Unit tests of core.raft's parts: wire format, Config, MemoryStorage, Ready contract,
flow control and membership bookkeeping."""

from __future__ import annotations

import inspect
import random

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.raft import (
    AppendRequest,
    AppendResponse,
    CompactedError,
    ConfChange,
    ConfChangeOp,
    Config,
    ConfigError,
    Entry,
    EntryType,
    HardState,
    HeartbeatRequest,
    HeartbeatResponse,
    MemoryStorage,
    Message,
    Node,
    RaftError,
    ReadIndexRequest,
    ReadIndexResponse,
    Snapshot,
    SnapshotRequest,
    Storage,
    TimeoutNow,
    UnavailableError,
    VoteRequest,
    VoteResponse,
    WireError,
    message_from_wire,
)
from core.raft.membership import Membership
from core.raft.progress import Inflights, Progress, ProgressState, quorum_value
from core.raft.testing import InMemoryNetwork

SAMPLES = [
    VoteRequest(frm=1, to=2, term=3, last_index=7, last_term=2, pre_vote=True),
    VoteResponse(frm=2, to=1, term=3, reject=False, pre_vote=True),
    AppendRequest(frm=1, to=2, term=3, prev_index=4, prev_term=2, commit=4,
                  entries=(Entry(5, 3, EntryType.NORMAL, b"x"), Entry(6, 3, EntryType.EMPTY))),
    AppendResponse(frm=2, to=1, term=3, index=4, reject=True, hint_index=2, hint_term=1),
    HeartbeatRequest(frm=1, to=2, term=3, commit=4, read_seq=9),
    HeartbeatResponse(frm=2, to=1, term=3, read_seq=9),
    SnapshotRequest(frm=1, to=2, term=3, snapshot=Snapshot(10, 2, (1, 2, 3), b"blob")),
    TimeoutNow(frm=1, to=2, term=3),
    ReadIndexRequest(frm=2, to=1, term=3, ctx=b"req-1"),
    ReadIndexResponse(frm=1, to=2, term=3, ctx=b"req-1", index=10),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_messages_round_trip_through_msgpack(message: object) -> None:
    wire = msgpack.packb(message.to_wire())  # type: ignore[attr-defined]
    assert message_from_wire(msgpack.unpackb(wire)) == message
    assert Message.from_wire(msgpack.unpackb(wire)) == message


def test_wire_format_is_pinned() -> None:
    assert SAMPLES[2].to_wire() == {
        "type": 3, "frm": 1, "to": 2, "term": 3, "prev_index": 4, "prev_term": 2,
        "entries": [[5, 3, 0, b"x"], [6, 3, 2, b""]], "commit": 4}


@pytest.mark.parametrize("wire", [
    [], {"type": 99}, {"type": "1"}, {"type": 8, "frm": 1, "to": 2},
    {"type": 8, "frm": 1, "to": 2, "term": -1},
    {"type": 8, "frm": 1, "to": 2, "term": 1, "extra": 0},
    {"type": 2, "frm": 1, "to": 2, "term": 1, "reject": 1, "pre_vote": False},
    {"type": 9, "frm": 1, "to": 2, "term": 1, "ctx": "text"},
    {"type": 3, "frm": 1, "to": 2, "term": 1, "prev_index": 0, "prev_term": 0, "commit": 0,
     "entries": [[1, 1, 7, b""]]},
    {"type": 7, "frm": 1, "to": 2, "term": 1, "snapshot": [1, 1, "voters", b""]},
])
def test_malformed_wire_messages_raise_wire_error(wire: object) -> None:
    with pytest.raises(WireError):
        message_from_wire(wire)  # type: ignore[arg-type]


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.binary() | st.text(),
                    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
                    max_leaves=10))
def test_arbitrary_wire_input_never_crashes_the_decoder(wire: object) -> None:
    try:
        message_from_wire(wire)  # type: ignore[arg-type]
    except WireError:
        pass


def test_conf_change_encoding() -> None:
    change = ConfChange(ConfChangeOp.REMOVE, 3, (1, 2))
    assert ConfChange.decode(change.encode()) == change
    with pytest.raises(WireError):
        ConfChange.decode(b"\x01")


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"id": 0}, "id"),
    ({"id": 1, "peers": (2, 3)}, "peers"),
    ({"id": 1, "peers": (1, 1)}, "duplicates"),
    ({"id": 1, "heartbeat_tick": 0}, "heartbeat_tick"),
    ({"id": 1, "election_tick": 1, "heartbeat_tick": 1}, "election_tick"),
    ({"id": 1, "max_inflight_msgs": 0}, "max_inflight_msgs"),
    ({"id": 1, "max_size_per_msg": 0}, "max_size_per_msg"),
    ({"id": 1, "applied": -1}, "applied"),
])
def test_config_validation_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        Config(**kwargs).validate()  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# MemoryStorage (etcd's storage.go semantics)


def memory_with(last: int) -> MemoryStorage:
    storage = MemoryStorage()
    storage.append([Entry(i, 1 + i // 4, data=b"%d" % i) for i in range(1, last + 1)])
    return storage


def test_memory_storage_is_a_storage() -> None:
    """Every method of the Storage protocol, with its parameters, and a fresh storage's
    answers: an empty log after index 0, no snapshot data, an empty hard state."""
    storage = MemoryStorage()
    for name in ("initial_state", "entries", "term", "first_index", "last_index", "snapshot"):
        expected = inspect.signature(getattr(Storage, name)).parameters
        assert list(inspect.signature(getattr(storage, name)).parameters) == list(expected)[1:]
    assert (storage.first_index(), storage.last_index(), storage.term(0)) == (1, 0, 0)
    assert storage.entries(1, 1) == []
    assert storage.snapshot().index == 0
    assert storage.initial_state().term == 0


def test_memory_storage_reads_and_errors() -> None:
    storage = memory_with(10)
    assert (storage.first_index(), storage.last_index()) == (1, 10)
    assert [e.index for e in storage.entries(3, 6)] == [3, 4, 5]
    assert len(storage.entries(1, 11, max_size=1)) == 1  # at least one entry
    assert storage.term(0) == 0 and storage.term(4) == 2
    with pytest.raises(UnavailableError):
        storage.entries(5, 12)
    with pytest.raises(UnavailableError):
        storage.term(11)
    storage.create_snapshot(6, (1, 2, 3), b"s")
    storage.compact(5)
    assert storage.first_index() == 6 and storage.term(5) == 2
    with pytest.raises(CompactedError):
        storage.entries(5, 7)
    with pytest.raises(CompactedError):
        storage.term(4)
    with pytest.raises(ValueError):
        storage.compact(8)  # beyond the snapshot
    with pytest.raises(ValueError):
        storage.create_snapshot(6, (), b"")  # not newer


def test_memory_storage_append_truncates_and_skips_compacted() -> None:
    storage = memory_with(10)
    storage.append([Entry(7, 9), Entry(8, 9)])
    assert storage.last_index() == 8 and storage.term(7) == 9
    storage.create_snapshot(5, (1,), b"")
    storage.compact(5)
    storage.append([Entry(i, 9) for i in range(3, 10)])  # 3..5 are covered: skipped
    assert (storage.first_index(), storage.last_index()) == (6, 9)
    with pytest.raises(RaftError):
        storage.append([Entry(20, 9)])  # a gap


def test_apply_snapshot_replaces_the_log_and_ignores_older_ones() -> None:
    storage = memory_with(10)
    storage.apply_snapshot(Snapshot(20, 5, (1, 2), b"x"))
    assert (storage.first_index(), storage.last_index(), storage.term(20)) == (21, 20, 5)
    storage.apply_snapshot(Snapshot(15, 5, (1, 2), b"old"))
    assert storage.snapshot().index == 20


# ---------------------------------------------------------------------------------------------
# The Ready contract


def lone_node() -> tuple[Node, MemoryStorage]:
    storage = MemoryStorage()
    return Node(Config(id=1, peers=(1,)), storage, random.Random(0)), storage


def test_first_ready_of_a_founder_persists_and_applies_the_bootstrap_entry() -> None:
    node, storage = lone_node()
    rd = node.ready()
    assert rd.hard_state == HardState(1, 0, 1) and rd.must_sync
    assert [(e.index, e.term, e.type) for e in rd.entries] == [(1, 1, EntryType.CONF_CHANGE)]
    assert rd.committed_entries == rd.entries and rd.truncate_from == 1
    storage.persist(rd)
    node.advance(rd)
    assert not node.has_ready() and node.applied == 1


def test_ready_must_be_advanced_before_the_next_one() -> None:
    node, storage = lone_node()
    rd = node.ready()
    with pytest.raises(RaftError):
        node.ready()
    with pytest.raises(RaftError):
        node.advance(type(rd)())
    storage.persist(rd)
    node.advance(rd)
    node.campaign()
    assert node.has_ready()


def test_single_node_commits_its_own_proposals_and_reports_role_changes() -> None:
    node, storage = lone_node()
    seen = []
    node.campaign()
    index = node.propose(b"solo")
    while node.has_ready():
        rd = node.ready()
        storage.persist(rd)
        seen.append(rd.soft_state)
        node.advance(rd)
    assert any(s is not None and s.lead == 1 for s in seen)
    assert node.committed == index == node.applied


def test_commit_only_change_does_not_require_fsync() -> None:
    storage = MemoryStorage()
    node = Node(Config(id=2, peers=(1, 2, 3)), storage, random.Random(0))
    node.step(AppendRequest(frm=1, to=2, term=2, prev_index=1, prev_term=1,
                            entries=(Entry(2, 2, EntryType.EMPTY),), commit=1))
    rd = node.ready()
    assert rd.must_sync and rd.hard_state == HardState(2, 0, 1)
    storage.persist(rd)
    node.advance(rd)
    node.step(HeartbeatRequest(frm=1, to=2, term=2, commit=2))
    rd = node.ready()
    assert rd.hard_state == HardState(2, 0, 2) and not rd.must_sync
    assert [e.index for e in rd.committed_entries] == [2]


def test_step_rejects_a_message_for_another_node() -> None:
    node, _ = lone_node()
    with pytest.raises(ValueError):
        node.step(TimeoutNow(frm=2, to=3, term=1))


# ---------------------------------------------------------------------------------------------
# Flow control and quorum math


def test_inflights_window() -> None:
    window = Inflights(3)
    for last in (5, 7, 9):
        window.add(last)
    assert window.full()
    window.free_le(7)
    assert len(window) == 1 and not window.full()
    window.free_first_one()
    assert len(window) == 0


def test_progress_probe_and_replicate_transitions() -> None:
    pr = Progress(next_index=11, max_inflight=2, recent_active=True)
    assert pr.state is ProgressState.PROBE and not pr.is_paused()
    pr.probe_sent = True
    assert pr.is_paused()
    assert not pr.maybe_decrease_to(rejected=5, probe_from=3)  # stale rejection
    assert pr.maybe_decrease_to(rejected=10, probe_from=4)
    assert pr.next == 4 and not pr.probe_sent
    assert pr.maybe_update(6)
    pr.become_replicate()
    assert pr.next == 7
    pr.inflights.add(8)
    pr.inflights.add(9)
    assert pr.is_paused()
    assert not pr.maybe_decrease_to(rejected=5, probe_from=0)  # below match: stale
    pr.become_snapshot(20)
    assert pr.is_paused()
    pr.become_probe()
    assert pr.next == 21


def test_quorum_value() -> None:
    assert quorum_value({1, 2, 3}, {1: 5, 2: 3, 3: 9}) == 5
    assert quorum_value({1, 2, 3, 4}, {1: 5, 2: 3, 3: 9, 4: 1}) == 3
    assert quorum_value({1, 2, 3}, {1: 5}) == 0
    assert quorum_value(set(), {}) == 0


def test_membership_follows_appends_and_truncations() -> None:
    members = Membership(0, ())
    add = ConfChange(ConfChangeOp.ADD, 4, (1, 2, 3, 4)).encode()
    remove = ConfChange(ConfChangeOp.REMOVE, 2, (1, 3, 4)).encode()
    base = ConfChange(ConfChangeOp.ADD, 0, (1, 2, 3)).encode()
    assert members.on_append([Entry(1, 1, EntryType.CONF_CHANGE, base), Entry(2, 1)])
    assert members.on_append([Entry(3, 1, EntryType.CONF_CHANGE, add)])
    assert members.on_append([Entry(4, 2, EntryType.CONF_CHANGE, remove)])
    assert members.voters == {1, 3, 4} and members.last_change_index == 4
    assert members.voters_at(3) == {1, 2, 3, 4} and members.voters_at(2) == {1, 2, 3}
    assert members.on_append([Entry(3, 3)])  # entries 3.. replaced: both changes gone
    assert members.voters == {1, 2, 3}
    members.reset(10, (5, 6, 7))
    assert members.voters == {5, 6, 7} and members.last_change_index == 10
    with pytest.raises(ValueError):
        members.voters_at(9)


def test_transport_reports_move_a_follower_back_to_probing() -> None:
    net = InMemoryNetwork(pre_vote=False, check_quorum=False)
    leader = net.elect(1)
    assert leader.progress[2].state is ProgressState.REPLICATE
    leader.report_unreachable(2)
    assert leader.progress[2].state is ProgressState.PROBE
    leader.progress[3].become_snapshot(9)
    leader.report_snapshot(3, success=False)
    pr = leader.progress[3]
    assert pr.state is ProgressState.PROBE and pr.probe_sent and pr.next == pr.match + 1
    net.tick(1)  # the next heartbeat answer resumes replication
    assert leader.progress[3].state is ProgressState.REPLICATE
    net.nodes[2].report_unreachable(1)  # a no-op on a follower


def test_a_node_outside_the_configuration_never_campaigns() -> None:
    storage = MemoryStorage()
    joiner = Node(Config(id=4, election_tick=3), storage, random.Random(0))
    assert joiner.voters == frozenset()
    for _ in range(20):
        joiner.tick()
    joiner.campaign()
    assert joiner.term == 0 and not joiner.ready().messages
