"""kvcache.ring and native.ketama: placement equal to uhashring's ketama, twins equal, ring laws.

The reference is uhashring's HashRing(nodes, hash_fn="ketama") with nodes named as libmemcached
names them ("host" on port 11211, "host:port" otherwise) and the weights as node config. Every
test that places keys runs against both twins (kvcache.ring.Continuum is swapped per test; the
compiled one is skipped when it is not built). A hypothesis test then drives the two
Continuum twins with the same random points, keys and hashes and compares every answer.
The one documented difference from uhashring (it takes the first point *after* a key's hash,
libmemcached the first point *at or after* it) is checked on its own; a random key that hit
a point exactly would be judged by libmemcached's rule.
"""

from __future__ import annotations

import importlib
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from uhashring import HashRing

import kvcache.ring as ring_module
from kvcache.ring import Ring, Router, format_address, parse_server
from native import FORCE_PURE_ENV
from native import ketama_pure as pure

try:
    compiled: ModuleType | None = importlib.import_module("native._ketama")
except ImportError:
    compiled = None

needs_native = pytest.mark.skipif(compiled is None, reason="native._ketama is not built")
IMPLS = [pytest.param(pure, id="pure"), pytest.param(compiled, id="native", marks=needs_native)]
ROOT = Path(__file__).resolve().parent.parent
KEYS = 10_000


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """Each twin in turn, installed as the Continuum that kvcache.ring builds."""
    module: ModuleType = request.param
    monkeypatch.setattr(ring_module, "Continuum", module.Continuum)
    yield module


def random_keys(seed: int, count: int = KEYS) -> list[str]:
    """Printable keys of 1 to 250 characters (some past one md5 block), a few non-ASCII."""
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_-./"
    keys = []
    for i in range(count):
        length = rng.choice([rng.randint(1, 20), rng.randint(1, 60), rng.randint(50, 250)])
        key = "".join(rng.choices(alphabet, k=length))
        keys.append(key + "é☃" if i % 97 == 0 else key)
    return keys


def pool(seed: int, size: int, weights: tuple[int, ...] = (1,)) -> list[tuple[str, int, int]]:
    """`size` servers on loopback hosts, some on port 11211, weights drawn from `weights`."""
    rng = random.Random(seed)
    servers = []
    for i in range(size):
        port = 11211 if rng.random() < 0.4 else rng.randint(1024, 65535)
        servers.append((f"10.{seed % 250}.{i // 250}.{i % 250 + 1}", port, rng.choice(weights)))
    return servers


def uhashring_for(servers: list[tuple[str, int, int]]) -> HashRing:
    nodes = {pure.server_name(h, p): {"weight": w} for h, p, w in servers}
    return HashRing(nodes, hash_fn="ketama")


def expected_node(reference: HashRing, key: str) -> str:
    """uhashring's node for key, except on an exact point hit: libmemcached's (see module)."""
    exact = reference.runtime._ring.get(pure.key_hash(key.encode()))
    return exact if exact is not None else reference.get_node(key)


POOLS = [(size, (1,)) for size in (1, 2, 3, 5, 8, 13, 20)] + [
    (size, (1, 2, 3)) for size in range(1, 21)
]


@pytest.mark.parametrize(("size", "weights"), POOLS)
def test_placement_equals_uhashring(impl: ModuleType, size: int, weights: tuple[int, ...]) -> None:
    servers = pool(size * 7 + len(weights), size, weights)
    ring = Ring(servers)
    reference = uhashring_for(servers)
    # The whole continuum: the same distinct points, each owned by the same node.
    points, owners = pure.build([ring.name(a) for a in ring.servers], [w for _, _, w in servers])
    assert points == sorted(set(reference.runtime._keys))
    owned = {p: ring.name(ring.servers[o]) for p, o in zip(points, owners, strict=True)}
    assert owned == reference.ring
    keys = random_keys(size)
    got = [ring.name(ring.get_server(k)) for k in keys]
    assert got == [expected_node(reference, k) for k in keys]
    # bytes keys hash the same as their UTF-8 str
    some = keys[:500]
    assert [ring.get_server(k.encode()) for k in some] == [ring.get_server(k) for k in some]


def test_both_port_conventions_are_covered() -> None:
    ports = {p for size, w in POOLS for _, p, _ in pool(size * 7 + len(w), size, w)}
    assert 11211 in ports and len(ports) > 10
    assert pure.server_name("10.0.0.1", 11211) == "10.0.0.1"
    assert pure.server_name("10.0.0.1", 11212) == "10.0.0.1:11212"
    assert Ring(["cache-a", "cache-b:11300"]).name("cache-a:11211") == "cache-a"


@pytest.mark.parametrize("weights", [[1], [1, 1, 1], [1, 2, 3], [3, 1, 1, 1, 1], [5, 7, 100]])
def test_points_per_server_follow_the_weighted_formula(weights: list[int]) -> None:
    servers = [(f"10.0.0.{i + 1}", 11211 + i, w) for i, w in enumerate(weights)]
    reference = uhashring_for(servers)
    counts = pure.digest_counts(weights)
    assert counts == [40 * len(weights) * w // sum(weights) for w in weights]
    for (host, port, _), count in zip(servers, counts, strict=True):
        assert reference.distribution[pure.server_name(host, port)] == 4 * count
        assert len(pure.server_points(pure.server_name(host, port), count)) == 4 * count
    if len(set(weights)) == 1:
        assert counts == [40] * len(weights)  # 160 points per server at equal weights


def test_key_hash_is_the_first_md5_word_little_endian(impl: ModuleType) -> None:
    # md5(b"") = d41d8cd98f00b204e9800998ecf8427e
    assert impl.key_hash(b"") == 0xD98C1DD4
    # md5(b"abc") = 900150983cd24fb0d6963f7d28e17f72
    assert impl.key_hash(b"abc") == 0x98500190
    for size in (55, 56, 63, 64, 65, 119, 120, 128, 1000):  # md5 padding edges
        data = bytes(range(256)) * 4
        assert impl.key_hash(data[:size]) == pure.key_hash(data[:size])
    with pytest.raises(TypeError):
        impl.key_hash("text")


def test_exact_hit_takes_that_point_and_wraps_past_the_top(impl: ModuleType) -> None:
    continuum = impl.Continuum([10, 20, 30], [0, 1, 2])
    assert [continuum.lookup_hash(h) for h in (0, 10, 11, 20, 29, 30, 31)] == [0, 0, 1, 1, 2, 2, 0]
    assert continuum.lookup_hash(pure.POINT_MAX) == 0
    with pytest.raises(ValueError):
        continuum.lookup_hash(1 << 32)
    with pytest.raises(ValueError):
        continuum.lookup_hash(-1)
    # On a real pool an exact hit gets the point's own node, where uhashring (bisect_right)
    # would give the next point's: the one documented difference.
    reference = HashRing({"a": 1, "b": 1}, hash_fn="ketama")
    points, owners = pure.build(["a", "b"], [1, 1])
    real = impl.Continuum(points, owners)
    for i in range(0, len(points), 7):
        assert ["a", "b"][real.lookup_hash(points[i])] == reference.ring[points[i]]


def test_a_point_drawn_twice_belongs_to_the_later_server(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = {"a": [5, 100, 200, 300], "b": [100, 150, 250, 350], "c": [5, 120, 220, 320]}
    monkeypatch.setattr(pure, "server_points", lambda name, count: drawn[name])
    points, owners = pure.build(["a", "b", "c"], [1, 1, 1])
    assert points == sorted({p for ps in drawn.values() for p in ps})
    assert dict(zip(points, owners, strict=True))[100] == 1  # b after a
    assert dict(zip(points, owners, strict=True))[5] == 2  # c after a


def test_empty_ring_and_bad_input(impl: ModuleType) -> None:
    ring = Ring()
    assert len(ring) == 0 and ring.servers == ()
    with pytest.raises(LookupError):
        ring.get_server("k")
    with pytest.raises(LookupError):
        impl.Continuum([], []).lookup_hash(5)
    with pytest.raises(TypeError):
        Ring(["a"]).get_server(5)  # type: ignore[arg-type]
    for points, owners in [([2, 1], [0, 0]), ([1, 1], [0, 0]), ([1 << 32], [0]), ([1], [-1])]:
        with pytest.raises(ValueError):
            impl.Continuum(points, owners)
    with pytest.raises(ValueError):
        impl.Continuum([1, 2], [0])


# -- the twins agree -----------------------------------------------------------------------


@st.composite
def continuum_args(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    points = sorted(draw(st.sets(st.integers(0, pure.POINT_MAX), max_size=60)))
    owners = [draw(st.integers(0, 7)) for _ in points]
    return points, owners


@needs_native
@settings(max_examples=300, deadline=None)
@given(
    args=continuum_args(),
    keys=st.lists(st.binary(max_size=200), max_size=20),
    hashes=st.lists(st.integers(0, pure.POINT_MAX), max_size=10),
    n=st.integers(0, 10),
)
def test_twins_agree(
    args: tuple[list[int], list[int]], keys: list[bytes], hashes: list[int], n: int
) -> None:
    assert compiled is not None
    points, owners = args
    hashes = hashes + points[:3] + [p + 1 for p in points[-2:] if p < pure.POINT_MAX]
    twins = [pure.Continuum(points, owners), compiled.Continuum(points, owners)]
    for key in keys:
        assert compiled.key_hash(key) == pure.key_hash(key)

    def answers(c: object) -> list[object]:
        out: list[object] = [len(c), c.servers]  # type: ignore[arg-type, attr-defined]
        calls = [("lookup", (k,)) for k in keys] + [("lookup_hash", (h,)) for h in hashes]
        calls += [("successors", (k, n)) for k in keys] + [("lookup_many", (keys,))]
        for method, call_args in calls:
            try:
                out.append(getattr(c, method)(*call_args))
            except Exception as exc:  # noqa: BLE001 - the exception type is the answer
                out.append(type(exc))
        return out

    assert answers(twins[0]) == answers(twins[1])


# -- ring laws ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 3, 7, 15])
def test_adding_a_server_moves_its_share_only_to_it(impl: ModuleType, size: int) -> None:
    servers = pool(size + 100, size)
    keys = random_keys(size + 100, 20_000)
    ring = Ring(servers)
    before = [ring.get_server(k) for k in keys]
    ring.add(("10.200.0.1", 11999))
    after = [ring.get_server(k) for k in keys]
    moved = [b for b, a in zip(before, after, strict=True) if a != b]
    assert all(a == "10.200.0.1:11999" for b, a in zip(before, after, strict=True) if a != b)
    share = len(moved) / len(keys)
    # ketama's 160 points per server keep a server's share within about +-30% of 1/(N+1)
    assert 0.6 / (size + 1) < share < 1.4 / (size + 1), share
    ring.remove("10.200.0.1:11999")
    assert [ring.get_server(k) for k in keys] == before


def test_removing_restores_placement_for_weighted_pools(impl: ModuleType) -> None:
    servers = pool(42, 9, (1, 2, 3))
    keys = random_keys(42, 5000)
    ring = Ring(servers)
    before = [ring.get_server(k) for k in keys]
    ring.add(("10.201.0.1", 11211), weight=3)
    assert ring.weight("10.201.0.1:11211") == 3
    ring.remove(("10.201.0.1", 11211))
    assert [ring.get_server(k) for k in keys] == before
    assert ring.without([]).servers == ring.servers


def test_without_equals_a_ring_built_without(impl: ModuleType) -> None:
    servers = pool(7, 6, (1, 2))
    full = Ring(servers)
    gone = [full.servers[1], full.servers[4]]
    rest = Ring([s for s in servers if format_address(s[0], s[1]) not in gone])
    keys = random_keys(7, 3000)
    assert [full.without(gone).get_server(k) for k in keys] == [rest.get_server(k) for k in keys]


@pytest.mark.parametrize("size", [1, 4, 12])
def test_get_servers_are_distinct_successors_in_ring_order(impl: ModuleType, size: int) -> None:
    servers = pool(size + 300, size, (1, 2))
    ring = Ring(servers)
    points, owners = pure.build([ring.name(a) for a in ring.servers], [w for *_, w in servers])
    for key in random_keys(size, 300):
        start = pure.Continuum(points, owners)._index(pure.key_hash(key.encode()))
        walk: list[str] = []
        for owner in owners[start:] + owners[:start]:
            if ring.servers[owner] not in walk:
                walk.append(ring.servers[owner])
        for n in (0, 1, 2, size, size + 3):
            got = ring.get_servers(key, n)
            assert got == walk[:n]
            assert len(set(got)) == len(got) == min(n, size)
        assert ring.get_servers(key, 1) == [ring.get_server(key)]


def test_group_splits_keys_by_server(impl: ModuleType) -> None:
    ring = Ring(pool(3, 4))
    keys = random_keys(3, 1000)
    groups = ring.group(keys)
    assert sorted(i for positions in groups.values() for i in positions) == list(range(1000))
    for address, positions in groups.items():
        assert all(ring.get_server(keys[i]) == address for i in positions)


# -- Router: the ring plus health -----------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_router_marks_down_at_the_threshold_and_backs_off() -> None:
    clock = FakeClock()
    router = Router(["a:1", "b:1", "c:1"], 3, (1.0, 4.0), "fail", clock)
    key = next(k for k in (b"k%d" % i for i in range(100)) if router.ring.get_server(k) == "a:1")
    router.failed("a:1")
    router.failed("a:1")
    router.succeeded("a:1")  # consecutive failures only
    router.failed("a:1")
    router.failed("a:1")
    assert router.route(key) == "a:1" and not router.down
    router.failed("a:1")
    assert router.down == {"a:1"}
    assert router.route(key) is None  # fail fast
    delays = []
    for _ in range(5):  # probes: due after 1, 2, 4, 4, 4 seconds
        start = clock.now
        while not router.due_probes():
            clock.now += 0.25
        delays.append(clock.now - start)
        assert router.due_probes() == []  # claimed while the probe runs
        router.failed("a:1")
    assert delays == [1.0, 2.0, 4.0, 4.0, 4.0]
    router.succeeded("a:1")
    assert not router.down and router.route(key) == "a:1"


def test_router_remap_routes_to_the_ring_without_the_down_servers() -> None:
    router = Router(["a:1", "b:1", "c:1"], 1, (1.0, 4.0), "remap", FakeClock())
    keys = [b"k%d" % i for i in range(300)]
    router.failed("b:1")
    without_b = Ring(["a:1", "c:1"])
    assert [router.route(k) for k in keys] == [without_b.get_server(k) for k in keys]
    router.failed("a:1")
    router.failed("c:1")
    assert router.route(keys[0]) is None  # every server down
    for server in ("a:1", "b:1", "c:1"):
        router.succeeded(server)
    assert [router.route(k) for k in keys] == [router.ring.get_server(k) for k in keys]


def test_router_remembers_writes_made_in_a_down_servers_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    router = Router(["a:1", "b:1", "c:1"], 1, (1.0, 4.0), "remap", FakeClock())
    keys = [b"k%d" % i for i in range(300)]
    homed_a = [k for k in keys if router.ring.get_server(k) == "a:1"]
    router.wrote(homed_a[0], "a:1")  # nothing is down: nothing to remember
    router.failed("a:1")
    for key in keys:
        router.wrote(key, router.route(key))  # type: ignore[arg-type]
    moved, flooded = router.take_moved("a:1")
    assert flooded == set() and sorted(k for ks in moved.values() for k in ks) == sorted(homed_a)
    assert all(router.live.get_server(k) == s for s, ks in moved.items() for k in ks)
    assert router.take_moved("a:1") == ({}, set())  # handed out once
    # with replicas, a write to one of the key's normal replicas is not a moved copy
    for key in homed_a:
        for server in router.live.get_servers(key, 2):
            router.wrote(key, server, replicas=2)
    moved, _ = router.take_moved("a:1")
    assert all(s not in router.ring.get_servers(k, 2) for s, ks in moved.items() for k in ks)
    assert moved and len([k for ks in moved.values() for k in ks]) == len(homed_a)
    # past the bound, the servers written to are flushed instead of named key by key
    monkeypatch.setattr(ring_module, "MAX_MOVED_KEYS", 3)
    for key in homed_a:
        router.wrote(key, router.route(key))  # type: ignore[arg-type]
    moved, flooded = router.take_moved("a:1")
    assert flooded and sum(map(len, moved.values())) <= 3
    assert flooded.isdisjoint(moved)
    fail = Router(["a:1", "b:1"], 1, (1.0, 4.0), "fail", FakeClock())
    fail.failed("a:1")
    fail.wrote(homed_a[0], "b:1")  # "fail" never moves a key
    assert fail.take_moved("a:1") == ({}, set())


# -- server specs ------------------------------------------------------------------------------


def test_server_specs() -> None:
    assert parse_server("cache1") == ("cache1", 11211, 1)
    assert parse_server("cache1:11300") == ("cache1", 11300, 1)
    assert parse_server(("cache1", 11300)) == ("cache1", 11300, 1)
    assert parse_server(("cache1", 11300, 4)) == ("cache1", 11300, 4)
    assert parse_server("[::1]:11300") == ("::1", 11300, 1)
    assert parse_server("[::1]") == ("::1", 11211, 1)
    assert parse_server("::1") == ("::1", 11211, 1)
    assert format_address("::1", 11300) == "[::1]:11300"
    assert Ring(["[::1]:11300"]).name("[::1]:11300") == "::1:11300"  # as libmemcached names it
    for bad in ["", "a:b", "a:0", "a:70000", ("a", 1, 0), ("a",), ("a b", 1), "[::1", "[::1]x"]:
        with pytest.raises(ValueError):
            parse_server(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        parse_server(11211)  # type: ignore[arg-type]
    ring = Ring(["a", "b:11300"])
    with pytest.raises(ValueError):
        ring.add("a:11211")
    with pytest.raises(KeyError):
        ring.remove("c")
    assert "b:11300" in ring and "a:11211" in ring and len(ring) == 2


# -- the loader --------------------------------------------------------------------------------


def test_loader_exports_the_api() -> None:
    ketama = importlib.import_module("native.ketama")
    forced = os.environ.get(FORCE_PURE_ENV, "") not in ("", "0")
    impl = pure if compiled is None or forced else compiled
    assert ketama.IMPLEMENTATION == ("pure" if impl is pure else "native")
    assert ketama.Continuum is impl.Continuum and ketama.key_hash is impl.key_hash
    assert ketama.build is pure.build
    assert set(ketama.__all__) == {
        "DEFAULT_PORT",
        "DIGESTS_PER_SERVER",
        "IMPLEMENTATION",
        "POINTS_PER_DIGEST",
        "POINT_MAX",
        "Continuum",
        "build",
        "digest_counts",
        "key_hash",
        "server_name",
        "server_points",
    }


def test_loader_forced_pure() -> None:
    code = "import native.ketama as k; print(k.IMPLEMENTATION, k.Continuum.__module__)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"INFRA_PURE": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.split() == ["pure", "native.ketama_pure"]
