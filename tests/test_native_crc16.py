"""native.crc16: Redis Cluster's key-slot function, its twins, and a real redis-server.

The rules run against both twins (the compiled one is skipped when it is not built): the
CRC-16/XMODEM check value, the key slots Redis's documentation gives, the hash-tag rules.
A hypothesis test proves the twins equal; another compares key_slot with CLUSTER KEYSLOT of
a real redis-server (cluster support on, no slots needed) over generated keys, and one
asks redis-cli the same for a few keys.
"""

from __future__ import annotations

import importlib
import subprocess
from collections.abc import Iterator
from types import ModuleType

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from native import crc16_pure as pure
from tests.redis_proc import REDIS_CLI, cluster_redis_server, needs_redis

try:
    compiled: ModuleType | None = importlib.import_module("native._crc16")
except ImportError:
    compiled = None

needs_native = pytest.mark.skipif(
    compiled is None, reason="native._crc16 is not built (make native)"
)
IMPLS = [
    pytest.param(pure, id="pure"),
    pytest.param(compiled, id="native", marks=needs_native),
]
SLOTS = 16384
# Keys built around braces, so generated keys hit the hash-tag rules often.
KEY_PARTS = st.sampled_from([b"{", b"}", b"{}", b"a", b"user:1000", b"\x00", b"\xff", b" "])
KEYS = st.one_of(
    st.binary(max_size=64),
    st.lists(KEY_PARTS, max_size=8).map(b"".join),
)


@pytest.mark.parametrize("impl", IMPLS)
def test_check_value(impl: ModuleType) -> None:
    # CRC-16/XMODEM's published check value; Redis's crc16.c states the same.
    assert impl.crc16(b"123456789") == 0x31C3
    assert impl.crc16(b"") == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_documented_slots(impl: ModuleType) -> None:
    # The examples of Redis's CLUSTER KEYSLOT page.
    assert impl.key_slot(b"somekey") == 11058
    assert impl.key_slot(b"foo{hash_tag}") == 2515
    assert impl.key_slot(b"bar{hash_tag}") == 2515


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    ("key", "tag"),
    [
        (b"{user1000}.following", b"user1000"),
        (b"foo{}{bar}", b"foo{}{bar}"),  # the first tag is empty: the whole key
        (b"foo{{bar}}zap", b"{bar"),  # from the first { to the first } after it
        (b"foo{bar}{zap}", b"bar"),  # only the first tag counts
        (b"no tag", b"no tag"),
        (b"open{only", b"open{only"),
        (b"}x{y}", b"y"),
    ],
)
def test_hash_tags(impl: ModuleType, key: bytes, tag: bytes) -> None:
    assert impl.hash_tag(key) == tag
    assert impl.key_slot(key) == impl.crc16(tag) % SLOTS


@pytest.mark.parametrize("impl", IMPLS)
def test_bytes_like_only(impl: ModuleType) -> None:
    assert impl.key_slot(bytearray(b"somekey")) == impl.key_slot(memoryview(b"somekey")) == 11058
    for bad in ("somekey", 5, None):
        with pytest.raises(TypeError):
            impl.key_slot(bad)
        with pytest.raises(TypeError):
            impl.crc16(bad)


@needs_native
@settings(max_examples=500, deadline=None)
@given(KEYS)
def test_twins_agree(key: bytes) -> None:
    assert compiled is not None
    assert compiled.crc16(key) == pure.crc16(key)
    assert compiled.hash_tag(key) == pure.hash_tag(key)
    assert compiled.key_slot(key) == pure.key_slot(key)


def test_selector_exports_one_twin() -> None:
    from native import crc16

    assert crc16.IMPLEMENTATION in ("native", "pure")
    assert crc16.key_slot(b"somekey") == 11058


@pytest.fixture(scope="module")
def cluster_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with cluster_redis_server(tmp_path_factory.mktemp("redis-cluster")) as port:
        yield port


@needs_redis
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=KEYS)
def test_key_slot_matches_redis(cluster_port: int, key: bytes) -> None:
    client = _client(cluster_port)
    assert client.execute_command("CLUSTER", "KEYSLOT", key) == pure.key_slot(key)
    if compiled is not None:
        assert compiled.key_slot(key) == pure.key_slot(key)


_CLIENTS: dict[int, redis.Redis] = {}


def _client(port: int) -> redis.Redis:
    if port not in _CLIENTS:
        _CLIENTS[port] = redis.Redis(port=port, protocol=2, socket_timeout=5)
    return _CLIENTS[port]


@needs_redis
@pytest.mark.skipif(REDIS_CLI is None, reason="redis-cli is not installed")
@pytest.mark.parametrize("key", ["somekey", "{user1000}.followers", "foo{}{bar}", "a{b}c{d}"])
def test_key_slot_matches_redis_cli(cluster_port: int, key: str) -> None:
    assert REDIS_CLI is not None
    out = subprocess.run(
        [REDIS_CLI, "-p", str(cluster_port), "CLUSTER", "KEYSLOT", key],
        capture_output=True, check=True, text=True, timeout=10,
    ).stdout
    assert int(out) == pure.key_slot(key.encode())
