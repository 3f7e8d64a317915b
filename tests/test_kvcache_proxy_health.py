"""`kvcache proxy`: weighted placement, multi-get split, and hangs that must not serve old values.

Same harness as tests/test_kvcache_proxy.py (three real backends on 127.0.0.2-4, the proxy as
a real process; keys checked on the backends directly). The fault drills SIGSTOP a backend,
change its keys through the proxy while it hangs, SIGCONT it, and check that no read ever
returns the value it held before: with `--on-down remap` and with `--replicas 2` the proxy
flushes a backend that comes back before it takes its keys again (and, with replicas, asks
the next replica when the first one misses, so the keys keep hitting). Nothing is timed; waits
poll a condition under a hang deadline.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest
from uhashring import HashRing

from kvcache.proxy_backend import BackendPool
from native.ketama import server_name
from tests.test_kvcache_proxy import (
    MEMCACHED,
    Cluster,
    Raw,
    _keys_by_owner,
    cluster,  # noqa: F401 - the shared cluster fixture
    make_cluster,  # noqa: F401 - the per-test cluster fixture
    wait_until,
)

pytestmark = pytest.mark.skipif(MEMCACHED is None, reason="memcached is not installed")


def test_weighted_servers_place_keys_as_uhashring(
        make_cluster: Callable[..., Cluster]) -> None:  # noqa: F811 - the fixture
    weights = (1, 2, 4)
    proxied = make_cluster(weights=weights)
    nodes = {server_name(n.host, n.port): {"weight": w}
             for n, w in zip(proxied.nodes, weights, strict=True)}
    reference = HashRing(nodes, hash_fn="ketama")
    keys = [f"w:{i}" for i in range(400)]
    client = proxied.client()
    client.set_many({k: k.encode() for k in keys}, noreply=False)
    held = {n.address: set(n.client().get_many(keys)) for n in proxied.nodes}
    for key in keys:
        owner = proxied.ring.get_server(key)
        assert proxied.ring.name(owner) == reference.get_node(key), key
        assert [a for a, ks in held.items() if key in ks] == [owner], key
    counts = [len(held[n.address]) for n in proxied.nodes]
    assert counts[0] < counts[1] < counts[2]  # shares follow the weights 1:2:4
    stats = proxied.stats("backends")
    assert [stats[f"backend:{n.address}:weight"] for n in proxied.nodes] == ["1", "2", "4"]


def test_multiget_sends_one_request_per_backend(cluster: Cluster) -> None:  # noqa: F811 - fixture
    keys = [f"split:{i}" for i in range(90)]
    cluster.client().set_many({k: b"v" for k in keys[::3]}, noreply=False)
    owners = {cluster.ring.get_server(k) for k in keys}
    assert len(owners) == 3

    def requests() -> dict[str, int]:
        stats = cluster.stats("backends")
        return {a: int(stats[f"backend:{a}:requests"]) for a in owners}

    before = requests()
    reply = cluster.raw(("get " + " ".join(keys) + "\r\n").encode())
    assert reply.count(b"VALUE ") == 30 and reply.endswith(b"END\r\n")
    after = requests()
    assert {a: after[a] - before[a] for a in owners} == dict.fromkeys(owners, 1)


def _values(proxied: Cluster, keys: list[str]) -> dict[str, bytes | None]:
    client = proxied.client()
    return {key: client.get(key) for key in keys}


def test_sigstop_in_remap_mode_never_reads_an_older_value(
        make_cluster: Callable[..., Cluster]) -> None:  # noqa: F811 - the fixture
    proxied = make_cluster("--on-down", "remap", "--timeout", "0.3",
                           "--retry-backoff", "0.1,0.3")
    keys, owner = _keys_by_owner(proxied)
    victim = proxied.nodes[1]
    mine = [k for k in keys if owner[k] == victim.address]
    others = [k for k in keys if owner[k] != victim.address]
    raw = Raw(proxied.port)
    victim.signal(signal.SIGSTOP)
    try:
        wait_until(lambda: raw.get(mine[0]) == b"MISS", "the hung backend to be ejected")
        client = proxied.client()
        assert client.delete(mine[1], noreply=False) is False  # a miss on the successor
        for key in mine[2:]:
            assert client.set(key, b"new", noreply=False)
        rest = proxied.ring.without([victim.address])
        assert proxied.node(rest.get_server(mine[2])).client().get(mine[2]) == b"new"
    finally:
        victim.signal(signal.SIGCONT)
    wait_until(lambda: proxied.state(victim.address) == "up", "the probe to see it back")
    got = _values(proxied, mine)
    assert all(value is None for value in got.values()), got  # misses, never the old value
    assert victim.client().get_many(mine) == {}  # flushed before it took its keys back
    assert _values(proxied, others) == {k: k.encode() for k in others}


def test_replicas_keep_hitting_through_a_sigstop_and_never_read_old(
        make_cluster: Callable[..., Cluster]) -> None:  # noqa: F811 - the fixture
    proxied = make_cluster("--replicas", "2", "--timeout", "0.3", "--retry-backoff", "0.1,0.3")
    keys, owner = _keys_by_owner(proxied, 60)
    victim = proxied.nodes[0]
    mine = [k for k in keys if owner[k] == victim.address]
    victim.signal(signal.SIGSTOP)
    try:
        client = proxied.client()
        # reads keep hitting: a timed-out first replica fails over to the second
        assert _values(proxied, keys) == {k: k.encode() for k in keys}
        wait_until(lambda: proxied.state(victim.address) == "down", "it to be marked down")
        assert client.get_many(keys) == {k: k.encode() for k in keys}
        for key in mine:
            assert client.set(key, b"new", noreply=False)  # the other replica only
    finally:
        victim.signal(signal.SIGCONT)
    wait_until(lambda: proxied.state(victim.address) == "up", "the probe to see it back")
    # It came back flushed (its copies could be older than the other replica's), and its
    # misses are asked of the other replica: every key still hits, with its newest value.
    assert victim.client().get_many(mine) == {}
    want = {k: b"new" if k in mine else k.encode() for k in keys}
    assert _values(proxied, keys) == want
    assert proxied.client().get_many(keys) == want
    hit = proxied.raw(b"mg %s v\r\nmg nothing:here v\r\n" % mine[0].encode())
    assert hit == b"VA 3\r\nnew\r\nEN\r\n"


def test_copies_written_in_a_backends_place_are_deleted_when_it_returns(
        make_cluster: Callable[..., Cluster]) -> None:  # noqa: F811 - the fixture
    """Two hangs of one backend under `--on-down remap`: what was written on its successor
    during the first must not be read during the second."""
    proxied = make_cluster("--on-down", "remap", "--timeout", "0.3",
                           "--retry-backoff", "0.1,0.3")
    keys, owner = _keys_by_owner(proxied)
    victim = proxied.nodes[0]
    mine = [k for k in keys if owner[k] == victim.address]
    successor = {k: proxied.node(proxied.ring.get_servers(k, 2)[1]) for k in mine}
    raw = Raw(proxied.port)

    def outage(write: bytes | None) -> None:
        victim.signal(signal.SIGSTOP)
        try:
            # Only the successor answers MISS (the home holds the key, and is surely
            # stopped): the backend is marked down, so the proxy sends it nothing more.
            wait_until(lambda: raw.get(mine[0]) == b"MISS", "the hung backend to be ejected")
            client = proxied.client()
            for key in mine:  # remapped: nothing there, in both hangs
                assert client.get(key) is None, key
                if write is not None:
                    assert client.set(key, write, noreply=False)
        finally:
            victim.signal(signal.SIGCONT)
        wait_until(lambda: proxied.state(victim.address) == "up", "the probe to see it back")

    outage(b"first outage")  # written on the successors
    wait_until(lambda: all(successor[k].client().get(k) is None for k in mine),
               "the copies on the successors to be deleted")
    client = proxied.client()
    for key in mine:
        assert client.set(key, b"home again", noreply=False)
    outage(None)
    assert _values(proxied, mine) == dict.fromkeys(mine)  # home flushed on return: misses


def test_a_late_reply_leaves_a_down_backend_to_its_probe() -> None:
    """A reply to a request sent before the backend was marked down resets nothing: only
    the probe (version, then flush_all in remap mode) brings it back, as mcrouter's TKO."""
    pool = BackendPool(["127.0.0.2:1", "127.0.0.3:1"], timeout=1.0, pool_size=2,
                       failure_threshold=3, retry_backoff=(1.0, 4.0), on_down="remap",
                       flush_on_return=True)  # fmt: skip
    server = pool.servers[0]
    pool.connection_failed(server, "no reply", 1)
    pool.replied(server)  # an answer ends a run of failures ...
    assert pool.router.health[server].failures == 0
    for _ in range(3):
        pool.connection_failed(server, "no reply", 1)
    assert pool.is_down(server)
    pool.replied(server)  # ... but not a down backend's: its probe decides
    assert pool.is_down(server) and pool.targets(b"k", 1) == [pool.servers[1]]
