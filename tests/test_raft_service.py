"""core.raft_service with a toy daemon (tests/raft_service_toy.py): three in-process nodes on
127.0.0.2-4, real sockets, redis-py's asyncio client. Forwarding from followers, TRYAGAIN
with and without the leader hint, CLUSTER.LEADER/TRANSFER/GROUPS/INFO, the redirect hook in
both routings; then the sans-I/O parts: the service machine (address book entries and
snapshots) and the shared cluster options. Timeouts only detect hangs.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis.asyncio as aredis
from redis.exceptions import MovedError, ResponseError, TryAgainError

from core import cluster_commands, cluster_options, daemon
from core.raft_service import ERR_NO_GROUP, LEADER_HINT, Routing
from core.service_machine import SNAPSHOT_MAGIC, ServiceMachine, encode_client
from tests.conftest import find_free_port
from tests.procs import Daemon
from tests.raft_service_toy import HOSTS, ToyCluster, ToyMachine

HANG_S = 30.0


async def eventually(probe: Callable[[], Awaitable[Any]], what: str) -> Any:
    deadline = time.monotonic() + HANG_S
    while True:
        try:
            value = await probe()
        except (ResponseError, OSError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"hang: still waiting for {what}")
        await asyncio.sleep(0.05)


def client(cluster: ToyCluster, node_id: int) -> aredis.Redis:
    return aredis.Redis(host=HOSTS[node_id - 1], port=cluster.nodes[node_id].service.resp.port,
                        decode_responses=True, socket_timeout=HANG_S)


def run_cluster(tmp: Path, test: Callable[[ToyCluster], Awaitable[None]],
                **options: Any) -> None:
    async def main() -> None:
        cluster = ToyCluster(tmp, **options)
        try:
            await test(cluster)
        finally:
            await cluster.stop()

    asyncio.run(main())


async def started(cluster: ToyCluster, first: int | None = None) -> int:
    """Start all three; the leader's id once every node knows every client address. With
    `first`, that node stands for election at once instead of after its election timeout
    (a long one would otherwise be waited out before the first leader)."""
    await cluster.start()
    if first is not None:
        group = cluster.nodes[first].service.driver.group
        assert group is not None
        group.live_node().campaign()
        group.wake()

    async def settled() -> int:
        leader = cluster.leader()
        books = [n.service.book.clients for n in cluster.nodes.values()]
        return leader if all(len(b) == 3 for b in books) else 0

    return await eventually(settled, "a leader and a full address book")


# -- forwarding and the CLUSTER.* commands ----------------------------------------------------

def test_any_node_takes_writes_and_answers_the_cluster_commands(tmp_path: Path) -> None:
    async def test(cluster: ToyCluster) -> None:
        leader = await started(cluster)
        clients = {i: client(cluster, i) for i in cluster.nodes}
        for i, c in clients.items():  # followers forward; each reads its own write
            assert await c.execute_command("PUT", f"k{i}", f"v{i}") == "OK"
            assert await c.execute_command("GET", f"k{i}") == f"v{i}"
        for c in clients.values():  # linearizable reads everywhere
            assert [await c.execute_command("GET", f"k{i}") for i in (1, 2, 3)] == [
                "v1", "v2", "v3"]
        with pytest.raises(ResponseError, match="^no way$"):  # a str result is the error
            await clients[2].execute_command("FAIL", "no way")

        for i, c in clients.items():
            assert await c.execute_command("CLUSTER.LEADER") == [leader,
                                                                 cluster.address(leader)]
            info = await c.execute_command("CLUSTER.INFO")
            assert sorted(info) == ["applied_index", "clients", "commit_index", "id",
                                    "leader", "members", "role", "term"]
            assert info["id"] == i and info["leader"] == leader
            assert info["members"] == [1, 2, 3]
            assert info["clients"] == {str(n): cluster.address(n) for n in (1, 2, 3)}
            assert await c.execute_command("CLUSTER.INFO", "GROUP", "0") == info | {
                "commit_index": info["commit_index"], "applied_index": info["applied_index"]}
            [group] = await c.execute_command("CLUSTER.GROUPS")
            assert group["group"] == 0 and group["leader"] == leader
            assert group["role"] == ("leader" if i == leader else "follower")
            assert group["members"] == [1, 2, 3] and group["applied_index"] > 0

        follower = next(i for i in (1, 2, 3) if i != leader)
        target = next(i for i in (1, 2, 3) if i not in (leader, follower))
        # from a follower: sent on to the leader's client port
        assert await clients[follower].execute_command("CLUSTER.TRANSFER", target) == target

        async def moved() -> bool:
            return (await clients[follower].execute_command("CLUSTER.LEADER"))[0] == target

        await eventually(moved, "the follower to see the new leader")
        assert cluster.leader() == target
        assert await clients[target].execute_command("CLUSTER.TRANSFER", target) == target
        assert await clients[leader].execute_command("PUT", "after", "transfer") == "OK"
        assert await clients[target].execute_command("GET", "after") == "transfer"

        errors = [
            (("CLUSTER.TRANSFER", "9"), cluster_commands.ERR_NOT_MEMBER.format(9)),
            (("CLUSTER.TRANSFER", "1", "2"), "ERR wrong number of arguments"),
            (("CLUSTER.INFO", "GROUP", "7"), ERR_NO_GROUP.format(7)),
            (("CLUSTER.LEADER", "GROUP", "x"), cluster_commands.ERR_GROUP_ID),
            (("CLUSTER.INFO", "more"), "ERR wrong number of arguments for 'cluster.info'"),
            (("CLUSTER.REMOVE", "9", "GROUP", "0"), cluster_commands.ERR_NOT_MEMBER.format(9)),
            (("CLUSTER.ADD", "2", "127.0.0.9:1"), cluster_commands.ERR_MEMBER.format(2)),
            (("CLUSTER.ADD", "9", b"\xff:1"), "ERR bad address"),
            (("GPUT", "7", "k", "v"), ERR_NO_GROUP.format(7)),
        ]
        for args, text in errors:  # (redis-py drops the "ERR " of an error)
            with pytest.raises(ResponseError, match=f"^{text.removeprefix('ERR ')}"):
                await clients[follower].execute_command(*args)

    run_cluster(tmp_path, test)


# -- TRYAGAIN ---------------------------------------------------------------------------------

def test_tryagain_names_the_leader_while_it_is_stopped(tmp_path: Path) -> None:
    """The leader stops; until the followers' (long) election timeout they still know it, so
    writes and reads on them fail with TRYAGAIN and its client address."""

    async def test(cluster: ToyCluster) -> None:
        leader = await started(cluster, first=1)
        follower = next(i for i in (1, 2, 3) if i != leader)
        hint = LEADER_HINT.format(cluster.address(leader))
        await cluster.halt(leader)
        c = client(cluster, follower)
        for args in (("PUT", "k", "v"), ("GET", "k")):
            with pytest.raises(TryAgainError) as info:  # (redis-py drops "TRYAGAIN ")
                await c.execute_command(*args)
            assert str(info.value).endswith(hint)
        assert (await c.execute_command("CLUSTER.LEADER"))[0] == leader

    run_cluster(tmp_path, test, election_tick=1000, node_options={"timeout_s": 0.5})


def test_tryagain_without_a_hint_while_no_leader_is_known(tmp_path: Path) -> None:
    async def test(cluster: ToyCluster) -> None:
        await cluster.start([1])  # one founder of three: never a quorum
        c = client(cluster, 1)
        for args in (("PUT", "k", "v"), ("GET", "k"), ("CLUSTER.TRANSFER",)):
            with pytest.raises(TryAgainError) as info:
                await c.execute_command(*args)
            assert " leader=" not in str(info.value)
        assert await c.execute_command("CLUSTER.LEADER") == [0, None]

    run_cluster(tmp_path, test, node_options={"timeout_s": 0.3})


def test_tryagain_names_the_leader_while_it_is_sigstopped(tmp_path: Path) -> None:
    """Real processes: the leader hangs (SIGSTOP) for less than an election timeout; a
    follower answers TRYAGAIN with its client address, then works again after SIGCONT."""
    raft = [find_free_port(h) for h in HOSTS]
    ports = [find_free_port(h) for h in HOSTS]
    peers = ",".join(f"{i + 1}={h}:{p}" for i, (h, p) in enumerate(zip(HOSTS, raft,
                                                                        strict=True)))
    nodes = [Daemon(["tests.raft_service_toy", "--id", str(i + 1), "--listen", f"{h}:{ports[i]}",
                     "--peer-listen", f"{h}:{raft[i]}", "--peers", peers,
                     "--data-dir", str(tmp_path / f"n{i + 1}"), "--tick-ms", "10",
                     "--election-tick", "300", "--timeout-ms", "300"],
                    h, ports[i], tmp_path / f"n{i + 1}.log") for i, h in enumerate(HOSTS)]

    async def test() -> None:
        clients = [aredis.Redis(host=h, port=p, decode_responses=True,
                                socket_timeout=HANG_S) for h, p in zip(HOSTS, ports,
                                                                       strict=True)]

        async def settled() -> int:
            infos = [await c.execute_command("CLUSTER.INFO") for c in clients]
            full = all(len(i["clients"]) == 3 for i in infos)
            return int(infos[0]["leader"]) if full and infos[0]["leader"] else 0

        leader = await eventually(settled, "a leader and a full address book")
        follower = clients[leader % 3]  # another node
        assert await follower.execute_command("PUT", "k", "v") == "OK"
        nodes[leader - 1].signal(signal.SIGSTOP)
        try:
            for args in (("PUT", "k", "w"), ("GET", "k")):
                with pytest.raises(TryAgainError) as info:
                    await follower.execute_command(*args)
                assert str(info.value).endswith(
                    LEADER_HINT.format(f"{HOSTS[leader - 1]}:{ports[leader - 1]}"))
        finally:
            nodes[leader - 1].signal(signal.SIGCONT)
        assert await follower.execute_command("PUT", "k", "w") == "OK"
        assert await clients[leader - 1].execute_command("GET", "k") == "w"

    try:
        for node in nodes:
            node.start()
        asyncio.run(test())
    finally:
        for node in nodes:  # (a graceful stop would wait out hand-overs to stopped nodes)
            node.kill()


# -- the redirect hook --------------------------------------------------------------------------

SHARD_OWNERS = {7: "127.0.0.9:7000"}  # where the toy says group 7 lives


def moved(gid: int, leader: str | None) -> str:
    """The toy's redirect: Redis Cluster's MOVED, to the leader or the group's owner
    (redis-py raises it as MovedError, without the word MOVED)."""
    return f"MOVED {gid} {leader or SHARD_OWNERS.get(gid, '?')}"


def test_redirect_routing_sends_clients_to_the_leader(tmp_path: Path) -> None:
    async def test(cluster: ToyCluster) -> None:
        leader = await started(cluster)
        for i in (1, 2, 3):
            c = client(cluster, i)
            if i == leader:
                assert await c.execute_command("PUT", "k", "v") == "OK"
                continue
            with pytest.raises(MovedError, match=f"^0 {cluster.address(leader)}$"):
                await c.execute_command("PUT", "k", "v")
            with pytest.raises(MovedError, match="^7 127.0.0.9:7000$"):
                await c.execute_command("GPUT", "7", "k", "v")
        for i in (1, 2, 3):  # reads stay local, after the barrier
            assert await client(cluster, i).execute_command("GET", "k") == "v"

    run_cluster(tmp_path, test,
                node_options={"routing": Routing.REDIRECT, "redirect": moved})


def test_forward_routing_redirects_only_groups_the_node_does_not_host(tmp_path: Path) -> None:
    async def test(cluster: ToyCluster) -> None:
        leader = await started(cluster)
        follower = next(i for i in (1, 2, 3) if i != leader)
        c = client(cluster, follower)
        assert await c.execute_command("PUT", "k", "v") == "OK"
        with pytest.raises(MovedError, match="^7 127.0.0.9:7000$"):
            await c.execute_command("GPUT", "7", "k", "v")
        with pytest.raises(MovedError, match="^7 127.0.0.9:7000$"):
            await c.execute_command("CLUSTER.INFO", "GROUP", "7")

    run_cluster(tmp_path, test, node_options={"redirect": moved})


# -- sans I/O: the service machine ------------------------------------------------------------

def _set(key: str, value: str) -> bytes:
    return msgpack.packb([key, value])


def test_service_entries_are_applied_in_log_order_between_the_daemons() -> None:
    machine = ServiceMachine(ToyMachine())
    results = machine.apply([(1, _set("a", "1")), (2, encode_client(2, "h:1")),
                             (3, _set("b", "2")), (4, _set("!fail", "ERR no")),
                             (5, encode_client(2, "")), (6, encode_client(3, "h:3")),
                             (7, b"\xc1not msgpack")])
    assert results[:6] == [None, None, None, "ERR no", None, None]
    assert results[6].startswith("ERR bad service entry")
    assert machine.machine.data == {"a": "1", "b": "2"}  # type: ignore[attr-defined]
    assert machine.book.clients == {3: "h:3"}


def test_snapshots_carry_the_book_beside_the_daemons_blob() -> None:
    machine = ServiceMachine(ToyMachine())
    machine.apply([(1, _set("a", "1")), (2, encode_client(4, "h:4"))])
    blob = machine.snapshot()
    assert isinstance(blob, bytes) and blob.startswith(SNAPSHOT_MAGIC)
    assert blob.endswith(ToyMachine.snapshot(machine.machine))  # type: ignore[arg-type]
    copy = ServiceMachine(ToyMachine())
    copy.apply([(1, encode_client(9, "h:9"))])
    copy.restore(blob)
    assert copy.book.clients == {4: "h:4"}
    assert copy.machine.data == {"a": "1"}  # type: ignore[attr-defined]
    # a blob from before the service: all of it is the daemon's, and the book starts empty
    copy.restore(msgpack.packb({"z": "26"}))
    assert copy.book.clients == {} and copy.machine.data == {"z": "26"}  # type: ignore[attr-defined]


def test_an_encoder_snapshot_hook_stays_an_encoder_over_the_book_of_capture_time() -> None:
    class Encoding(ToyMachine):
        def snapshot(self) -> Any:  # type: ignore[override]
            view = dict(self.data)
            return lambda: msgpack.packb(view)

    machine = ServiceMachine(Encoding())
    machine.apply([(1, _set("a", "1")), (2, encode_client(1, "h:1"))])
    encoder = machine.snapshot()
    assert callable(encoder)
    machine.apply([(3, _set("a", "2")), (4, encode_client(1, "h:2"))])  # after capture
    copy = ServiceMachine(ToyMachine())
    copy.restore(encoder())
    assert copy.book.clients == {1: "h:1"} and copy.machine.data == {"a": "1"}  # type: ignore[attr-defined]


# -- sans I/O: the shared cluster options -------------------------------------------------------

def _serve_args(*argv: str) -> Any:
    import argparse

    parser = argparse.ArgumentParser()
    daemon.add_common_options(parser, 7000)
    cluster_options.add_cluster_options(parser, 7001)
    return parser.parse_args(list(argv))


def test_cluster_options_produce_the_driver_settings() -> None:
    args = _serve_args("--id", "2", "--listen", "127.0.0.3:7400", "--peer-listen",
                       "127.0.0.3:7500", "--peers", "1=127.0.0.2:7500, 3=127.0.0.4:7500",
                       "--data-dir", "/tmp/x", "--tick-ms", "10", "--election-tick", "20")
    settings = cluster_options.cluster_settings(args, default_port=7000,
                                                default_peer_port=7001)
    assert settings.peers == {1: ("127.0.0.2", 7500), 2: ("127.0.0.3", 7500),
                              3: ("127.0.0.4", 7500)}
    assert settings.founders == (1, 2, 3) and settings.advertise == "127.0.0.3:7400"
    config = cluster_options.driver_config(settings, snapshot_every=5)
    assert (config.node_id, config.listen, config.tick_s, config.election_tick,
            config.snapshot_every, config.data_dir) == (
        2, ("127.0.0.3", 7500), 0.01, 20, 5, Path("/tmp/x"))
    joined = cluster_options.cluster_settings(
        _serve_args("--id", "4", "--join", "--data-dir", "d"), default_port=7000,
        default_peer_port=7001)
    assert joined.founders == () and joined.peers == {4: ("127.0.0.1", 7001)}


@pytest.mark.parametrize(("argv", "error"), [
    (("--id", "1"), cluster_options.ERR_NO_DATA_DIR),
    (("--id", "0", "--data-dir", "d"), cluster_options.ERR_NODE_ID),
    (("--id", "1", "--data-dir", "d", "--peers", "x=1.2.3.4:5"), "--peers item 'x=1.2.3.4:5'"),
    (("--id", "1", "--data-dir", "d", "--peer-listen", "10.1.2.3:7001"),
     cluster_options.ERR_NO_SECRET.format("10.1.2.3")),
    (("--id", "1", "--data-dir", "d", "--listen", "10.1.2.3:7000"),
     "refusing to listen on 10.1.2.3 without --requirepass"),
    (("--id", "1", "--data-dir", "d", "--tick-ms", "0"), cluster_options.ERR_TICK),
])
def test_cluster_options_refuse_unsafe_or_broken_settings(argv: tuple[str, ...],
                                                          error: str) -> None:
    with pytest.raises(daemon.ConfigError) as info:
        cluster_options.cluster_settings(_serve_args(*argv), default_port=7000,
                                         default_peer_port=7001)
    assert str(info.value).startswith(error)


def test_a_trusted_network_may_carry_raft_without_a_secret() -> None:
    args = _serve_args("--id", "1", "--data-dir", "d", "--peer-listen", "10.1.2.3:7001",
                       "--protected-mode", "no")
    settings = cluster_options.cluster_settings(args, default_port=7000,
                                                default_peer_port=7001)
    assert settings.secret is None and settings.peer_listen == ("10.1.2.3", 7001)
