"""idgen's peer check in one process: the pure verdict and offset estimate, and the
`idgen` service on two real core/rpc node ports over loopback (what it answers, what it
refuses, a peer that is down). The real-process cluster lives in test_idgen_cluster.py."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from core.clock import ManualClock
from core.rpc import NodeTransport, RemoteError
from idgen import peers
from idgen.peers import PeerCheck, PeerReading, WhoamiService, clock_offset_ms, judge
from tests.conftest import find_free_port

HANG_S = 30.0


def reading(node_id: int, worker_id: int, offset_ms: float) -> PeerReading:
    return PeerReading(node_id, f"127.0.0.{node_id}:7000", worker_id, offset_ms)


def test_judge_conflict_before_skew() -> None:
    readings = [reading(2, 7, 9000.0), reading(3, 1, 9000.0)]
    assert judge(1, readings, 1000) == (
        "CONFLICT worker id 1 is also held by peer 3 at 127.0.0.3:7000; refusing to issue ids"
    )


def test_judge_skew_uses_the_median_including_this_node() -> None:
    # Median of (0, +3000, +3000) is +3000: this clock is 3000 ms behind.
    assert judge(1, [reading(2, 2, 3000.0), reading(3, 3, 3000.0)], 1000) == (
        "SKEW this clock is -3000 ms from the median of the peers (limit 1000 ms); "
        "refusing to issue ids"
    )
    # One peer far off is outvoted by this node and the other peer.
    assert judge(1, [reading(2, 2, 0.0), reading(3, 3, 9000.0)], 1000) is None
    assert judge(1, [], 1000) is None


def test_clock_offset_allows_for_half_the_round_trip() -> None:
    # The peer read 1000 at about the midpoint of a 10 ms round trip; we read 1010 at its end.
    assert clock_offset_ms(1000, 5.000, 5.010, 1010) == pytest.approx(-5.0)


@pytest.mark.parametrize("answer", [None, [], {"worker_id": 1}, {"worker_id": "1", "wall_ms": 2}])
def test_a_malformed_answer_is_refused(answer: object) -> None:
    with pytest.raises(ValueError, match="not a whoami reply"):
        peers.read_whoami(answer)


def run(body: Callable[[NodeTransport, NodeTransport, ManualClock], Awaitable[None]]) -> None:
    """Two node ports on 127.0.0.2 (node 1) and 127.0.0.3 (node 2); node 2 answers as
    worker 7 with a clock 2 s ahead of node 1's."""

    async def main() -> None:
        clock = ManualClock()
        ahead = ManualClock(wall_ms=clock.wall_ms() + 2000)
        one_address = ("127.0.0.2", find_free_port("127.0.0.2"))
        two_address = ("127.0.0.3", find_free_port("127.0.0.3"))
        one = NodeTransport(1, one_address, {2: two_address}, "s3cret")
        two = NodeTransport(2, two_address, {}, "s3cret")
        two.register(peers.SERVICE, WhoamiService(
            lambda: {"worker_id": 7, "wall_ms": ahead.wall_ms(), "epoch_ms": 0}))
        await one.start()
        await two.start()
        try:
            await body(one, two, clock)
        finally:
            await one.close()
            await two.close()

    asyncio.run(asyncio.wait_for(main(), HANG_S))


def test_a_peer_is_asked_over_the_node_port() -> None:
    async def body(one: NodeTransport, two: NodeTransport, clock: ManualClock) -> None:
        check = PeerCheck(one, {2: two.listen}, clock)
        [got] = await check.probe_all()
        assert (got.node_id, got.worker_id, got.offset_ms) == (2, 7, 2000.0)
        assert got.address == f"{two.listen[0]}:{two.listen[1]}"
        assert judge(7, [got], 1000) is not None and judge(1, [got], 5000) is None
        # A new connection is warmed up first: the exchange measured is a request alone.
        assert two.server.stats["requests"] == 2
        await check.probe_all()
        assert two.server.stats["requests"] == 3

    run(body)


def test_the_service_refuses_other_requests_and_groups() -> None:
    async def body(one: NodeTransport, two: NodeTransport, clock: ManualClock) -> None:
        with pytest.raises(RemoteError, match="unknown request"):
            await one.request(2, peers.SERVICE, peers.GROUP, {"op": "drop"}, timeout=HANG_S)
        with pytest.raises(RemoteError, match="unknown group 3"):
            await one.request(2, peers.SERVICE, 3, peers.whoami_request(), timeout=HANG_S)
        one.send(2, peers.SERVICE, 0, "a one-way message is ignored")
        answer = await one.request(2, peers.SERVICE, 0, peers.whoami_request(), timeout=HANG_S)
        assert answer["worker_id"] == 7

    run(body)


def test_a_peer_that_is_down_is_skipped() -> None:
    async def body(one: NodeTransport, two: NodeTransport, clock: ManualClock) -> None:
        await two.close()
        check = PeerCheck(one, {2: two.listen}, clock)
        assert await check.probe_all() == []
        assert check.unreachable == {2}

    run(body)
