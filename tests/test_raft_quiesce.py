"""Quiescence of idle Raft groups (core/raft/node.py's header, "Quiescence").

Each test names the rule of the contract it checks. The groups run on the synchronous
in-memory network of core.raft.testing; every test is deterministic.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

import msgpack
import pytest

from core.raft import (
    AppendRequest,
    AppendResponse,
    ConfChangeOp,
    Entry,
    HeartbeatRequest,
    HeartbeatResponse,
    MemoryStorage,
    Message,
    Node,
    Role,
    VoteRequest,
    message_from_wire,
)
from core.raft.config import Config
from core.raft.testing import InMemoryNetwork

ELECTION_TICK = 10
IDLE_TICKS = 200


def quiet_group(**config: object) -> InMemoryNetwork:
    """Three nodes with quiesce on, node 1 leading, a few writes applied everywhere."""
    net = InMemoryNetwork(seed=7, election_tick=ELECTION_TICK, quiesce=True, **config)
    net.elect(1)
    for i in range(3):
        net.propose(1, b"w%d" % i)
    net.tick()
    return net


def all_quiesced(net: InMemoryNetwork) -> bool:
    return all(node.quiesced for node in net.nodes.values())


def test_an_idle_group_quiesces_and_then_sends_nothing() -> None:
    """Leader rule: at a heartbeat tick, everyone matched, committed and applied -> the
    leader sends quiesce heartbeats; follower rule: caught up -> quiesce, no answer."""
    net = quiet_group()
    assert all_quiesced(net)
    last = net.nodes[1].log.last_index()
    assert all(n.committed == last for n in net.nodes.values())
    sent = len(net.sent)
    net.tick(times=IDLE_TICKS)
    assert len(net.sent) == sent  # not one message in IDLE_TICKS ticks
    assert net.nodes[1].role is Role.LEADER and all_quiesced(net)


def test_quiesce_is_off_by_default() -> None:
    """Config.quiesce defaults to False: the leader keeps sending heartbeats."""
    net = InMemoryNetwork(seed=7, election_tick=ELECTION_TICK)
    net.elect(1)
    net.propose(1, b"x")
    sent = len(net.sent)
    net.tick(times=5)
    assert len(net.sent) > sent
    assert not any(node.quiesced for node in net.nodes.values())


def test_a_proposal_wakes_the_group_and_commits() -> None:
    """Wake rule: any proposal wakes the leader, whose messages wake the followers."""
    net = quiet_group()
    index = net.propose(1, b"after")
    assert not net.nodes[1].quiesced
    for node_id in (1, 2, 3):
        assert net.applied[node_id][-1].index == index
        assert net.applied[node_id][-1].data == b"after"
    net.tick()
    assert all_quiesced(net)  # and it settles again at the next heartbeat tick


def test_a_lagging_follower_prevents_quiescence_until_it_catches_up() -> None:
    """Leader rule: every voter's match must be the last index before it quiesces."""
    net = quiet_group()
    net.isolate(3)
    net.propose(1, b"missed by 3")
    net.tick(times=ELECTION_TICK // 2)
    assert not net.nodes[1].quiesced and not net.nodes[2].quiesced
    net.recover()  # node 3 slept through it all; the leader's next heartbeat wakes it
    net.tick(times=3)
    assert net.nodes[3].log.last_index() == net.nodes[1].log.last_index()
    assert all_quiesced(net)


def test_a_follower_behind_the_quiesce_heartbeat_answers_and_stays_awake() -> None:
    """Follower rule: last index == commit == the heartbeat's commit, or no quiescence."""
    storage = MemoryStorage()
    node = Node(Config(id=2, peers=(1, 2, 3), quiesce=True), storage, random.Random(1))

    def messages() -> list[Message]:
        rd = node.ready()
        storage.persist(rd)
        node.advance(rd)
        return list(rd.messages)

    node.step(AppendRequest(frm=1, to=2, term=1, prev_index=1, prev_term=1, commit=1,
                            entries=(Entry(2, 1), Entry(3, 1))))
    messages()
    node.step(HeartbeatRequest(frm=1, to=2, term=1, commit=1, quiesce=True))
    assert not node.quiesced  # its log goes beyond the commit index
    assert any(isinstance(m, HeartbeatResponse) for m in messages())
    node.step(HeartbeatRequest(frm=1, to=2, term=1, commit=3, quiesce=True))
    assert node.quiesced
    assert messages() == []  # a quiescing follower does not answer


@pytest.mark.parametrize("request_", [
    lambda n: n.propose(b"p"),
    lambda n: n.read_index(b"r"),
    lambda n: n.transfer_leadership(2),
    lambda n: n.propose_conf_change(ConfChangeOp.ADD, 4),
    lambda n: n.campaign(),
], ids=["propose", "read_index", "transfer", "conf_change", "campaign"])
def test_every_request_wakes_a_quiesced_leader(request_: Callable[[Node], object]) -> None:
    """Wake rule: proposals, reads, transfers, conf changes and campaign wake a node; a
    woken leader sends heartbeats at once."""
    net = quiet_group()
    leader = net.nodes[1]
    request_(leader)
    assert not leader.quiesced
    assert any(isinstance(m, HeartbeatRequest) and not m.quiesce
               for m in net.process(1))


def test_killing_the_leader_and_waking_the_followers_elects_a_new_leader() -> None:
    """wake(): node liveness says the leader's node is down; the followers tick again and
    elect a new leader after their election timeout."""
    net = quiet_group()
    net.crash(1)
    net.tick(times=3 * ELECTION_TICK)
    assert all_quiesced(net)  # nobody ticks: without wake() nothing happens
    for node_id in (2, 3):
        net.nodes[node_id].wake()
    net.tick(times=3 * ELECTION_TICK)
    leader = net.leader()
    assert leader is not None and leader.id in (2, 3) and leader.term > 1
    index = net.propose(leader.id, b"new leader")
    assert net.applied[5 - leader.id][-1].index == index


def test_a_woken_follower_waits_for_its_election_timeout() -> None:
    """wake(): election_elapsed restarts at 0, so no campaign before election_tick ticks."""
    net = quiet_group()
    net.crash(1)
    follower = net.nodes[2]
    follower.wake()
    assert follower.election_elapsed == 0
    sent = len(net.sent)
    net.tick(2, times=ELECTION_TICK - 1)
    assert follower.role is Role.FOLLOWER
    assert len(net.sent) - sent <= 1  # at most the poke to the dead leader
    net.tick(2, times=ELECTION_TICK + 1)
    assert any(isinstance(m, VoteRequest) and m.frm == 2 for m in net.sent[sent:])


def test_a_quiesced_follower_keeps_its_lease_against_a_disruptive_pre_vote() -> None:
    """Leases while quiesced: node 3 is cut off from the leader alone, so its host wakes
    it and it campaigns; node 2, quiesced with its leader alive, still counts it alive and
    ignores the pre-vote, so the leader keeps its term. Healed, the group settles again."""
    net = quiet_group()
    term = net.nodes[1].term
    net.cut(1, 3)
    net.nodes[3].wake()  # node liveness: node 1 is unreachable from node 3
    net.tick(times=4 * ELECTION_TICK)
    assert any(isinstance(m, VoteRequest) and m.frm == 3 for m in net.sent)
    assert net.nodes[1].role is Role.LEADER
    assert all(n.term == term for n in net.nodes.values())
    net.recover()
    net.tick(times=3 * ELECTION_TICK)
    assert net.nodes[1].role is Role.LEADER and all_quiesced(net)


def test_a_mistaken_wake_costs_one_round() -> None:
    """wake() pokes the leader: if it is alive after all, it heartbeats the follower back
    to sleep before any election timeout."""
    net = quiet_group()
    term = net.nodes[1].term
    net.nodes[3].wake()
    net.deliver()
    assert not net.nodes[1].quiesced  # the poke woke it
    net.tick(times=2)
    assert all_quiesced(net) and all(n.term == term for n in net.nodes.values())


def test_a_stray_message_wakes_a_follower_which_pokes_its_leader() -> None:
    """Wake rule: a message from another node than the leader wakes the follower, which
    wakes the leader, so the whole group wakes rather than the follower timing out."""
    net = quiet_group()
    node3 = net.nodes[3]
    net.deliver([VoteRequest(frm=3, to=2, term=node3.term + 1, pre_vote=True,
                             last_index=node3.log.last_index(),
                             last_term=node3.log.last_term())])
    assert any(isinstance(m, HeartbeatResponse) and m.frm == 2 and m.to == 1
               for m in net.sent)
    assert not net.nodes[1].quiesced  # woken by the poke, heartbeating again
    assert net.nodes[2].role is Role.FOLLOWER and net.nodes[2].election_elapsed == 0
    net.tick()
    assert all_quiesced(net)


def test_read_index_on_a_quiesced_follower() -> None:
    """Wake rule: read_index wakes the follower and, through its request, the leader."""
    net = quiet_group()
    commit = net.nodes[2].committed
    net.nodes[2].read_index(b"ctx-1")
    net.deliver()
    assert net.read_states[2] == [(commit, b"ctx-1")]
    net.tick()
    assert all_quiesced(net)


def test_a_leader_does_not_quiesce_during_a_transfer() -> None:
    """Leader rule: no leadership transfer in progress."""
    net = quiet_group()
    net.isolate(3)
    net.propose(1, b"x")
    net.nodes[1].transfer_leadership(3)  # 3 lags: the transfer waits for it
    net.tick(1, times=ELECTION_TICK // 2)
    assert not net.nodes[1].quiesced


def test_a_quiesced_leader_drops_late_answers_to_its_last_heartbeats() -> None:
    """Wake rule, the exception: a plain HeartbeatResponse or an AppendResponse that
    acknowledges no more than the known match is an echo and does not wake the leader;
    a HeartbeatResponse marked `wake` (a follower's poke) does."""
    net = quiet_group()
    leader = net.nodes[1]
    last = leader.log.last_index()
    net.deliver([HeartbeatResponse(frm=2, to=1, term=leader.term),
                 AppendResponse(frm=3, to=1, term=leader.term, index=last)])
    assert leader.quiesced
    net.deliver([HeartbeatResponse(frm=2, to=1, term=leader.term, wake=True)])
    assert not leader.quiesced


@pytest.mark.parametrize(("message", "field"), [
    (HeartbeatRequest(frm=1, to=2, term=3, commit=4, read_seq=5), "quiesce"),
    (HeartbeatResponse(frm=2, to=1, term=3, read_seq=5), "wake"),
])
def test_the_quiesce_flags_on_the_wire_are_backward_compatible(message: Message,
                                                                field: str) -> None:
    """HeartbeatRequest.quiesce, HeartbeatResponse.wake: absent on the wire means False,
    and False is left out, so an old decoder (every field required) accepts it."""
    wire = message.to_wire()
    assert field not in wire
    assert message_from_wire(wire) == message
    flagged = replace(message, **{field: True})
    assert message_from_wire(msgpack.unpackb(msgpack.packb(flagged.to_wire()))) == flagged
