"""Randomized, deterministic schedules of several Raft groups over the same simulated hosts
(tests/raftsim_multi.py): host crashes and partitions hit every group at once, quiescence
on and off side by side, node liveness waking quiesced followers; every group's safety is
checked on every step and its liveness at the end.

Environment:
- RAFT_SIM_LONG=1       run LONG_SCHEDULES schedules instead of SCHEDULES (for make drills);
- RAFT_SIM_BASE=B       first seed (default 0), to explore fresh seeds;
- RAFT_SEED=S           replay only schedule S (RAFT_TRACE=1 prints its trace).
A failure names its seed and the command that replays it.
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from tests.raftsim_multi import MultiCluster, MultiParams, run_multi_schedule

SCHEDULES = 120
LONG_SCHEDULES = 2000
CHUNKS = 4
SEED_BASE = int(os.environ.get("RAFT_SIM_BASE", "0"))
ONLY_SEED = os.environ.get("RAFT_SEED")
COUNT = LONG_SCHEDULES if os.environ.get("RAFT_SIM_LONG") else SCHEDULES


@pytest.mark.skipif(ONLY_SEED is not None, reason="RAFT_SEED replays one schedule")
@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_random_multigroup_schedules(chunk: int) -> None:
    totals: dict[str, int] = {}
    for seed in range(SEED_BASE + chunk, SEED_BASE + COUNT, CHUNKS):
        for key, value in run_multi_schedule(seed).items():
            totals[key] = totals.get(key, 0) + value
    # The schedules really exercise what they claim to (not vacuously safe).
    for key in ("elections", "proposed", "host_crashes", "wakes", "quiesced_ticks",
                "reads_answered", "conf_changes", "cuts"):
        assert totals[key] > 0, (key, totals)


@pytest.mark.skipif(ONLY_SEED is None, reason="set RAFT_SEED to replay one schedule")
def test_replay_seed(capsys: pytest.CaptureFixture[str]) -> None:
    cluster = MultiCluster(MultiParams.from_seed(int(ONLY_SEED or 0)))
    stats = cluster.run()
    if os.environ.get("RAFT_TRACE"):
        with capsys.disabled():
            trace = "\n".join(" ".join(str(x) for x in e) for e in cluster.trace)
            print(f"\n{cluster.params}\n{trace}\n{stats}")


def test_same_seed_replays_exactly() -> None:
    runs = []
    for _ in range(2):
        cluster = MultiCluster(MultiParams.from_seed(4242, groups=6))
        stats = cluster.run()
        logs = [{i: (s.storage.last_index(), s.storage.initial_state(), s.sm.chain)
                 for i, s in g.sims.items()} for g in cluster.groups]
        runs.append((stats, list(cluster.trace), logs, cluster.now))
    assert runs[0] == runs[1]


def calm(seed: int, groups: int) -> MultiCluster:
    """A cluster of quiesce-on groups and no chaos at all: the test makes the events."""
    params = replace(MultiParams.from_seed(seed, groups=groups), loss=0.0, duplicate=0.0,
                     max_delay=0, p_crash=0.0, p_partition=0.0, p_cut=0.0, p_busy=0.0,
                     quiesce_share=1.0)
    cluster = MultiCluster(params)
    settle(cluster)
    return cluster


def settle(cluster: MultiCluster, bound: int = 400) -> None:
    for _ in range(bound):
        if all(cluster.group_quiesced(g) for g in cluster.groups):
            return
        cluster.tick(chaos=False)
    raise AssertionError(f"groups did not all quiesce within {bound} ticks")


def test_a_host_crash_re_elects_its_groups_and_leaves_the_others_asleep() -> None:
    """The host's rule: the leader's host crashes; node liveness wakes the quiesced
    followers of exactly the groups it led, which elect new leaders; groups it did not
    lead send nothing at all; after its restart every group quiesces again."""
    cluster = calm(seed=31, groups=8)
    leaders = {i: g.leader() for i, g in enumerate(cluster.groups)}
    count: dict[int, int] = {}
    for node in leaders.values():
        assert node is not None
        count[node.id] = count.get(node.id, 0) + 1
    host = max(sorted(count), key=lambda h: count[h])
    led = {i for i, node in leaders.items() if node is not None and node.id == host}
    others = [i for i in range(len(cluster.groups)) if i not in led]
    sent = list(cluster.net.sent)
    cluster.crash_host(host)
    survivors = [i for i in led if len(cluster.groups[i].sims) > 2]  # a quorum is left
    assert survivors
    for _ in range(400):
        cluster.tick(chaos=False)
        if all(new_leader(cluster, i, host) for i in survivors):
            break
    assert all(new_leader(cluster, i, host) for i in survivors)
    assert cluster.stats["wakes"] > 0
    for i in others:
        assert cluster.net.sent[i] == sent[i], f"group {i} was woken by another's leader"
    cluster.restart_host(host)
    settle(cluster)


def new_leader(cluster: MultiCluster, index: int, old: int) -> bool:
    node = cluster.groups[index].leader()
    return node is not None and node.id != old
