"""scheduler.client against a real three-node cluster (127.0.0.2-4): the asyncio client
adds and reads jobs, survives a SIGKILL of the node it talks to, and gives up with one error
naming every node once all are stopped; the blocking client keeps its methods.

The tests share one cluster and run in file order: the last one stops every node.
Timeouts only detect hangs (HANG_S); nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import pytest

from scheduler.client import (
    AsyncSchedulerClient,
    SchedulerClient,
    SchedulerError,
    SchedulerUnavailable,
)
from scheduler.worker import _as_dict
from scheduler.worker_links import NodeLinks
from tests.conftest import find_free_port
from tests.test_scheduler_daemon import HANG_S, Cluster, running_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("scheduler-client"), worker=False) as c:
        yield c


def nodes(cluster: Cluster) -> list[tuple[str, int]]:
    return [(n.host, n.port) for n in cluster.nodes]


def fields(reply: object) -> dict[str, object]:
    """A JOB.GET reply (RESP2: a flat list) as a dict with str keys and values."""
    assert isinstance(reply, list)
    text = [v.decode() if isinstance(v, bytes) else v for v in reply]
    return dict(zip(text[::2], text[1::2], strict=True))


def test_blocking_client_methods(cluster: Cluster) -> None:
    with SchedulerClient(nodes(cluster), deadline_s=HANG_S) as client:
        client.add("blocking", "@hourly", "true", misfire="SKIP")
        assert "blocking" in client.list()
        assert fields(client.get("blocking"))["name"] == "blocking"
        client.pause("blocking")
        client.resume("blocking")
        with pytest.raises(SchedulerError, match="no such job") as info:
            client.pause("nope")
        assert not isinstance(info.value, SchedulerUnavailable)  # no failover on -ERR
        client.delete("blocking")
        assert "blocking" not in client.list()


def test_async_client_adds_and_reads_a_job(cluster: Cluster) -> None:
    async def main() -> None:
        async with AsyncSchedulerClient(nodes(cluster), deadline_s=HANG_S,
                                        rng=random.Random(1)) as client:
            await client.add("async-job", "@every 1h", "true", misfire="SKIP")
            assert "async-job" in await client.list()
            job = fields(await client.get("async-job"))
            assert (job["name"], job["command"]) == ("async-job", "true")
            with pytest.raises(SchedulerError, match="already exists"):
                await client.add("async-job", "@hourly", "true")
            assert fields(await client.cluster_info())["role"] in ("leader", "follower")

    asyncio.run(main())


def test_async_client_survives_sigkill_of_its_node(cluster: Cluster) -> None:
    async def main() -> None:
        async with AsyncSchedulerClient(nodes(cluster), deadline_s=HANG_S) as client:
            await client.add("before-kill", "@hourly", "true")
            talking_to = client._failover.nodes[client._failover.preferred].name
            victim = next(n for n in cluster.nodes if n.address == talking_to)
            victim.kill()
            try:
                await client.add("after-kill", "@hourly", "true")
                assert {"before-kill", "after-kill"} <= set(await client.list())
                now_on = client._failover.nodes[client._failover.preferred].name
                assert now_on != talking_to
            finally:
                victim.start()

    asyncio.run(main())


def test_worker_links_mark_a_dead_node_down_and_connect_elsewhere(cluster: Cluster) -> None:
    dead = ("127.0.0.2", find_free_port("127.0.0.2"))  # nothing listens there

    async def main() -> None:
        links = NodeLinks([dead, *nodes(cluster)], 5, 0, password=None, call_timeout_s=HANG_S,
                          find_timeout_s=HANG_S, as_dict=_as_dict)
        try:
            with pytest.raises(ConnectionError):
                await links.call(4, "PING")  # channel 4's turn (4 of 4 nodes) is the dead one
            assert links.failover.nodes[0].down_until > 0
            assert await links.call(4, "PING") == "PONG"  # its next turn skips the dead node
            deadline = asyncio.get_running_loop().time() + HANG_S
            while not links.poll_node:  # the poll channel connects to the leader (0: none yet)
                assert asyncio.get_running_loop().time() < deadline, "hang: no leader"
                links.drop(0)
                await links.call(0, "PING")
            assert links.poll_node in (1, 2, 3)
        finally:
            for channel in range(5):
                links.drop(channel)

    asyncio.run(main())


def test_async_client_gives_up_naming_every_node_when_all_are_stopped(
    cluster: Cluster,
) -> None:
    for node in cluster.nodes:
        node.stop()

    async def main() -> None:
        async with AsyncSchedulerClient(nodes(cluster), deadline_s=1.0,
                                        timeout_s=1.0) as client:
            with pytest.raises(SchedulerUnavailable) as info:
                await client.list()
        assert set(info.value.errors) == {n.address for n in cluster.nodes}
        for node in cluster.nodes:
            assert node.address in str(info.value)

    asyncio.run(main())
