"""core.rpc.router and core.raft.host: one node port for many services and Raft groups.

In-process, real sockets on 127.0.0.1: the router's refusals (malformed envelopes, unknown
services and groups), two services sharing one port behind the cluster secret, and three
RaftHosts holding several groups each: every group elects and commits on its own, groups
are created and destroyed at run time (files included), messages to one peer travel in
shared frames, fsyncs are shared across the groups of a pass, and `everysec` is refused for
a group of several members. Nothing asserts on speed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from core.raft.errors import ConfigError
from core.raft.group import FSYNC_EVERYSEC
from core.raft.host import HostConfig, RaftHost
from core.rpc import NodeTransport, RemoteError, ServiceRouter, UnknownGroup
from core.storage import DataDirLockedError
from tests.conftest import find_free_port

SECRET = "host test secret"
HANG_S = 20.0


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 60))


async def until(predicate: Callable[[], Any], what: str) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HANG_S
    while not (value := predicate()):
        if loop.time() > deadline:
            raise AssertionError(f"hang: still waiting for {what}")
        await asyncio.sleep(0.02)
    return value


class Echo:
    """A service that records messages and answers requests with its name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.messages: list[tuple[int, int, Any]] = []

    def on_message(self, peer_id: int, group: int, payload: Any) -> None:
        self.messages.append((peer_id, group, payload))

    async def on_request(self, peer_id: int, group: int, payload: Any) -> Any:
        if group == 99:
            raise UnknownGroup(self.name, group)
        return [self.name, group, payload]


class Counter:
    """A tiny state machine: each entry appends its bytes."""

    def __init__(self) -> None:
        self.items: list[bytes] = []

    def apply(self, entries: Any) -> list[int]:
        out = []
        for _, data in entries:
            self.items.append(data)
            out.append(len(self.items))
        return out

    def snapshot(self) -> bytes:
        return msgpack.packb(self.items)

    def restore(self, blob: bytes) -> None:
        self.items = msgpack.unpackb(blob)


# -- the router, sans network ------------------------------------------------------------------


def test_router_drops_malformed_and_unknown_messages_and_counts_them() -> None:
    router = ServiceRouter()
    echo = Echo("a")
    router.register("a", echo)
    for body in [None, [], ["a", 1], ["a", "1", 2], ["", 0, 1], [1, 0, 1], ["x" * 65, 0, 1]]:
        router.on_message(2, body)
    router.on_message(2, ["b", 0, "to nobody"])
    router.on_message(2, ["a", 3, "hello"])
    assert echo.messages == [(2, 3, "hello")]
    assert router.stats == {"malformed": 7, "unknown_service": 1}
    with pytest.raises(ValueError):
        router.register("a", echo)


# -- the transport, real sockets -----------------------------------------------------------------


def test_two_services_share_one_port_and_refusals_come_back_as_errors() -> None:
    async def main() -> None:
        ports = {1: find_free_port(), 2: find_free_port()}
        book = {i: ("127.0.0.1", p) for i, p in ports.items()}
        one = NodeTransport(1, book[1], book, SECRET)
        two = NodeTransport(2, book[2], book, SECRET)
        a, b = Echo("a"), Echo("b")
        two.register("a", a)
        two.register("b", b)
        await one.start()
        await two.start()
        try:
            assert await one.request(2, "a", 5, "x") == ["a", 5, "x"]
            assert await one.request(2, "b", 0, [1, 2]) == ["b", 0, [1, 2]]
            with pytest.raises(RemoteError, match="unknown service 'c'"):
                await one.request(2, "c", 0, None)
            with pytest.raises(RemoteError, match="unknown group 99"):
                await one.request(2, "a", 99, None)
            assert one.send(2, "b", 7, "one-way")
            await until(lambda: b.messages, "the one-way message")
            assert b.messages == [(1, 7, "one-way")] and not a.messages
            assert two.heard_within(1, 5.0) and not two.heard_within(3, 5.0)
        finally:
            await one.close()
            await two.close()

    run(main)


def test_a_wrong_cluster_secret_never_reaches_a_service() -> None:
    async def main() -> None:
        ports = {1: find_free_port(), 2: find_free_port()}
        book = {i: ("127.0.0.1", p) for i, p in ports.items()}
        one = NodeTransport(1, book[1], book, "not the secret",
                            backoff_min=0.01, backoff_max=0.05)
        two = NodeTransport(2, book[2], book, SECRET)
        echo = Echo("a")
        two.register("a", echo)
        await two.start()
        try:
            with pytest.raises(Exception):  # noqa: B017 - AuthError or PeerUnavailable
                await one.request(2, "a", 0, "x", timeout=2.0)
            await asyncio.sleep(0.2)
            assert not echo.messages
        finally:
            await one.close()
            await two.close()

    run(main)


# -- hosts with many groups ----------------------------------------------------------------------


class Cluster:
    """Three RaftHosts on 127.0.0.1, each holding the same groups (all three voters)."""

    def __init__(self, tmp: Path, election_tick: int = 10) -> None:
        self.election_tick = election_tick
        ports = {i: find_free_port() for i in (1, 2, 3)}
        self.book = {i: ("127.0.0.1", p) for i, p in ports.items()}
        self.tmp = tmp
        self.hosts: dict[int, RaftHost] = {}
        self.machines: dict[tuple[int, int], Counter] = {}

    async def start(self) -> None:
        for i in self.book:
            host = RaftHost(HostConfig(node_id=i, data_dir=self.tmp / f"n{i}",
                                       listen=self.book[i], peers=self.book, secret=SECRET,
                                       tick_s=0.01, election_tick=self.election_tick,
                                       heartbeat_tick=2))
            await host.start()
            self.hosts[i] = host

    def create(self, gid: int) -> None:
        for i, host in self.hosts.items():
            machine = self.machines[(i, gid)] = Counter()
            host.create_group(gid, host.group_config(gid, founders=(1, 2, 3), seed=i),
                              machine.apply, machine.snapshot, machine.restore)

    def leader(self, gid: int, among: list[RaftHost] | None = None) -> RaftHost | None:
        for host in among or list(self.hosts.values()):
            group = host.group(gid)
            if group is not None and group.node is not None and \
                    group.node.role.value == "leader":
                return host
        return None

    async def stop(self) -> None:
        for host in self.hosts.values():
            await host.stop(transfer=False)


def test_groups_elect_and_commit_independently_and_share_frames(tmp_path: Path) -> None:
    async def main() -> None:
        cluster = Cluster(tmp_path)
        await cluster.start()
        try:
            for gid in range(1, 9):
                cluster.create(gid)
            for gid in range(1, 9):
                await until(lambda g=gid: cluster.leader(g), f"a leader of group {gid}")
            host1 = cluster.hosts[1]
            writes = [host1.groups[gid].execute(f"g{gid}-{k}".encode(), forward=True)
                      for gid in range(1, 9) for k in range(20)]
            results = await asyncio.gather(*writes)
            assert sorted(set(results)) == list(range(1, 21))
            for gid in range(1, 9):
                expected = sorted(f"g{gid}-{k}".encode() for k in range(20))
                for i in (1, 2, 3):
                    await until(lambda i=i, g=gid: len(cluster.machines[(i, g)].items) == 20,
                                f"group {gid} applied on node {i}")
                    assert sorted(cluster.machines[(i, gid)].items) == expected
            stats = host1.status()
            # many groups' messages to one peer ride in shared frames
            assert stats["messages_sent"] > stats["frames_sent"]
            # a pass persists the Readies of several groups together
            assert stats["readies"] > stats["passes"]
            assert stats["groups"] == 8
        finally:
            await cluster.stop()

    run(main)


def test_groups_are_created_and_destroyed_at_run_time_with_their_files(tmp_path: Path) -> None:
    async def main() -> None:
        cluster = Cluster(tmp_path)
        await cluster.start()
        try:
            cluster.create(1)
            await until(lambda: cluster.leader(1), "a leader of group 1")
            cluster.create(2)  # while group 1 runs
            await until(lambda: cluster.leader(2), "a leader of group 2")
            host = cluster.hosts[2]
            assert await host.groups[2].execute(b"x", forward=True) == 1
            directory = tmp_path / "n2" / "groups" / "2"
            assert directory.is_dir()
            await host.destroy_group(2)
            assert not directory.exists() and host.group_ids() == [1]
            with pytest.raises(ValueError):
                cluster.create(1)
            # group 1 goes on, and a message for the destroyed group is only counted
            assert await cluster.hosts[1].groups[1].execute(b"y", forward=True) == 1
            await until(lambda: host.stats["unknown_group_messages"] > 0,
                        "traffic of group 2 reaching node 2")
        finally:
            await cluster.stop()

    run(main)


def test_restart_keeps_every_groups_log(tmp_path: Path) -> None:
    async def main() -> None:
        cluster = Cluster(tmp_path)
        await cluster.start()
        for gid in (1, 2, 3):
            cluster.create(gid)
        for gid in (1, 2, 3):
            await until(lambda g=gid: cluster.leader(g), f"a leader of group {gid}")
            await cluster.hosts[1].groups[gid].execute(f"v{gid}".encode(), forward=True)
        await cluster.stop()
        again = Cluster(tmp_path)
        again.book = cluster.book
        await again.start()
        try:
            for gid in (1, 2, 3):
                again.create(gid)
            for gid in (1, 2, 3):
                await until(lambda g=gid: again.leader(g), f"a leader of group {gid}")
                await again.hosts[3].groups[gid].read_barrier()
                assert again.machines[(3, gid)].items == [f"v{gid}".encode()]
        finally:
            await again.stop()

    run(main)


def test_everysec_is_for_single_member_groups_only(tmp_path: Path) -> None:
    async def main() -> None:
        port = find_free_port()
        host = RaftHost(HostConfig(node_id=1, data_dir=tmp_path, listen=("127.0.0.1", port),
                                   tick_s=0.01, election_tick=10))
        await host.start()
        try:
            machine = Counter()
            with pytest.raises(ConfigError, match="single-member"):
                host.create_group(1, host.group_config(1, founders=(1, 2, 3),
                                                       fsync=FSYNC_EVERYSEC),
                                  machine.apply, machine.snapshot, machine.restore)
            group = host.create_group(2, host.group_config(2, founders=(1,),
                                                           fsync=FSYNC_EVERYSEC),
                                      machine.apply, machine.snapshot, machine.restore)
            await until(lambda: group.node is not None and group.node.role.value == "leader",
                        "the single member leading")
            fsyncs = group.storage.fsyncs if group.storage else 0
            for k in range(50):
                await group.propose(f"{k}".encode())
            assert len(machine.items) == 50
            # the appends were not fsynced one by one; the host syncs them within a second
            await until(lambda: group.storage is not None and not group.storage.unsynced,
                        "the everysec fsync")
            assert group.storage is not None and group.storage.fsyncs - fsyncs < 50
            with pytest.raises(DataDirLockedError):
                other = RaftHost(HostConfig(node_id=1, data_dir=tmp_path,
                                            listen=("127.0.0.1", find_free_port())))
                await other.start()
        finally:
            await host.stop()

    run(main)


def test_idle_groups_quiesce_and_wake_when_their_leaders_node_dies(tmp_path: Path) -> None:
    async def main() -> None:
        # a long liveness timeout (0.6 s): a busy machine's loop lag must not look like a
        # node going down and back, which wakes groups and would send messages
        cluster = Cluster(tmp_path, election_tick=60)
        await cluster.start()
        try:
            for gid in range(1, 21):
                cluster.create(gid)
            for gid in range(1, 21):
                await until(lambda g=gid: cluster.leader(g), f"a leader of group {gid}")
            await until(lambda: all(h.status()["quiesced"] == 20
                                    for h in cluster.hosts.values()), "every group quiesced")
            host1 = cluster.hosts[1]
            before = host1.status()["messages_sent"]
            await asyncio.sleep(0.3)  # 30 ticks: only the per-peer liveness frames go out
            assert host1.status()["messages_sent"] == before
            # the node leading the most groups dies (no hand-over): every group it led
            # elects a new leader among the other two, which were quiesced
            victim = max(cluster.hosts.values(), key=lambda h: h.status()["leading"])
            led = [g for g in range(1, 21) if cluster.leader(g) is victim]
            assert led
            await victim.stop(transfer=False)
            rest = [h for h in cluster.hosts.values() if h is not victim]
            for gid in led:
                await until(lambda g=gid: cluster.leader(g, rest), f"group {gid} re-elected")
                survivor = rest[0].groups[gid]
                assert await survivor.execute(b"after", forward=True) >= 1
            assert sum(h.stats["woken_groups"] for h in rest) >= len(led)
        finally:
            for host in cluster.hosts.values():
                await host.stop(transfer=False)

    run(main)


def test_a_lagging_replica_gets_a_multi_chunk_snapshot_streamed(tmp_path: Path) -> None:
    """The state is several MiB, the log behind it compacted: the restarted replica can only
    catch up by InstallSnapshot, which travels as chunks written to its disk as they come."""
    async def main() -> None:
        cluster = Cluster(tmp_path)
        await cluster.start()
        options = {"snapshot_every": 20, "compaction_margin": 0}
        for i, host in cluster.hosts.items():
            machine = cluster.machines[(i, 1)] = Counter()
            host.create_group(1, host.group_config(1, founders=(1, 2, 3), seed=i, **options),
                              machine.apply, machine.snapshot, machine.restore)
        leader = await until(lambda: cluster.leader(1), "a leader")
        lagging = next(i for i, h in cluster.hosts.items() if h is not leader)
        await cluster.hosts[lagging].stop(transfer=False)
        for k in range(60):  # 60 x 64 KiB: about 4 MiB of state, in four chunks or more
            await leader.groups[1].execute(bytes([k]) * 65536, forward=True)
        group = leader.groups[1]
        await until(lambda: group.storage is not None and group.storage.first_index() > 2,
                    "the leader compacting its log")
        host = RaftHost(HostConfig(node_id=lagging, data_dir=tmp_path / f"n{lagging}",
                                   listen=cluster.book[lagging], peers=cluster.book,
                                   secret=SECRET, tick_s=0.01, election_tick=10,
                                   heartbeat_tick=2))
        await host.start()
        cluster.hosts[lagging] = host
        machine = cluster.machines[(lagging, 1)] = Counter()
        replica = host.create_group(1, host.group_config(1, founders=(1, 2, 3), **options),
                                    machine.apply, machine.snapshot, machine.restore)
        try:
            await until(lambda: len(machine.items) == 60, "the replica catching up")
            assert machine.items == cluster.machines[(leader.node_id, 1)].items
            assert replica.status()["snapshots_received"] == 1
            assert group.status()["snapshots_streamed"] >= 1
            assert not list((tmp_path / f"n{lagging}").rglob("*incoming*"))
        finally:
            await cluster.stop()

    run(main)


def test_groups_quiesce_with_a_member_down_and_catch_it_up_when_it_returns(
        tmp_path: Path) -> None:
    """A leader quiesces without waiting for a member whose node is down (a quorum has the
    log); when that node comes back, the leader wakes and catches its replica up."""
    async def main() -> None:
        cluster = Cluster(tmp_path)
        await cluster.start()
        try:
            for gid in range(1, 6):
                cluster.create(gid)
            leaders = [await until(lambda g=gid: cluster.leader(g), f"a leader of {gid}")
                       for gid in range(1, 6)]
            # stop a node that leads none of the groups (transfer away from node 3 first)
            for gid, leader in zip(range(1, 6), leaders, strict=True):
                if leader.node_id == 3:
                    await leader.groups[gid].transfer_leadership(1)
            down = cluster.hosts[3]
            await down.stop(transfer=False)
            rest = [cluster.hosts[1], cluster.hosts[2]]
            for gid in range(1, 6):
                writer = await until(lambda g=gid: cluster.leader(g, rest), f"leader {gid}")
                await writer.groups[gid].execute(b"while 3 is down", forward=True)
            await until(lambda: all(h.status()["quiesced"] == 5 for h in rest),
                        "every group quiesced with node 3 down")
            host = RaftHost(HostConfig(node_id=3, data_dir=tmp_path / "n3",
                                       listen=cluster.book[3], peers=cluster.book,
                                       secret=SECRET, tick_s=0.01, election_tick=10,
                                       heartbeat_tick=2))
            await host.start()
            cluster.hosts[3] = host
            for gid in range(1, 6):
                machine = cluster.machines[(3, gid)] = Counter()
                host.create_group(gid, host.group_config(gid, founders=(1, 2, 3), seed=3),
                                  machine.apply, machine.snapshot, machine.restore)
            for gid in range(1, 6):
                await until(lambda g=gid: b"while 3 is down" in cluster.machines[(3, g)].items,
                            f"node 3 catching up group {gid}")
        finally:
            await cluster.stop()

    run(main)


def test_reads_need_no_round_only_on_the_leader_of_a_single_voter_group(
        tmp_path: Path) -> None:
    async def main() -> None:
        cluster = Cluster(tmp_path)
        await cluster.start()
        host1 = cluster.hosts[1]
        try:
            single = Counter()
            solo = host1.create_group(9, host1.group_config(9, founders=(1,)), single.apply,
                                      single.snapshot, single.restore)
            assert not solo.reads_ready()  # not leading yet
            await until(solo.reads_ready, "the single voter leading with its term committed")
            await solo.propose(b"x")
            assert solo.reads_ready() and single.items == [b"x"]
            cluster.create(1)
            leader = await until(lambda: cluster.leader(1), "a leader of group 1")
            await leader.groups[1].execute(b"y", forward=True)
            # with other voters, a leader may have been deposed unknowingly: reads need a round
            assert not any(host.groups[1].reads_ready() for host in cluster.hosts.values())
            assert await leader.groups[1].read_barrier() >= 1
        finally:
            await cluster.stop()

    run(main)


def test_a_single_member_log_restarts_after_what_its_machine_applied(tmp_path: Path) -> None:
    """A power cut with fsync everysec can keep a machine's writes and lose the log's tail:
    reopened with `machine_applied` past the log's end, the group numbers new entries after
    it. A group of several members refuses to (other nodes may hold those indexes)."""
    async def main() -> None:
        listen = ("127.0.0.1", find_free_port())
        config = HostConfig(node_id=1, data_dir=tmp_path, listen=listen, tick_s=0.01,
                            election_tick=10)
        host = RaftHost(config)
        await host.start()
        machine = Counter()
        group = host.create_group(1, host.group_config(1, founders=(1,)), machine.apply,
                                  machine.snapshot, machine.restore)
        await until(group.reads_ready, "the single member leading")
        last = await group.propose(b"a")
        await host.stop()
        host = RaftHost(config)
        await host.start()
        try:
            ahead = last + 40
            group = host.create_group(1, host.group_config(1, founders=(1,),
                                                           machine_applied=ahead),
                                      machine.apply, machine.snapshot, machine.restore)
            assert group.storage is not None and group.storage.snapshot().index == ahead
            await until(group.reads_ready, "the single member leading again")
            assert await group.propose(b"b") > ahead
            with pytest.raises(ConfigError, match="only a single-member group"):
                host.create_group(2, host.group_config(2, founders=(1, 2, 3),
                                                       machine_applied=5),
                                  machine.apply, machine.snapshot, machine.restore)
        finally:
            await host.stop()

    run(main)
