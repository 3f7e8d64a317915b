"""Focused tests of core.raft against the Raft paper and Ongaro's thesis, section by section.

In the spirit of etcd-io/raft's raft_paper_test.go: each test names the rule it checks.
"Raft" cites Ongaro & Ousterhout, "In Search of an Understandable Consensus Algorithm"
(extended version); "thesis" cites Ongaro's PhD thesis "Consensus: Bridging Theory and
Practice". The classic tests run without pre-vote and check-quorum, as in the paper.
"""

from __future__ import annotations

import random

import pytest

from core.raft import (
    NONE,
    AppendRequest,
    AppendResponse,
    ConfChange,
    ConfChangeOp,
    Config,
    Entry,
    EntryType,
    HardState,
    HeartbeatRequest,
    MemoryStorage,
    Node,
    NotLeader,
    ProposalDropped,
    Role,
    VoteRequest,
    VoteResponse,
)
from core.raft.testing import InMemoryNetwork

CLASSIC = {"pre_vote": False, "check_quorum": False}


def founders_entry(voters: tuple[int, ...] = (1, 2, 3)) -> Entry:
    """Entry 1 as every founding member writes it on its first start."""
    change = ConfChange(ConfChangeOp.ADD, NONE, tuple(sorted(voters)))
    return Entry(1, 1, EntryType.CONF_CHANGE, change.encode())


def storage_with(terms: list[int], term: int, vote: int = NONE, commit: int = 1,
                 voters: tuple[int, ...] = (1, 2, 3)) -> MemoryStorage:
    """A persisted log: the founders' entry 1, then entries 2, 3, ... with these terms."""
    storage = MemoryStorage()
    entries = [founders_entry(voters)]
    entries += [Entry(i + 2, t, EntryType.NORMAL, b"e%d-t%d" % (i + 2, t))
                for i, t in enumerate(terms)]
    storage.append(entries)
    storage.set_hard_state(HardState(term, vote, commit))
    return storage


def log_terms(node: Node) -> list[tuple[int, int]]:
    log = node.log
    entries = log.slice(log.first_index(), log.last_index() + 1, None) or []
    return [(e.index, e.term) for e in entries]


def single(node_id: int = 1, seed: int = 0, **config: object) -> tuple[Node, MemoryStorage]:
    """Node `node_id` of a founding trio, alone: the test plays the other two."""
    storage = MemoryStorage()
    settings = {**CLASSIC, **config}
    node = Node(Config(id=node_id, peers=(1, 2, 3), **settings), storage,  # type: ignore[arg-type]
                random.Random(seed))
    drain(node, storage)
    return node, storage


def drain(node: Node, storage: MemoryStorage) -> list:
    """Carry out every pending Ready of a lone node; returns the messages."""
    out = []
    while node.has_ready():
        rd = node.ready()
        storage.persist(rd)
        out.extend(rd.messages)
        node.advance(rd)
    return out


# ---------------------------------------------------------------------------------------------
# Raft 5.2: leader election


def test_5_2_follower_campaigns_after_randomized_timeout() -> None:
    node, storage = single(election_tick=10)
    assert node.role is Role.FOLLOWER and node.term == 1
    timeout = node.randomized_election_timeout
    assert 10 <= timeout < 20
    for _ in range(timeout - 1):
        node.tick()
    assert node.role is Role.FOLLOWER
    node.tick()
    assert node.role is Role.CANDIDATE and node.term == 2 and node.vote == 1
    msgs = drain(node, storage)
    assert sorted(m.to for m in msgs) == [2, 3]
    assert all(isinstance(m, VoteRequest) and m.term == 2 and not m.pre_vote for m in msgs)
    assert all((m.last_index, m.last_term) == (1, 1) for m in msgs)
    # The vote was persisted in the same Ready as the requests (persist before send).
    assert storage.initial_state() == HardState(2, 1, 1)


def test_5_2_election_timeouts_are_randomized_per_node() -> None:
    timeouts = {single(1, seed, election_tick=10)[0].randomized_election_timeout
                for seed in range(30)}
    assert len(timeouts) > 3 and all(10 <= t < 20 for t in timeouts)


def test_5_2_candidate_with_majority_becomes_leader_and_appends_empty_entry() -> None:
    net = InMemoryNetwork(**CLASSIC)
    leader = net.elect(1)
    assert leader.role is Role.LEADER and leader.term == 2
    assert all(n.lead == 1 and n.term == 2 for n in net.nodes.values())
    # Raft 8: the new leader's blank entry, committed and applied everywhere.
    for node_id in (1, 2, 3):
        assert [(e.index, e.term, e.type) for e in net.applied[node_id]] == [
            (1, 1, EntryType.CONF_CHANGE), (2, 2, EntryType.EMPTY)]


def test_5_2_candidate_rejected_by_majority_steps_down() -> None:
    node, storage = single(election_tick=10)
    node.campaign()
    drain(node, storage)
    node.step(VoteResponse(frm=2, to=1, term=2, reject=True))
    assert node.role is Role.CANDIDATE
    node.step(VoteResponse(frm=3, to=1, term=2, reject=True))
    assert node.role is Role.FOLLOWER and node.term == 2


def test_5_2_each_server_votes_for_at_most_one_candidate_per_term() -> None:
    node, storage = single(3)
    node.step(VoteRequest(frm=1, to=3, term=2, last_index=1, last_term=1))
    node.step(VoteRequest(frm=2, to=3, term=2, last_index=1, last_term=1))
    node.step(VoteRequest(frm=1, to=3, term=2, last_index=1, last_term=1))  # a duplicate
    answers = [(m.to, m.reject) for m in drain(node, storage)]
    assert answers == [(1, False), (2, True), (1, False)]
    assert storage.initial_state().vote == 1
    # The vote survives a restart: the persisted hard state holds it.
    again = Node(Config(id=3, peers=(1, 2, 3), **CLASSIC), storage, random.Random(9))
    again.step(VoteRequest(frm=2, to=3, term=2, last_index=1, last_term=1))
    assert [m.reject for m in drain(again, storage)] == [True]


def test_5_2_candidate_returns_to_follower_on_append_from_leader_of_its_term() -> None:
    node, storage = single(election_tick=10)
    node.campaign()
    drain(node, storage)
    node.step(AppendRequest(frm=2, to=1, term=2, prev_index=1, prev_term=1, commit=1))
    assert node.role is Role.FOLLOWER and node.lead == 2 and node.term == 2


def test_5_1_higher_term_turns_leader_into_follower() -> None:
    net = InMemoryNetwork(**CLASSIC)
    leader = net.elect(1)
    leader.step(AppendResponse(frm=2, to=1, term=7, index=0))
    assert leader.role is Role.FOLLOWER and leader.term == 7 and leader.lead == NONE


def test_5_1_stale_term_requests_are_rejected_with_the_current_term() -> None:
    node, storage = single(3)
    node.step(VoteRequest(frm=2, to=3, term=5, last_index=1, last_term=1))
    drain(node, storage)
    node.step(VoteRequest(frm=1, to=3, term=4, last_index=9, last_term=4))
    (reply,) = drain(node, storage)
    assert isinstance(reply, VoteResponse) and reply.reject and reply.term == 5
    node.step(AppendRequest(frm=1, to=3, term=4, prev_index=1, prev_term=1, commit=1))
    assert drain(node, storage) == [] and node.term == 5  # ignored (classic mode)


def test_5_2_leader_sends_heartbeats_every_heartbeat_tick() -> None:
    net = InMemoryNetwork(**CLASSIC, heartbeat_tick=2, election_tick=10)
    leader = net.elect(1)
    net.sent.clear()
    leader.tick()
    assert net.process(1) == []
    leader.tick()
    beats = net.process(1)
    assert sorted((type(m).__name__, m.to) for m in beats) == [
        ("HeartbeatRequest", 2), ("HeartbeatRequest", 3)]


# ---------------------------------------------------------------------------------------------
# Raft 5.3: log replication


def test_5_3_leader_commits_once_a_majority_stores_the_entry() -> None:
    net = InMemoryNetwork(**CLASSIC)
    leader = net.elect(1)
    net.isolate(3)
    index = net.propose(1, b"x")
    assert leader.committed == index  # 1 and 2 are a majority of 3
    assert net.data_applied(1) == [b"x"] and net.data_applied(2) == [b"x"]
    assert net.data_applied(3) == []
    net.recover()
    net.tick(1, times=1)  # a heartbeat: node 3 catches up
    assert net.data_applied(3) == [b"x"]


def test_5_3_consistency_check_rejects_append_without_matching_previous_entry() -> None:
    node, storage = single(2)
    node.step(AppendRequest(frm=1, to=2, term=2, prev_index=5, prev_term=2,
                            entries=(Entry(6, 2),), commit=1))
    (reply,) = drain(node, storage)
    assert isinstance(reply, AppendResponse) and reply.reject and reply.index == 5
    assert (reply.hint_index, reply.hint_term) == (1, 1)  # our last entry
    assert node.log.last_index() == 1


def test_5_3_follower_deletes_conflicting_entries_and_appends_the_leaders() -> None:
    storage = storage_with([2, 2, 3], term=3)
    node = Node(Config(id=2, **CLASSIC), storage, random.Random(1))
    node.step(AppendRequest(frm=1, to=2, term=4, prev_index=2, prev_term=2,
                            entries=(Entry(3, 2), Entry(4, 4, data=b"new")), commit=3))
    rd = node.ready()
    assert rd.truncate_from == 4 and [(e.index, e.term) for e in rd.entries] == [(4, 4)]
    storage.persist(rd)
    node.advance(rd)
    assert log_terms(node) == [(1, 1), (2, 2), (3, 2), (4, 4)]
    assert node.committed == 3


@pytest.mark.parametrize("follower_terms", [
    [1, 1, 4, 4, 5, 5, 6, 6],  # (a) missing entries
    [1, 1, 4],  # (b) missing many
    [1, 1, 4, 4, 5, 5, 6, 6, 6, 6],  # (c) an extra uncommitted entry
    [1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],  # (d) extra entries of a later term
    [1, 1, 4, 4, 4, 4],  # (e) missing and extra
    [1, 1, 2, 2, 2, 3, 3, 3, 3, 3],  # (f) a whole divergent history
], ids=list("abcdef"))
def test_5_3_figure_7_leader_brings_every_follower_log_in_line(follower_terms: list[int]) -> None:
    leader_terms = [1, 1, 4, 4, 5, 5, 6, 6, 6]  # Figure 7's leader (entries 2..10 here)
    storages = {1: storage_with(leader_terms, term=7), 2: storage_with(follower_terms, term=7),
                3: storage_with(leader_terms, term=7)}
    net = InMemoryNetwork(storages=storages, **CLASSIC)
    leader = net.elect(1)
    assert leader.role is Role.LEADER and leader.term == 8
    assert log_terms(net.nodes[2]) == log_terms(leader)
    assert leader.committed == leader.log.last_index() == 11


def test_5_3_fast_backtracking_skips_a_conflicting_term_per_round_trip() -> None:
    # Follower 2 has 50 entries of term 2 the leader never had; the leader has term 3 ones.
    storages = {1: storage_with([3] * 5, term=3), 2: storage_with([2] * 50, term=3),
                3: storage_with([3] * 5, term=3)}
    net = InMemoryNetwork(storages=storages, **CLASSIC)
    net.elect(1)
    rejections = [m for m in net.sent if isinstance(m, AppendResponse) and m.reject
                  and m.frm == 2]
    assert 1 <= len(rejections) <= 2, rejections  # not one per entry
    assert log_terms(net.nodes[2]) == log_terms(net.nodes[1])


def test_5_3_appends_are_batched_within_the_message_limits() -> None:
    net = InMemoryNetwork(**CLASSIC, max_entries_per_msg=4, max_size_per_msg=10_000)
    leader = net.elect(1)
    for k in range(10):
        leader.propose(b"%d" % k)  # one Ready later: batched
    sent = net.process(1)
    appends = [m for m in sent if isinstance(m, AppendRequest)]
    assert all(len(m.entries) <= 4 for m in appends)
    assert sum(len(m.entries) for m in appends if m.to == 2) == 10
    net.deliver(sent)
    assert net.data_applied(2) == [b"%d" % k for k in range(10)]
    by_size = InMemoryNetwork(**CLASSIC, max_entries_per_msg=100, max_size_per_msg=100)
    leader = by_size.elect(1)
    for _ in range(5):
        leader.propose(b"x" * 40)  # 56 bytes with the entry overhead
    appends = [m for m in by_size.process(1) if isinstance(m, AppendRequest)]
    assert appends and all(len(m.entries) == 1 for m in appends)


def test_5_3_leader_pipelines_up_to_the_inflight_limit() -> None:
    net = InMemoryNetwork(**CLASSIC, max_entries_per_msg=1, max_inflight_msgs=3)
    leader = net.elect(1)
    net.isolate(2)
    net.isolate(3)  # acknowledgements never arrive
    for k in range(10):
        leader.propose(b"%d" % k)
    appends = [m for m in net.process(1) if isinstance(m, AppendRequest) and m.to == 2]
    assert len(appends) == 3
    assert [m.entries[0].index for m in appends] == [3, 4, 5]


# ---------------------------------------------------------------------------------------------
# Raft 5.4: safety


@pytest.mark.parametrize(("last_index", "last_term", "granted"), [
    (3, 2, True),  # same last term, same length
    (4, 2, True),  # longer
    (2, 2, False),  # shorter log with the same last term
    (9, 1, False),  # longer but older last term
    (2, 3, True),  # newer last term wins over length
])
def test_5_4_1_election_restriction(last_index: int, last_term: int, granted: bool) -> None:
    storage = storage_with([2, 2], term=2)
    node = Node(Config(id=3, **CLASSIC), storage, random.Random(1))
    node.step(VoteRequest(frm=1, to=3, term=3, last_index=last_index, last_term=last_term))
    (reply,) = drain(node, storage)
    assert reply.reject is not granted


def figure_8_net() -> InMemoryNetwork:
    """Figure 8 (b): S1 has entry 2 of term 2 (also on S2), S5 entry 2 of term 3."""
    voters = (1, 2, 3, 4, 5)
    storages = {1: storage_with([2], term=3, voters=voters),
                2: storage_with([2], term=3, voters=voters),
                3: storage_with([], term=3, voters=voters),
                4: storage_with([], term=3, voters=voters),
                5: storage_with([3], term=3, voters=voters)}
    return InMemoryNetwork(ids=voters, storages=storages, max_entries_per_msg=1, **CLASSIC)


def elect_eventually(net: InMemoryNetwork, node_id: int, tries: int = 3) -> Node:
    for _ in range(tries):
        if net.elect(node_id).role is Role.LEADER:
            break
    return net.nodes[node_id]


def test_5_4_2_figure_8_entry_of_older_term_is_not_committed_by_counting_replicas() -> None:
    net = figure_8_net()
    # (c) S1 leads term 4. Its own term-4 entry (index 3) reaches nobody ...
    net.drop_if(lambda m: isinstance(m, AppendRequest) and any(e.index >= 3 for e in m.entries))
    s1 = net.elect(1)
    assert s1.role is Role.LEADER and s1.term == 4
    # ... but after S2 and S3 ask for earlier entries, entry 2 (term 2) reaches S3.
    net.deliver([AppendResponse(frm=f, to=1, term=4, index=2, reject=True, hint_index=1,
                                hint_term=1) for f in (2, 3)])
    assert [net.nodes[i].log.term(2) for i in (1, 2, 3)] == [2, 2, 2]  # a majority has it
    assert s1.progress[2].match == s1.progress[3].match == 2
    assert s1.committed == 1  # ... and still it is not committed (Raft 5.4.2)
    # (d) S1 crashes, S5 wins term 5 and overwrites entry 2 everywhere: that was allowed.
    net.crash(1)
    net.recover()
    s5 = elect_eventually(net, 5)
    assert s5.role is Role.LEADER and s5.term == 5
    for node_id in (2, 3, 4, 5):
        assert net.nodes[node_id].log.term(2) == 3
        assert all(e.term != 2 for e in net.applied[node_id])


def test_5_4_2_older_term_entries_commit_with_an_entry_of_the_current_term() -> None:
    net = figure_8_net()
    net.isolate(5)
    s1 = net.elect(1)  # (e): the term-4 entry reaches a majority, so entry 2 commits with it
    assert s1.committed == 3
    assert [(e.index, e.term) for e in net.applied[1]] == [(1, 1), (2, 2), (3, 4)]
    net.crash(1)
    net.recover()
    assert elect_eventually(net, 5).role is not Role.LEADER  # S5 can no longer win
    assert elect_eventually(net, 2).role is Role.LEADER
    assert net.nodes[5].log.term(2) == 2


# ---------------------------------------------------------------------------------------------
# Raft 6 / thesis 4: membership changes, one server at a time


def test_thesis_4_1_added_server_catches_up_and_config_takes_effect_when_appended() -> None:
    net = InMemoryNetwork(**CLASSIC)
    leader = net.elect(1)
    net.start(4, ())  # a new, empty node: it learns the configuration from the log
    net.isolate(4)
    index = leader.propose_conf_change(ConfChangeOp.ADD, 4)
    assert leader.voters == {1, 2, 3, 4}  # in force on append, before commit
    assert leader.committed < index
    net.deliver()
    assert leader.committed == index  # 3 of 4 (1, 2, 3) have it
    net.recover()
    net.tick(1)
    new = net.nodes[4]
    assert new.voters == {1, 2, 3, 4} and new.log.last_index() == leader.log.last_index()
    net.propose(1, b"after")
    assert net.data_applied(4) == [b"after"]


def test_thesis_4_1_one_change_at_a_time_and_only_after_committing_in_the_term() -> None:
    net = InMemoryNetwork(**CLASSIC)
    leader = net.elect(1)
    net.isolate(2)
    net.isolate(3)
    leader.propose_conf_change(ConfChangeOp.REMOVE, 3)
    with pytest.raises(ProposalDropped, match="uncommitted"):
        leader.propose_conf_change(ConfChangeOp.ADD, 4)
    with pytest.raises(ValueError):
        leader.propose_conf_change(ConfChangeOp.ADD, 2)
    # A brand-new leader must first commit its blank entry (Ongaro's 2015 bug fix).
    fresh = InMemoryNetwork(**CLASSIC)
    fresh.isolate(2)
    fresh.isolate(3)
    leader = fresh.nodes[1]
    leader.campaign()
    leader.step(VoteResponse(frm=2, to=1, term=2, reject=False))
    assert leader.role is Role.LEADER and leader.committed < leader.term_start_index
    with pytest.raises(ProposalDropped, match="term"):
        leader.propose_conf_change(ConfChangeOp.REMOVE, 3)
    with pytest.raises(NotLeader):
        fresh.nodes[2].propose_conf_change(ConfChangeOp.REMOVE, 3)


def test_thesis_4_1_truncated_configuration_entry_restores_the_previous_config() -> None:
    net = InMemoryNetwork(**CLASSIC)
    old = net.elect(1)
    net.isolate(1)
    old.propose_conf_change(ConfChangeOp.ADD, 4)
    net.deliver()
    assert old.voters == {1, 2, 3, 4}
    net.recover()
    net.isolate(1)
    net.elect(2)
    net.recover()
    net.tick(2)  # the new leader overwrites the uncommitted change on node 1
    assert old.role is Role.FOLLOWER and old.voters == {1, 2, 3}


def test_thesis_4_2_2_removed_leader_steps_down_once_the_removal_commits() -> None:
    net = InMemoryNetwork(**CLASSIC)
    leader = net.elect(1)
    net.drop_if(lambda m: m.to == 3 and isinstance(m, AppendRequest))
    index = leader.propose_conf_change(ConfChangeOp.REMOVE, 1)
    assert leader.voters == {2, 3} and leader.role is Role.LEADER
    net.process(1)
    assert leader.role is Role.LEADER  # not committed: 2 of {2, 3} needed, only 2 has it
    net.recover()
    net.deliver()
    net.tick(1)
    assert net.nodes[2].committed >= index
    assert leader.role is Role.FOLLOWER
    # It handed over with TimeoutNow: a new leader is there without waiting for a timeout.
    new = net.leader()
    assert new is not None and new.id in (2, 3)
    net.propose(new.id, b"y")
    assert b"y" in net.data_applied(new.id)
    for _ in range(50):
        net.tick(1)
    assert leader.role is Role.FOLLOWER  # not a voter: it never campaigns


# ---------------------------------------------------------------------------------------------
# Raft 7: log compaction and InstallSnapshot


def test_7_lagging_follower_is_sent_the_snapshot() -> None:
    net = InMemoryNetwork(**CLASSIC)
    leader = net.elect(1)
    net.isolate(3)
    for k in range(5):
        net.propose(1, b"%d" % k)
    storage = net.storages[1]
    snapshot = storage.create_snapshot(leader.applied, leader.voters_at(leader.applied),
                                       b"state@%d" % leader.applied)
    storage.compact(leader.applied)
    net.propose(1, b"after")
    net.recover()
    net.tick(1)
    follower = net.nodes[3]
    assert net.storages[3].snapshot() == snapshot
    assert follower.log.first_index() == snapshot.index + 1
    assert net.data_applied(3) == [b"after"]  # entries after the snapshot are applied
    assert follower.applied == leader.applied


def test_7_follower_ignores_a_snapshot_it_already_covers() -> None:
    storage = storage_with([2, 2, 2], term=2, commit=3)
    node = Node(Config(id=2, **CLASSIC), storage, random.Random(1))
    from core.raft import Snapshot, SnapshotRequest
    node.step(SnapshotRequest(frm=1, to=2, term=2, snapshot=Snapshot(2, 2, (1, 2, 3), b"s")))
    rd = node.ready()
    assert rd.snapshot is None
    assert [(type(m).__name__, m.index) for m in rd.messages] == [("AppendResponse", 3)]
    # A snapshot matching an entry it has but not committed only advances the commit index.
    node.advance(rd)
    node.step(SnapshotRequest(frm=1, to=2, term=2, snapshot=Snapshot(4, 2, (1, 2, 3), b"s")))
    rd = node.ready()
    assert rd.snapshot is None and node.committed == 4 and node.log.last_index() == 4


def test_7_node_restarts_from_snapshot_and_log() -> None:
    net = InMemoryNetwork(**CLASSIC)
    leader = net.elect(1)
    for k in range(4):
        net.propose(1, b"%d" % k)
    storage = net.storages[2]
    follower = net.nodes[2]
    storage.create_snapshot(4, follower.voters_at(4), b"snap")
    storage.compact(3)
    net.crash(2)
    restarted = net.start(2, (1, 2, 3))
    assert restarted.applied == 4 and restarted.committed == leader.committed
    assert restarted.voters == {1, 2, 3}
    net.applied[2].clear()
    net.deliver()
    assert [e.index for e in net.applied[2]] == list(range(5, leader.committed + 1))


# ---------------------------------------------------------------------------------------------
# Thesis 9.6 pre-vote and 6.2 / 4.2.3 check quorum


def test_thesis_9_6_pre_vote_keeps_a_partitioned_node_from_raising_its_term() -> None:
    net = InMemoryNetwork(pre_vote=True, check_quorum=False, election_tick=5)
    leader = net.elect(1)
    assert leader.term == 2  # pre-vote did not cost a term
    net.isolate(3)
    for _ in range(40):
        net.tick(3)
    isolated = net.nodes[3]
    assert isolated.term == 2 and isolated.role is Role.PRE_CANDIDATE
    net.recover()
    net.tick(1)
    assert leader.role is Role.LEADER and leader.term == 2 and isolated.lead == 1


def test_without_pre_vote_a_rejoining_node_disrupts_the_leader() -> None:
    net = InMemoryNetwork(pre_vote=False, check_quorum=False, election_tick=5)
    leader = net.elect(1)
    net.isolate(3)
    for _ in range(40):
        net.tick(3)
    assert net.nodes[3].term > 2
    net.recover()
    net.tick(times=20)
    assert leader.term > 2  # deposed by the higher term (the contrast to pre-vote)


def test_check_quorum_isolated_leader_steps_down_after_an_election_timeout() -> None:
    net = InMemoryNetwork(pre_vote=True, check_quorum=True, election_tick=5)
    leader = net.elect(1)
    net.isolate(1)
    for _ in range(4):
        net.tick(1)
    assert leader.role is Role.LEADER
    for _ in range(6):
        net.tick(1)
    assert leader.role is Role.FOLLOWER and leader.lead == NONE


def test_check_quorum_followers_in_lease_ignore_vote_requests() -> None:
    net = InMemoryNetwork(pre_vote=False, check_quorum=True, election_tick=5)
    leader = net.elect(1)
    follower = net.nodes[2]
    follower.step(VoteRequest(frm=3, to=2, term=9, last_index=99, last_term=9))
    assert net.process(2) == [] and follower.term == leader.term and follower.lead == 1
    for _ in range(5):
        follower.tick()  # the lease runs out without heartbeats
    net.process(2)
    follower.step(VoteRequest(frm=3, to=2, term=9, last_index=99, last_term=9))
    assert follower.term == 9 and follower.vote == 3


# ---------------------------------------------------------------------------------------------
# Thesis 6.4: linearizable reads with a read index


def test_thesis_6_4_read_index_is_answered_after_a_heartbeat_quorum() -> None:
    net = InMemoryNetwork(**CLASSIC)
    leader = net.elect(1)
    net.propose(1, b"w")
    net.isolate(2)
    net.isolate(3)
    leader.read_index(b"q1")
    net.deliver()
    assert net.read_states[1] == []  # no quorum confirmed leadership yet
    net.recover()
    leader.read_index(b"q2")
    net.deliver()
    assert net.read_states[1] == [(leader.committed, b"q1"), (leader.committed, b"q2")]


def test_thesis_6_4_follower_read_goes_through_the_leader() -> None:
    net = InMemoryNetwork(**CLASSIC)
    leader = net.elect(1)
    net.propose(1, b"w")
    net.nodes[3].read_index(b"f")
    net.deliver()
    assert net.read_states[3] == [(leader.committed, b"f")]
    with pytest.raises(NotLeader):
        InMemoryNetwork(**CLASSIC).nodes[2].read_index(b"x")  # no leader known yet


def test_thesis_6_4_new_leader_answers_reads_only_after_committing_in_its_term() -> None:
    net = InMemoryNetwork(**CLASSIC)
    net.isolate(2)
    net.isolate(3)
    leader = net.nodes[1]
    leader.campaign()
    leader.step(VoteResponse(frm=2, to=1, term=2, reject=False))
    leader.read_index(b"early")
    net.deliver()
    assert net.read_states[1] == []
    net.recover()
    net.tick(1)
    assert net.read_states[1] == [(leader.committed, b"early")]
    assert leader.committed >= leader.term_start_index


def test_thesis_6_4_single_voter_answers_reads_at_once() -> None:
    net = InMemoryNetwork(ids=(1,), **CLASSIC)
    leader = net.elect(1)
    leader.read_index(b"solo")
    net.deliver()
    assert net.read_states[1] == [(leader.committed, b"solo")]


# ---------------------------------------------------------------------------------------------
# Thesis 3.10: leadership transfer


def test_thesis_3_10_transfer_to_an_up_to_date_follower() -> None:
    net = InMemoryNetwork(**CLASSIC)
    old = net.elect(1)
    old.transfer_leadership(2)
    net.deliver()
    new = net.nodes[2]
    assert new.role is Role.LEADER and new.term == 3 and old.lead == 2


def test_thesis_3_10_transfer_to_a_lagging_follower_catches_it_up_first() -> None:
    net = InMemoryNetwork(**CLASSIC)
    old = net.elect(1)
    net.isolate(3)
    for k in range(3):
        net.propose(1, b"%d" % k)
    net.recover()
    old.transfer_leadership(3)
    with pytest.raises(ProposalDropped, match="transfer"):
        old.propose(b"during")
    net.deliver()
    assert net.nodes[3].role is Role.LEADER
    assert net.data_applied(3) == [b"0", b"1", b"2"]


def test_thesis_3_10_transfer_aborts_after_an_election_timeout() -> None:
    net = InMemoryNetwork(**CLASSIC, election_tick=5)
    old = net.elect(1)
    net.isolate(3)
    old.transfer_leadership(3)
    net.deliver()
    with pytest.raises(ProposalDropped):
        old.propose(b"x")
    for _ in range(5):
        net.tick(1)
    assert old.role is Role.LEADER and old.lead_transferee == NONE
    old.propose(b"x")


def test_timeout_now_bypasses_the_leader_lease() -> None:
    net = InMemoryNetwork(pre_vote=True, check_quorum=True, election_tick=5)
    old = net.elect(1)
    old.transfer_leadership(2)
    net.deliver()
    assert net.nodes[2].role is Role.LEADER and old.role is Role.FOLLOWER


def test_heartbeat_commit_is_capped_at_the_followers_match() -> None:
    net = InMemoryNetwork(**CLASSIC)
    leader = net.elect(1)
    net.isolate(3)
    net.propose(1, b"a")
    beats = []
    leader.tick()
    for m in net.process(1):
        if isinstance(m, HeartbeatRequest):
            beats.append((m.to, m.commit))
    assert dict(beats) == {2: leader.committed, 3: 2}  # 3 only matched up to entry 2
