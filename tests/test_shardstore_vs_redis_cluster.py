"""shardstore beside a real 3-node Redis Cluster: the same scripts through redis-py's
RedisCluster, the same replies.

Redis's side: three cluster-enabled redis-servers on free loopback ports (each with
`--cluster-port` on a free port of its own), joined by `redis-cli --cluster create` with
no replicas. Our side: three `shardstore serve` processes, 3 shards of 1 replica. Both are
started once per module; each script runs on both through `RedisCluster` (so routing,
MOVED and the client's slot map are exercised too) and the results are compared, an error
by its class and text. Scripts: strings (SET's options, GETDEL, APPEND, INCR family,
overflow), hashes, expiries (EXPIRE/PEXPIRE/PERSIST/TTL/PTTL/TYPE), multi-key commands
within one hash tag, CROSSSLOT from a node, and the CLUSTER replies' shapes (KEYSLOT,
COUNTKEYSINSLOT, INFO, SLOTS, SHARDS, NODES, MYID) read raw, in RESP2 and RESP3.

Differences, each justified, and how the comparison allows for them:

| # | reply | Redis Cluster | shardstore | compared |
|---|---|---|---|---|
| 1 | node ids (MYID, NODES, SLOTS, SHARDS) | random 40-hex | 40-hex kept per data dir | by form |
| 2 | addresses, ports, bus ports | the servers' | the nodes' | left out |
| 3 | slot ranges of 3 masters | ..5460, ..10922, ..16383 | ..5460, ..10921, ..16383 | coverage |
| 4 | INFO `cluster_*_epoch` | one epoch per master | the map's epoch | as digits |
| 5 | INFO `cluster_stats_messages_<type>_*` | per gossip message type | absent | totals only |
| 6 | NODES ping-sent, pong-recv, config-epoch | gossip times, epochs | 0, 0, the map's | by form |
| 7 | SHARDS `replication-offset` | replication offset | the applied index | by type |
| 8 | TTL / PTTL | its clock | the shard leader's clock | TTL_SLACK_* |
| 9 | HELLO `server`, `version` | redis, 7.x | shardstore, ours | not compared |

Why: (1) a node id is a name; clients only match ids between replies, which each side
keeps consistent (checked: MYID is the `myself` line of NODES). (2) two clusters on
different ports. (3) where 16384 slots split into 3 is each one's layout rule; both cover
every slot exactly once. (4, 6) Redis Cluster bumps an epoch per failover by gossip,
shardstore's slot map has one epoch in its configuration group (Raft): the fields exist
and are numbers. (5) Redis prints a counter per gossip message type only for the types
it exchanged (the set varies between Redis nodes too); shardstore has no gossip, so only
the two totals. (7) a log position either way. (8) read at different instants. (9) the
servers' own names. Two differences this test found were bugs, fixed since: CLUSTER
SHARDS's node field order, and HELLO's `mode` (standalone, where Redis Cluster says cluster).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from tests.conftest import find_free_port, wait_for_tcp_port
from tests.procs import Daemon
from tests.redis_proc import REDIS_CLI, REDIS_SERVER
from tests.transcripts import RawClient

pytestmark = pytest.mark.skipif(REDIS_SERVER is None or REDIS_CLI is None,
                                reason="redis-server and redis-cli are not installed")

HOST = "127.0.0.1"
NODES = 3
READY_S = 30.0
POLL_S = 0.1
STOP_TIMEOUT_S = 10
TTL_SLACK_S = 1
TTL_SLACK_MS = 1000
Script = Callable[[RedisCluster], Any]


# -- the two clusters --------------------------------------------------------------------------


def _wait_ok(ports: list[int], what: str) -> None:
    """Until every node says cluster_state:ok and knows every node."""
    deadline = time.monotonic() + READY_S
    while True:
        try:
            infos = [redis.Redis(host=HOST, port=p, socket_timeout=5).execute_command(
                "CLUSTER", "INFO") for p in ports]
            text = [i if isinstance(i, bytes) else str(i).encode() for i in infos]
            if all(b"cluster_state:ok" in t and f"cluster_known_nodes:{NODES}".encode() in t
                   for t in text):
                return
        except redis.RedisError:
            pass
        assert time.monotonic() < deadline, f"{what} never became ok"
        time.sleep(POLL_S)


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """Three cluster-enabled redis-servers joined by redis-cli --cluster create."""
    assert REDIS_SERVER is not None and REDIS_CLI is not None
    tmp = tmp_path_factory.mktemp("redis-cluster")
    procs, ports = [], []
    try:
        for i in range(NODES):
            port = find_free_port()
            data = tmp / f"r{i}"
            data.mkdir()
            procs.append(subprocess.Popen(
                [REDIS_SERVER, "--port", str(port), "--bind", HOST, "--save", "",
                 "--appendonly", "no", "--dir", str(data), "--cluster-enabled", "yes",
                 "--cluster-config-file", str(data / "nodes.conf"),
                 "--cluster-port", str(find_free_port())],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            ports.append(port)
            wait_for_tcp_port(HOST, port, proc=procs[-1])
        made = subprocess.run([REDIS_CLI, "--cluster", "create",
                               *(f"{HOST}:{p}" for p in ports), "--cluster-replicas", "0",
                               "--cluster-yes"], capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stdout + made.stderr
        _wait_ok(ports, "the Redis Cluster")
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def shardstore_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """Three shardstore nodes, 3 shards of 1 replica."""
    tmp = tmp_path_factory.mktemp("shardstore-cluster")
    raft = {i + 1: find_free_port() for i in range(NODES)}
    peers = ",".join(f"{i}={HOST}:{p}" for i, p in raft.items())
    daemons = []
    try:
        for i in range(1, NODES + 1):
            port = find_free_port()
            argv = ["shardstore", "serve", "--id", str(i), "--listen", f"{HOST}:{port}",
                    "--peer-listen", f"{HOST}:{raft[i]}", "--peers", peers,
                    "--data-dir", str(tmp / f"n{i}"), "--shards", str(NODES),
                    "--replicas", "1"]
            daemons.append(Daemon(argv, HOST, port, tmp / f"n{i}.log"))
        for daemon in daemons:
            daemon.start()
        _wait_ok([d.port for d in daemons], "the shardstore cluster")
        yield [d.port for d in daemons]
    finally:
        for daemon in daemons:
            daemon.stop()


@pytest.fixture(scope="module")
def clients(redis_cluster: list[int], shardstore_cluster: list[int]
            ) -> Iterator[tuple[RedisCluster, RedisCluster]]:
    theirs = RedisCluster(host=HOST, port=redis_cluster[0])
    ours = RedisCluster(host=HOST, port=shardstore_cluster[0])
    try:
        yield theirs, ours
    finally:
        theirs.close()
        ours.close()


# -- the scripts through RedisCluster ----------------------------------------------------------

STRINGS: list[tuple[Any, ...]] = [
    ("SET", "s1", "v"), ("GET", "s1"), ("SET", "s1", "w", "NX"), ("SET", "s1", "w", "XX"),
    ("SET", "s1", "x", "GET"), ("GETDEL", "s1"), ("GET", "s1"), ("GETDEL", "s1"),
    ("APPEND", "s2", "ab"), ("APPEND", "s2", "cd"), ("STRLEN", "s2"), ("STRLEN", "nope"),
    ("INCR", "n1"), ("INCRBY", "n1", 10), ("DECR", "n1"), ("DECRBY", "n1", 5), ("GET", "n1"),
    ("INCR", "s2"), ("INCRBY", "n1", "x"), ("SET", "big", "9223372036854775807"),
    ("INCR", "big"), ("DECRBY", "n1", "-9223372036854775808"),
    ("SET", "s3", "v", "EX", 100, "NX"), ("SET", "s3", "v", "EX", 10, "KEEPTTL"),
    ("SET", "s3", "v", "EX", 0), ("SET", "s3", "v", "PX", "-1"), ("SET", "s3", "v", "NX", "XX"),
    ("SET", "s3", "w", "KEEPTTL"), ("GET", "s3"), ("TYPE", "s3"), ("SET", "s4"),
]
HASHES: list[tuple[Any, ...]] = [
    ("HSET", "h", "f1", "v1", "f2", "v2"), ("HSET", "h", "f1", "v3"), ("HGET", "h", "f1"),
    ("HGET", "h", "nope"), ("HMGET", "h", "f1", "nope", "f2"), ("HLEN", "h"),
    ("HINCRBY", "h", "n", 5), ("HINCRBY", "h", "n", -7), ("HINCRBY", "h", "f1", 1),
    ("HDEL", "h", "f1", "nope"), ("HGETALL", "h"), ("GET", "h"), ("INCR", "h"),
    ("TYPE", "h"), ("HSET", "h", "odd"), ("HGET", "s2", "f"), ("HGETALL", "nope"),
    ("HLEN", "nope"), ("HDEL", "h", "f2", "n"), ("EXISTS", "h"),
]
EXPIRIES: list[tuple[Any, ...]] = [
    ("SET", "e", "v"), ("TTL", "e"), ("EXPIRE", "e", 100), ("TTL", "e"), ("PTTL", "e"),
    ("PERSIST", "e"), ("PERSIST", "e"), ("TTL", "e"), ("TTL", "nope"), ("PTTL", "nope"),
    ("PEXPIRE", "e", 100000), ("PTTL", "e"), ("EXPIRE", "e", "x"), ("EXPIRE", "nope", 10),
    ("SET", "e", "w", "KEEPTTL"), ("TTL", "e"), ("SET", "e", "u"), ("TTL", "e"),
    ("EXPIRE", "e", -1), ("EXISTS", "e"), ("TYPE", "e"), ("GET", "e"),
    ("SET", "e2", "v", "PX", 100000), ("TYPE", "e2"), ("PTTL", "e2"),
]
TAGGED: list[tuple[Any, ...]] = [
    ("MSET", "{u1}a", "1", "{u1}b", "2"), ("MGET", "{u1}a", "{u1}b", "{u1}c"),
    ("EXISTS", "{u1}a", "{u1}b", "{u1}c", "{u1}a"), ("DEL", "{u1}a", "{u1}c"),
    ("UNLINK", "{u1}b"), ("MGET", "{u1}a", "{u1}b"), ("MSET", "{u1}a"),
    ("HSET", "{u1}h", "f", "v"), ("MGET", "{u1}h", "{u1}a"),
]
SCRIPTS = {"strings": STRINGS, "hashes": HASHES, "expiries": EXPIRIES, "tagged": TAGGED}


def outcome(call: Callable[[], Any]) -> Any:
    """A reply, or an error as (its class, its text): what a caller can tell apart."""
    try:
        return call()
    except redis.RedisError as exc:
        return (type(exc).__name__, str(exc))


def same(args: tuple[Any, ...], theirs: Any, ours: Any) -> bool:
    """Equal, or within the slack of a TTL/PTTL read at another instant (module header)."""
    name = str(args[0]).upper()
    if name in ("TTL", "PTTL") and isinstance(theirs, int) and theirs >= 0:
        slack = TTL_SLACK_S if name == "TTL" else TTL_SLACK_MS
        return isinstance(ours, int) and abs(ours - theirs) <= slack
    return bool(theirs == ours)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_the_same_script_gets_the_same_replies(
        clients: tuple[RedisCluster, RedisCluster], script: str) -> None:
    theirs, ours = clients
    for args in SCRIPTS[script]:  # both sides run every script in the same order
        expected = outcome(lambda args=args: theirs.execute_command(*args))
        got = outcome(lambda args=args: ours.execute_command(*args))
        assert same(args, expected, got), (args, expected, got)


# -- replies read raw from one node ------------------------------------------------------------

CROSS_SLOT = [("MSET", "a", "1", "b", "2"), ("MGET", "a", "b"), ("DEL", "a", "b"),
              ("EXISTS", "{x}1", "{y}1"), ("UNLINK", "a", "{a}b", "c")]
KEYSLOT_KEYS = ["foo", "{user1000}.following", "{user1000}.followers", "{}x", "a{b}c",
                "{{x}}", "}{a}", "", "{", "\xe9t\xe9"]
COUNTED_TAG = "{cnt}"
COUNTED_KEYS = 5
HEX_ID_CHARS = 40
INFO_SAME_VALUES = ("cluster_state", "cluster_slots_assigned", "cluster_slots_ok",
                    "cluster_slots_pfail", "cluster_slots_fail", "cluster_known_nodes",
                    "cluster_size", "total_cluster_links_buffer_limit_exceeded")
PER_TYPE_STATS = "cluster_stats_messages_"  # + ping_sent, pong_received, ... (gossip only)
STATS_TOTALS = ("cluster_stats_messages_sent", "cluster_stats_messages_received")


def raw(port: int, *args: Any, protocol: int = 2) -> Any:
    """One command on a fresh connection to the node on `port` (after HELLO 3 for RESP3)."""
    with RawClient(HOST, port) as client:
        if protocol == 3:
            client.call("HELLO", "3")
        return client.call(*args)


def both(redis_cluster: list[int], shardstore_cluster: list[int], *args: Any,
         protocol: int = 2) -> tuple[Any, Any]:
    return (raw(redis_cluster[0], *args, protocol=protocol),
            raw(shardstore_cluster[0], *args, protocol=protocol))


def test_cross_slot_and_keyslot_replies_are_redis_clusters(
        redis_cluster: list[int], shardstore_cluster: list[int]) -> None:
    for args in CROSS_SLOT:
        theirs, ours = both(redis_cluster, shardstore_cluster, *args)
        assert str(theirs).startswith("CROSSSLOT") and (type(ours), ours) == (type(theirs),
                                                                                theirs), args
    for key in KEYSLOT_KEYS:
        theirs, ours = both(redis_cluster, shardstore_cluster, "CLUSTER", "KEYSLOT", key)
        assert ours == theirs, key
    for args in (("CLUSTER", "KEYSLOT"), ("CLUSTER", "COUNTKEYSINSLOT", "99999"),
                 ("CLUSTER", "COUNTKEYSINSLOT", "x"), ("CLUSTER", "COUNTKEYSINSLOT", "-1")):
        theirs, ours = both(redis_cluster, shardstore_cluster, *args)
        assert (type(ours), ours) == (type(theirs), theirs), args


def test_countkeysinslot_counts_on_the_slots_owner(
        clients: tuple[RedisCluster, RedisCluster]) -> None:
    counts = []
    for rc in clients:
        keys = [f"{COUNTED_TAG}:{i}" for i in range(COUNTED_KEYS)]
        assert rc.execute_command("MSET", *(w for k in keys for w in (k, k)))
        slot = rc.keyslot(COUNTED_TAG)
        owner = rc.get_node_from_key(COUNTED_TAG)
        counts.append(rc.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot,
                                         target_nodes=owner))
    assert counts == [COUNTED_KEYS, COUNTED_KEYS]


def info_fields(text: Any) -> dict[str, str]:
    text = text.decode() if isinstance(text, bytes) else str(text)
    return dict(line.split(":", 1) for line in text.split("\r\n") if line)


def test_cluster_info_has_redis_clusters_fields_and_counts(
        redis_cluster: list[int], shardstore_cluster: list[int]) -> None:
    theirs, ours = (info_fields(i) for i in both(redis_cluster, shardstore_cluster,
                                                 "CLUSTER", "INFO"))

    def kept(fields: dict[str, str]) -> set[str]:
        return {f for f in fields if not f.startswith(PER_TYPE_STATS) or f in STATS_TOTALS}

    assert kept(ours) == kept(theirs)
    assert {f: ours[f] for f in INFO_SAME_VALUES} == {f: theirs[f] for f in INFO_SAME_VALUES}
    assert all(ours[f].isdigit() for f in ours if f not in ("cluster_state",))


def shape(value: Any) -> Any:
    """A reply with every leaf replaced by its type (and 40-hex strings marked as ids)."""
    if isinstance(value, list):
        return [shape(v) for v in value]
    if isinstance(value, dict):
        return {k if isinstance(k, bytes) else shape(k): shape(v) for k, v in value.items()}
    if isinstance(value, bytes) and len(value) == HEX_ID_CHARS:
        try:
            int(value, 16)
            return "id"
        except ValueError:
            pass
    return type(value).__name__


def covered(ranges: list[tuple[int, int]]) -> bool:
    """Whether the ranges cover slots 0..16383, each once."""
    slots = sorted(s for first, last in ranges for s in range(first, last + 1))
    return slots == list(range(16384))


@pytest.mark.parametrize("protocol", [2, 3])
def test_cluster_slots_has_redis_clusters_shape(
        redis_cluster: list[int], shardstore_cluster: list[int], protocol: int) -> None:
    replies = both(redis_cluster, shardstore_cluster, "CLUSTER", "SLOTS", protocol=protocol)
    for reply in replies:
        assert covered([(row[0], row[1]) for row in reply])
    theirs, ours = (sorted(shape(r), key=repr) for r in replies)
    assert ours == theirs


def shard_fields(reply: Any) -> list[tuple[list[Any], list[list[Any]]]]:
    """Per shard of CLUSTER SHARDS: its field names, and each node's field names, in the
    order sent (a RESP2 flat list or a RESP3 map alike)."""
    def names(record: Any) -> list[Any]:
        return list(record) if isinstance(record, dict) else list(record[::2])

    def get(record: Any, name: bytes) -> Any:
        return record[name] if isinstance(record, dict) else dict(
            zip(record[::2], record[1::2], strict=True))[name]

    return [(names(shard), [names(n) for n in get(shard, b"nodes")]) for shard in reply]


@pytest.mark.parametrize("protocol", [2, 3])
def test_cluster_shards_has_redis_clusters_fields(
        redis_cluster: list[int], shardstore_cluster: list[int], protocol: int) -> None:
    theirs, ours = (shard_fields(r) for r in both(
        redis_cluster, shardstore_cluster, "CLUSTER", "SHARDS", protocol=protocol))
    as_sets = [[(set(s), [set(n) for n in nodes]) for s, nodes in side]
               for side in (theirs, ours)]
    assert as_sets[1] == as_sets[0]


def test_cluster_shards_node_fields_come_in_redis_order(
        redis_cluster: list[int], shardstore_cluster: list[int]) -> None:
    theirs, ours = (shard_fields(r) for r in both(
        redis_cluster, shardstore_cluster, "CLUSTER", "SHARDS"))
    assert ours[0][1][0] == theirs[0][1][0]


def node_lines(text: Any) -> list[tuple[Any, ...]]:
    """CLUSTER NODES lines as (field count, flags, master, link state, slot fields, and
    whether id, address and epoch have their forms), sorted."""
    text = text.decode() if isinstance(text, bytes) else str(text)
    rows = []
    for line in text.splitlines():
        fields = line.split(" ")
        node_id, address, flags, master, _ping, _pong, epoch, link, *slots = fields
        forms = (len(node_id) == HEX_ID_CHARS, "@" in address and ":" in address,
                 epoch.isdigit(), all("-" in s or s.isdigit() for s in slots))
        rows.append((len(fields), flags, master, link, len(slots), forms))
    return sorted(rows)


def test_cluster_nodes_and_myid_have_redis_clusters_forms(
        redis_cluster: list[int], shardstore_cluster: list[int]) -> None:
    theirs, ours = both(redis_cluster, shardstore_cluster, "CLUSTER", "NODES")
    assert node_lines(ours) == node_lines(theirs)
    for port in (redis_cluster[0], shardstore_cluster[0]):
        me = raw(port, "CLUSTER", "MYID")
        nodes = raw(port, "CLUSTER", "NODES")
        text = nodes.decode() if isinstance(nodes, bytes) else str(nodes)
        mine = [line for line in text.splitlines() if "myself" in line.split(" ")[2]]
        assert [line.split(" ")[0] for line in mine] == [bytes(me).decode()]


def test_hello_says_cluster_mode(redis_cluster: list[int],
                                 shardstore_cluster: list[int]) -> None:
    theirs, ours = both(redis_cluster, shardstore_cluster, "HELLO", "3")
    assert ours[b"mode"] == theirs[b"mode"] == b"cluster"
