"""Shard groups that grow and shrink by Raft membership (shardstore/replicas.py,
replica_moves.py, admin_replicas.py).

Sans I/O: the configuration's replica changes (begin, done, refusals, a retried request,
old records) and the parsers, fuzzed. As processes (`python -m shardstore serve`): a
keyspace `default` of nodes 1-3 with 2 shards of 3 replicas, node 4 running and serving
no keyspace. `shardstore admin add-node --replica-of 1` makes node 4 a replica of shard 1
(it takes the leader's snapshot and catches up); `remove-node --id 1`, SIGKILLed once while
it runs together with the shard leader driving the change (restarted at once) and then run
again, moves node 1's replica of shard 2 to node 4 and drops its
replica of shard 1 (which keeps 3), while a writer writes: every acknowledged write reads
back, node 1 deletes its shards' files, CLUSTER SHARDS and CLUSTER NODES show the new
members, `admin check` passes, and removing a second node is refused before anything
changes."""

from __future__ import annotations

import asyncio
import io
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.cluster import ClusterNode, RedisCluster

from core.raft.ready import Role
from shardstore import admin, cluster
from shardstore.admin_replicas import (
    ShardRecord,
    add_replicas,
    parse_replica_of,
    plan_leave,
)
from shardstore.cluster import ClusterConfig, ConfigMachine, Shard
from shardstore.keyspaces import encode_add_node
from shardstore.replica_moves import ReplicaDriver, caught_up, stale_shards
from shardstore.replicas import (
    CAUGHT_UP_LAG,
    ERR_REPLICA_SYNTAX,
    encode_change,
    encode_done,
    founders_for,
    parse_replica,
)
from tests.conftest import find_free_port
from tests.procs import ROOT, Daemon, wait_for_tcp_port
from tests.shardstore_procs import as_map

HOSTS4 = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
WAIT_S = 60.0
POLL_S = 0.1
SEED_KEYS = 150
EXAMPLES = 60  # per hypothesis test: the file stays lean in make test


README_SENTENCE = (
    "`SHARDSTORE.REPLICA ADD|REMOVE shard node` and `SHARDSTORE.REPLICA MOVE shard from to` "
    "are the same changes by hand: Raft membership changes of the shard's group, recorded "
    "with an epoch in the configuration group, so `CLUSTER SHARDS` and `CLUSTER NODES` show "
    "them on every node.")


def test_the_readme_says_what_these_tests_show() -> None:
    text = " ".join((ROOT / "README.md").read_text().split())
    assert README_SENTENCE in text


# -- sans I/O -----------------------------------------------------------------------------------

def _machine() -> ConfigMachine:
    machine = ConfigMachine()
    init = cluster.encode_init([1, 2, 3, 4], 2, 3, {"default": [1, 2, 3]})
    machine.apply([(1, init), (2, encode_add_node("default", 4, replica=True))])
    return machine


def test_a_replica_joins_and_one_leaves_in_the_configuration() -> None:
    machine = _machine()
    config = machine.config
    assert config.spaces["default"].nodes == [1, 2, 3, 4] and 4 not in {
        m for s in config.shards.values() for m in s.members}
    epoch = config.epoch
    assert machine.apply([(3, encode_change(2, 4, 2))]) == [True]
    shard = config.shards[2]
    assert shard.members == [3, 1, 4, 2] and (shard.joining, shard.leaving) == (4, 2)
    assert founders_for(shard, 4) == () and founders_for(shard, 3) == (2, 3, 1)
    assert config.epoch == epoch + 1 and 2 in config.hosted_by(4)[0].members
    assert machine.apply([(4, encode_change(2, 4, 2)),  # asked again: no-op
                          (5, encode_change(2, 4, 3)),
                          (6, encode_done(2, 4, 3)),  # not the change under way
                          (7, encode_done(2, 4, 2)),
                          (8, encode_done(2, 4, 2))]) == [
        True, "ERR shard 2 is changing its replicas already (node 4 joining, node 2 "
              "leaving): wait until it is done", False, True, False]
    assert shard.members == [3, 1, 4] and shard.founders == [3, 1]
    assert (shard.joining, shard.leaving) == (0, 0) and config.epoch == epoch + 2
    wire = msgpack.unpackb(machine.snapshot())
    assert ClusterConfig.from_wire(wire).shards[2] == shard


def test_replica_changes_are_refused_with_clear_errors() -> None:
    machine = _machine()
    assert machine.apply([
        (3, encode_change(1, 0, 1)),  # 2 members left of 3
        (4, encode_change(1, 5, 0)),  # node 5 serves no keyspace
        (5, encode_change(1, 2, 0)),
        (6, encode_change(1, 0, 4)),
        (7, encode_change(9, 4, 0)),
    ]) == [
        "ERR shard 1 keeps 3 replicas and keyspace 'default' has no other node to take the "
        "one on node 1 (it would be left with 3 nodes): add a node first",
        "ERR node 5 does not serve keyspace 'default' of shard 1: it joins the keyspace "
        "first (KEYSPACE.ADDNODE default 5 REPLICA)",
        "ERR node 2 is a replica of shard 1 already",
        "ERR node 4 is not a replica of shard 1",
        "ERR no shard 9"]
    assert machine.apply([(8, encode_change(1, 4, 0)), (9, encode_done(1, 4, 0)),
                          (10, encode_change(1, 0, 1))]) == [True, True, True]
    assert machine.config.shards[1].members == [2, 3, 4, 1]  # 4 members keep 3 without 1


def test_old_shard_records_still_read() -> None:
    old = Shard.from_wire([5, 5, [1, 2], "users"])
    assert old == Shard(5, 5, [1, 2], "users", [1, 2], 2, 0, 0)
    assert Shard.from_wire([6, 6, [3]]).keyspace == "default"
    assert Shard.from_wire(old.to_wire()) == old
    retired = Shard(7, 7, [], "")
    assert Shard.from_wire(retired.to_wire()) == retired


@settings(max_examples=EXAMPLES)
@given(st.integers(1, 10**6), st.lists(st.integers(1, 99), max_size=5, unique=True),
       st.sampled_from(["default", "users", ""]), st.integers(0, 5), st.integers(0, 99),
       st.integers(0, 99), st.booleans())
def test_shard_records_survive_the_wire(sid: int, members: list[int], keyspace: str,
                                        replicas: int, joining: int, leaving: int,
                                        founders_given: bool) -> None:
    shard = Shard(sid, sid, members, keyspace, members[:2] if founders_given else None,
                  replicas, joining, leaving)
    wire = msgpack.unpackb(msgpack.packb(shard.to_wire()))
    assert Shard.from_wire(wire) == shard
    assert shard.founders == (members[:2] if founders_given else members)
    assert shard.replicas == (replicas or len(members))


def test_the_admin_plans_where_each_replica_goes() -> None:
    records = [ShardRecord(1, [1, 2, 3, 4], 8192, 3, 0, 0),
               ShardRecord(2, [2, 3, 1], 8192, 3, 0, 0),
               ShardRecord(3, [2, 3], 0, 2, 0, 0)]
    assert plan_leave(records, [1, 2, 3, 4], 1, "default") == ([1, 2], [])
    movable, stuck = plan_leave(records, [1, 2, 3], 1, "default")
    assert movable == [1] and [r.shard for r in stuck] == [2]
    assert parse_replica_of("all", [2, 1], "default") == [1, 2]
    assert parse_replica_of("2, 1", [1, 2], "default") == [1, 2]
    with pytest.raises(ValueError, match=r"names shards \[7\]"):
        parse_replica_of("1,7", [1, 2], "default")
    with pytest.raises(ValueError, match="wants `all` or shard ids"):
        parse_replica_of("one", [1, 2], "default")


class _ListingClient:
    """Answers KEYSPACE.LIST as a node of `users` does; anything else is a test failure."""

    def execute_command(self, *args: Any) -> Any:
        assert args[0] == "KEYSPACE.LIST", args
        return [{b"name": b"default", b"nodes": [1, 2, 3], b"shards": [1, 2], b"mine": 0},
                {b"name": b"users", b"nodes": [4], b"shards": [3], b"mine": 1}]


def test_add_node_as_a_replica_wants_a_node_of_that_keyspace() -> None:
    with pytest.raises(ValueError, match="--node serves keyspace 'users', not 'default'"):
        add_replicas(_ListingClient(), "default", 5, "all", io.StringIO())


def test_the_replica_command_parses() -> None:
    assert parse_replica([b"SHARDSTORE.REPLICA", b"add", b"3", b"4"]) == ("ADD", 3, 4, 0)
    assert parse_replica([b"X", b"MOVE", b"3", b"1", b"4"]) == ("MOVE", 3, 1, 4)
    for bad in ([b"X", b"ADD", b"3"], [b"X", b"MOVE", b"3", b"1", b"1"],
                [b"X", b"DROP", b"3", b"4"], [b"X", b"ADD", b"0", b"4"],
                [b"X", b"ADD", b"3", b"-4"], [b"X", b"REMOVE", b"3", b"4", b"5"]):
        with pytest.raises(ValueError, match="syntax"):
            parse_replica(bad)


@settings(max_examples=EXAMPLES)
@given(st.lists(st.binary(max_size=12), min_size=1, max_size=6))
def test_the_replica_command_parser_takes_any_words(words: list[bytes]) -> None:
    try:
        action, shard, node, to = parse_replica([b"SHARDSTORE.REPLICA", *words])
    except ValueError as exc:
        assert str(exc) == ERR_REPLICA_SYNTAX
        return
    assert action in ("ADD", "REMOVE", "MOVE") and shard >= 1 and node >= 1
    assert (to >= 1 and to != node) if action == "MOVE" else to == 0


@settings(max_examples=EXAMPLES)
@given(st.lists(st.tuples(st.sampled_from(["change", "done"]), st.integers(1, 3),
                          st.integers(0, 5), st.integers(0, 5)), max_size=30))
def test_any_sequence_of_changes_keeps_the_configuration_sound(
        ops: list[tuple[str, int, int, int]]) -> None:
    machine = _machine()
    for i, (kind, sid, add, remove) in enumerate(ops):
        encode = encode_change if kind == "change" else encode_done
        machine.apply([(i + 3, encode(sid, add, remove))])
        for shard in machine.config.shards.values():
            assert len(shard.members) == len(set(shard.members)) >= shard.replicas - 1
            assert set(shard.founders) <= set(shard.members)
            assert set(shard.members) <= set(machine.config.spaces["default"].nodes)
            assert shard.joining in (0, *shard.members) and shard.leaving in (
                0, *shard.members)
            if not shard.leaving:
                assert len(shard.members) >= shard.replicas


# -- as processes -------------------------------------------------------------------------------

def _four_nodes(tmp: Path) -> list[Daemon]:
    raft = {i + 1: (host, find_free_port(host)) for i, host in enumerate(HOSTS4)}
    peers = ",".join(f"{i}={h}:{p}" for i, (h, p) in raft.items())
    daemons = []
    for node_id, (host, raft_port) in raft.items():
        port = find_free_port(host)
        argv = ["shardstore", "serve", "--id", str(node_id), "--listen", f"{host}:{port}",
                "--peer-listen", f"{host}:{raft_port}", "--peers", peers,
                "--data-dir", str(tmp / f"n{node_id}"), "--shards", "2", "--replicas", "3",
                "--keyspace", "default=1,2,3", "--snapshot-every", "20",
                "--compaction-margin", "5"]
        daemons.append(Daemon(argv, host, port, tmp / f"n{node_id}.log"))
    return daemons


def _admin(nodes: list[Daemon], *args: str, wait: bool = True) -> Any:
    argv = [sys.executable, "-m", "shardstore", "admin", "--node",
            ",".join(d.address for d in nodes), "--timeout", str(WAIT_S), *args]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=WAIT_S * 2)
    return proc.returncode, out + err


def _client(node: Daemon) -> redis.Redis:
    return redis.Redis(host=node.host, port=node.port, socket_timeout=10)


def _shards(node: Daemon) -> dict[int, dict[bytes, Any]]:
    with _client(node) as client:
        rows = client.execute_command("SHARDSTORE.SHARDS")
    return {int(r[b"shard"]): r for r in map(as_map, rows)}


def _until(check: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError, KeyError):
            pass  # a node down or refusing in mid-change: poll again until the deadline
        assert time.monotonic() < deadline, what
        time.sleep(POLL_S)


class Writer(threading.Thread):
    """Writes w<i> = i through a RedisCluster until stopped; keeps what was acknowledged."""

    def __init__(self, nodes: list[Daemon]) -> None:
        super().__init__(daemon=True)
        self.rc = RedisCluster(startup_nodes=[ClusterNode(d.host, d.port) for d in nodes],
                               socket_timeout=10)
        self.acked: list[int] = []
        self.failed = 0
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            try:
                if self.rc.set(f"w{i}", i):
                    self.acked.append(i)
            except (redis.RedisError, OSError):
                self.failed += 1  # refused or unknown: not acknowledged
                time.sleep(POLL_S)
            i += 1


def test_a_node_joins_as_a_replica_and_another_leaves_under_writes(tmp_path: Path) -> None:
    daemons = _four_nodes(tmp_path)
    try:
        for daemon in daemons:  # all at once: their start-ups overlap
            daemon.start(wait=False)
        for daemon in daemons:
            wait_for_tcp_port(daemon.host, daemon.port, timeout=WAIT_S, proc=daemon.proc)
        _grow_and_shrink(daemons, tmp_path)
    finally:
        for daemon in daemons:
            daemon.stop()


def _grow_and_shrink(daemons: list[Daemon], tmp: Path) -> None:
    one, two, three, four = daemons
    _until(lambda: all(len(r[b"members"]) == 3 for r in _shards(two).values())
           and _client(two).execute_command("CLUSTER", "INFO").find(b"state:ok") > 0,
           "the keyspace formed")
    seed = RedisCluster(host=two.host, port=two.port, socket_timeout=10)
    for i in range(SEED_KEYS):  # one Raft entry each: the logs are cut behind snapshots
        assert seed.set(f"k{i}", f"v{i}")
    deadline = time.monotonic() + WAIT_S
    while True:  # until node 4 has published its client address to the others
        code, text = _admin([two, three], "add-node", "--keyspace", "default", "--id", "4",
                            "--replica-of", "1")
        if "node 4 is not running" not in text or time.monotonic() > deadline:
            break
        time.sleep(POLL_S)
    assert code == 0, text
    assert "1/1 replicas added on node 4" in text and "as a replica of shards [1]" in text
    assert _shards(two)[1][b"members"] == [1, 2, 3, 4]
    _until(lambda: _status_keys(four).get(1) == _status_keys(two).get(1),
           "node 4 caught up on shard 1")
    assert "restored the snapshot" in four.log()  # streamed to it, not replayed from a log
    writer = Writer([two, three])
    writer.start()
    _until(lambda: len(writer.acked) > 20, "writes go on")
    first = _admin([two, three], "remove-node", "--keyspace", "default", "--id", "1",
                   wait=False)
    _until(lambda: any(r[b"leaving"] == 1 or 1 not in r[b"members"]
                       for r in _shards(two).values()), "a replica change began")
    changing = next((sid for sid, r in _shards(two).items() if r[b"leaving"] == 1), 2)
    victim = _leader_of(daemons, changing) or two  # the shard leader driving the change
    first.send_signal(signal.SIGKILL)  # the admin dies mid-way; run again, it goes on
    first.wait(timeout=10)
    victim.kill()  # and so does the driving shard leader, restarted on its data at once
    victim.start(wait=False)
    others = [d for d in (two, three, four) if d is not victim]
    code, text = _admin(others, "remove-node", "--keyspace", "default", "--id", "1")
    assert code == 0, text
    wait_for_tcp_port(victim.host, victim.port, timeout=WAIT_S, proc=victim.proc)
    assert "node 1 left keyspace default" in text, text  # the moves: by the members below
    time.sleep(0.3)  # writes go on after the change, to the new members
    writer.stop.set()
    writer.join(timeout=WAIT_S)
    _check_everything_there(two, seed, writer)
    _check_membership(daemons, tmp)
    statuses = [_status(d) for d in daemons]
    assert sum(int(s[b"replica_steps"]) for s in statuses) >= 1
    assert int(statuses[1][b"replica_changes"]) == 0
    logs = "".join(d.log() for d in daemons)  # each change ended by a shard leader
    for change in ("shard 1: replicas changed (+4 -0)", "shard 1: replicas changed (+0 -1)",
                   "shard 2: replicas changed (+4 -1)"):
        assert change in logs, change
    lines: list[str] = []  # in this process: a command-line start-up less each
    with _client(two) as client:
        assert admin.check(client, lines.append) == 0, lines
        assert lines[-1] == "[OK] All checks passed."
        with pytest.raises(ValueError, match="has no other node to take the one on node 2"):
            admin.remove_node(client, "default", 2, 128, io.StringIO())
    assert all(len(r[b"members"]) == 3 for r in _shards(two).values())
    seed.close()
    writer.rc.close()


def _leader_of(daemons: list[Daemon], sid: int) -> Daemon | None:
    """The daemon that says it leads shard `sid` now, if one does."""
    for daemon in daemons:
        try:
            shards = map(as_map, _status(daemon)[b"shards"])
        except (redis.RedisError, OSError):
            continue
        if any(int(s[b"shard"]) == sid and s[b"role"] == b"leader" for s in shards):
            return daemon
    return None


def _status(node: Daemon) -> dict[bytes, Any]:
    with _client(node) as client:
        return as_map(client.execute_command("SHARDSTORE.STATUS"))


def _status_keys(node: Daemon) -> dict[int, int]:
    status = _status(node)
    return {int(s[b"shard"]): int(s[b"keys"]) for s in map(as_map, status[b"shards"])}


def _check_everything_there(node: Daemon, seed: RedisCluster, writer: Writer) -> None:
    fresh = RedisCluster(host=node.host, port=node.port, socket_timeout=10)
    assert len(writer.acked) > 20
    pipe = fresh.pipeline()  # one round trip per node, not per key
    for i in range(SEED_KEYS):
        pipe.get(f"k{i}")
    for i in writer.acked:
        pipe.get(f"w{i}")
    found = pipe.execute()
    assert found[:SEED_KEYS] == [f"v{i}".encode() for i in range(SEED_KEYS)]
    assert found[SEED_KEYS:] == [str(i).encode() for i in writer.acked]
    fresh.close()


def _check_membership(daemons: list[Daemon], tmp: Path) -> None:
    one, two, _, four = daemons
    shards = _shards(two)
    assert sorted(shards[1][b"members"]) == [2, 3, 4] == sorted(shards[2][b"members"])
    assert all(r[b"joining"] == r[b"leaving"] == 0 for r in shards.values())
    gone = [tmp / "n1" / where / str(sid) for where in ("shards", "groups") for sid in (1, 2)]
    _until(lambda: not any(p.exists() for p in gone), "node 1 deleted its shards")
    with _client(one) as c1, _client(four) as c4:
        name1, name4 = (_text(c.execute_command("CLUSTER", "MYID")) for c in (c1, c4))
    with _client(two) as client:
        text = _text(client.execute_command("CLUSTER", "NODES"))
        assert name1 not in text and name4 in text
        assert f":{four.port}@" in text and f":{one.port}@" not in text
        for shard in client.execute_command("CLUSTER", "SHARDS"):
            listed = _field(shard, "nodes")
            ports = sorted(int(_field(n, "port")) for n in listed)
            assert four.port in ports and one.port not in ports and len(ports) == 3


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _field(record: Any, name: str) -> Any:
    return as_map(record).get(name.encode())



# -- the shard leader's steps, with a stand-in group ---------------------------------------------

class _Progress:
    def __init__(self, match: int) -> None:
        self.match = match


class _Raft:
    """The parts of a core.raft Node the driver reads, as the leader of a group."""

    def __init__(self, me: int, voters: set[int], committed: int) -> None:
        self.role = Role.LEADER
        self.voters = set(voters)
        self.committed = committed
        self.progress = {v: _Progress(committed) for v in voters}
        self.membership = types.SimpleNamespace(last_change_index=0)
        self.me = me


class _Group:
    def __init__(self, raft: _Raft) -> None:
        self.node = raft
        self.calls: list[tuple[str, int]] = []

    async def add_node(self, node_id: int, address: tuple[str, int], timeout: float) -> int:
        self.calls.append(("add", node_id))
        self.node.voters.add(node_id)
        self.node.progress[node_id] = _Progress(0)  # it has the log still to take
        return 1

    async def remove_node(self, node_id: int, timeout: float) -> int:
        self.calls.append(("remove", node_id))
        self.node.voters.discard(node_id)
        return 1

    async def transfer_leadership(self, to: int, timeout: float) -> int:
        self.calls.append(("transfer", to))
        self.node.role = Role.FOLLOWER
        return to


class _DriverNode:
    def __init__(self, me: int, machine: ConfigMachine, group: _Group) -> None:
        self.me = me
        self.machine = machine
        self.host = types.SimpleNamespace(group=lambda gid: group, group_ids=lambda: [0])
        self.settings = types.SimpleNamespace(peers={n: ("127.0.0.1", 9000 + n)
                                                     for n in range(1, 5)})
        self.machines = {sid: object() for sid in machine.config.shards}
        self.written: list[bytes] = []
        self.data_dir = Path("/nonexistent-shardstore-test-dir")
        self.barriers = 0
        self.service = types.SimpleNamespace(barrier=self._barrier)

    async def _barrier(self, group: int) -> int:
        self.barriers += 1
        return 1

    @property
    def full_config(self) -> ClusterConfig:
        return self.machine.config

    async def config_write(self, entry: bytes) -> Any:
        self.written.append(entry)
        return self.machine.apply([(100 + len(self.written), entry)])[0]


def test_the_shard_leader_moves_a_replica_step_by_step_and_a_successor_resumes() -> None:
    async def main() -> None:
        machine = _machine()
        assert machine.apply([(3, encode_change(1, 4, 1))]) == [True]  # 1 leads shard 1
        raft = _Raft(1, {1, 2, 3}, committed=500)
        group = _Group(raft)
        leader = ReplicaDriver(_DriverNode(1, machine, group))  # type: ignore[arg-type]
        await leader.run_once()
        assert group.calls == [("add", 4)]
        await leader.run_once()  # node 4 trails by 500 entries: nothing
        assert group.calls == [("add", 4)] and caught_up(raft, 4) is False
        raft.progress[4].match = 500 - CAUGHT_UP_LAG
        await leader.run_once()  # caught up; the leaving leader hands over first
        assert group.calls[-1] == ("transfer", 2)  # the most up-to-date other voter
        heir = 2
        assert raft.role is Role.FOLLOWER
        await leader.run_once()  # not the leader any more: nothing
        raft.role, raft.me = Role.LEADER, heir  # the heir's driver, fresh, resumes
        successor = ReplicaDriver(_DriverNode(heir, machine, group))  # type: ignore[arg-type]
        await successor.run_once()
        assert group.calls[-1] == ("remove", 1) and raft.voters == {2, 3, 4}
        raft.membership.last_change_index = 501  # not committed yet: no DONE
        await successor.run_once()
        assert machine.config.shards[1].leaving == 1
        raft.committed = raft.progress[4].match = 501
        await successor.run_once()
        shard = machine.config.shards[1]
        assert sorted(shard.members) == [2, 3, 4] and (shard.joining, shard.leaving) == (0, 0)
        await successor.run_once()  # nothing left to do
        assert len(group.calls) == 3 and successor.steps == 2

    asyncio.run(main())


def test_a_node_deletes_the_files_of_shards_it_left_while_down(tmp_path: Path) -> None:
    machine = _machine()
    machine.apply([(3, encode_change(2, 4, 1)), (4, encode_done(2, 4, 1))])
    assert stale_shards(machine.config, 1, [1, 2, 9], []) == [2]  # 9: unknown, kept
    assert stale_shards(machine.config, 1, [1, 2], [2]) == []  # open here: kept
    for root in ("shards", "groups"):
        for sid in ("0", "1", "2"):
            (tmp_path / root / sid).mkdir(parents=True)
    raft = _Raft(1, {1, 2, 3}, committed=5)
    node = _DriverNode(1, machine, _Group(raft))
    node.data_dir = tmp_path
    node.machines = {1: object()}
    driver = ReplicaDriver(node)  # type: ignore[arg-type]
    asyncio.run(driver.run_once())
    assert driver.swept and node.barriers == 1
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.glob("*/*"))
    assert left == ["groups/0", "groups/1", "shards/0", "shards/1"]


@settings(max_examples=EXAMPLES)
@given(st.text(max_size=20), st.lists(st.integers(1, 9), min_size=1, max_size=4))
def test_the_replica_of_option_parser_takes_any_text(text: str, shards: list[int]) -> None:
    try:
        chosen = parse_replica_of(text, shards, "default")
    except ValueError as exc:
        assert "--replica-of" in str(exc)
        return
    assert chosen and set(chosen) <= set(shards) and chosen == sorted(set(chosen))
