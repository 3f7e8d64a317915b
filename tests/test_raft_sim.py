"""Hundreds of randomized, deterministic Raft schedules (tests/raftsim.py) checking safety
on every step and liveness after healing. The seeds are fixed, so `make test` replays the same
600 schedules each run; exploring more is RAFT_SIM_SCHEDULES' job.

Environment:
- RAFT_SIM_SCHEDULES=N  run N schedules instead of the default 600 (seeds BASE..BASE+N-1);
- RAFT_SIM_BASE=B       first seed (default 0), to explore fresh seeds;
- RAFT_SEED=S           replay only schedule S, exactly as it failed (RAFT_TRACE=1 prints its
                        event trace even when it passes).
A failure names its seed and the command that replays it.
"""

from __future__ import annotations

import os

import pytest

from core.raft import Node, VoteRequest
from tests.raftsim import Cluster, Params, SafetyViolation, run_schedule

SCHEDULES = int(os.environ.get("RAFT_SIM_SCHEDULES", "600"))
SEED_BASE = int(os.environ.get("RAFT_SIM_BASE", "0"))
ONLY_SEED = os.environ.get("RAFT_SEED")
CHUNKS = 10


@pytest.mark.skipif(ONLY_SEED is not None, reason="RAFT_SEED replays one schedule")
@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_random_schedules(chunk: int) -> None:
    totals: dict[str, int] = {}
    for seed in range(SEED_BASE + chunk, SEED_BASE + SCHEDULES, CHUNKS):
        for key, value in run_schedule(seed).items():
            totals[key] = totals.get(key, 0) + value
    if SCHEDULES >= 10 * CHUNKS:
        # The schedules really exercise what they claim to (not vacuously safe).
        for key in ("elections", "proposed", "reads_answered", "restores", "crashes",
                    "conf_changes", "timeout_now"):
            assert totals[key] > 0, (key, totals)


@pytest.mark.skipif(ONLY_SEED is None, reason="set RAFT_SEED to replay one schedule")
def test_replay_seed(capsys: pytest.CaptureFixture[str]) -> None:
    cluster = Cluster(Params.from_seed(int(ONLY_SEED or 0)))
    stats = cluster.run()
    if os.environ.get("RAFT_TRACE"):
        with capsys.disabled():
            print(f"\n{cluster.params}\n{cluster.format_trace()}\n{stats}")


def test_same_seed_replays_exactly() -> None:
    runs = []
    for _ in range(2):
        cluster = Cluster(Params.from_seed(12345, nodes=5))
        stats = cluster.run()
        logs = {i: (s.storage.last_index(), s.storage.initial_state(), s.sm.chain)
                for i, s in cluster.sims.items()}
        runs.append((stats, list(cluster.trace), logs, cluster.now))
    assert runs[0] == runs[1]


@pytest.mark.parametrize("seed", range(20))
def test_five_nodes_under_heavy_faults(seed: int) -> None:
    params = Params.from_seed(10_000 + seed, nodes=5, ticks=150)
    heavy = {**params.__dict__, "loss": 0.2, "duplicate": 0.05, "max_delay": 3,
             "p_crash": 0.05, "p_restart": 0.15, "p_partition": 0.05, "p_snapshot": 0.2,
             "p_conf": 0.05, "p_transfer": 0.05, "p_read": 0.3}
    Cluster(Params(**heavy)).run()


def test_the_checker_catches_a_node_that_forgets_its_vote(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Test the tester: a node that votes twice per term must trip Election Safety."""
    original = Node._handle_vote_request

    def forgetful(self: Node, m: VoteRequest) -> None:
        vote = self.vote
        original(self, m)
        self.vote = vote  # the vote is not remembered

    monkeypatch.setattr(Node, "_handle_vote_request", forgetful)
    with pytest.raises(SafetyViolation, match=r"(?s)Election Safety.*RAFT_SEED="):
        for seed in range(200):
            run_schedule(seed)
