"""pymemcache, a real memcached client, against a kvcache daemon, unchanged."""

from __future__ import annotations

import pytest
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheClientError, MemcacheServerError

from tests.procs import kvcache_daemon

LARGEST_VALUE = 1024 * 1024 - 48 - 2 - 2 - 8  # -I 1m, a 1-byte key, flags 0 (as memcached)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    server = kvcache_daemon(tmp_path_factory.mktemp("pymemcache")).start()
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture
def client(daemon) -> Client:
    c = Client((daemon.host, daemon.port), connect_timeout=5, timeout=10, default_noreply=False)
    c.flush_all()
    yield c
    c.close()


def test_set_get(client: Client) -> None:
    assert client.set("a", b"hello") is True
    assert client.get("a") == b"hello"
    assert client.get("missing") is None
    assert client.get("missing", default=b"d") == b"d"


def test_get_many_and_set_many(client: Client) -> None:
    assert client.set_many({"k1": b"1", "k2": b"2", "k3": b"3"}) == []
    assert client.get_many(["k1", "k2", "nope", "k3"]) == {"k1": b"1", "k2": b"2", "k3": b"3"}
    many = {f"key{i}": str(i).encode() for i in range(500)}
    client.set_many(many)
    assert client.get_many(list(many)) == many


def test_add_replace(client: Client) -> None:
    assert client.add("a", b"1") is True
    assert client.add("a", b"2") is False
    assert client.replace("a", b"3") is True
    assert client.replace("b", b"3") is False
    assert client.get("a") == b"3"


def test_gets_and_cas(client: Client) -> None:
    client.set("a", b"1")
    value, token = client.gets("a")
    assert value == b"1"
    assert client.cas("a", b"2", token) is True
    assert client.cas("a", b"3", token) is False  # EXISTS
    assert client.cas("missing", b"3", token) is None  # NOT_FOUND
    assert client.get("a") == b"2"
    values = client.gets_many(["a", "missing"])
    assert set(values) == {"a"} and values["a"][0] == b"2"


def test_incr_decr(client: Client) -> None:
    assert client.incr("n", 1) is None
    client.set("n", b"10")
    assert client.incr("n", 5) == 15
    assert client.decr("n", 20) == 0
    assert client.incr("n", 2**64 - 1) == 2**64 - 1
    assert client.incr("n", 2) == 1
    client.set("t", b"text")
    with pytest.raises(MemcacheClientError, match="non-numeric"):
        client.incr("t", 1)


def test_append_prepend(client: Client) -> None:
    assert client.append("a", b"x") is False
    client.set("a", b"mid", flags=5)
    assert client.append("a", b">") is True
    assert client.prepend("a", b"<") is True
    assert client.get("a") == b"<mid>"


def test_touch_and_delete(client: Client) -> None:
    client.set("a", b"1")
    assert client.touch("a", 100) is True
    assert client.touch("missing", 100) is False
    assert client.delete("a") is True
    assert client.delete("a") is False
    client.set_many({"x": b"1", "y": b"2"})
    assert client.delete_many(["x", "y", "z"]) is True
    assert client.get_many(["x", "y"]) == {}


def test_expired_and_flushed(client: Client) -> None:
    client.set("gone", b"1", expire=-1)
    assert client.get("gone") is None
    client.set("a", b"1")
    assert client.flush_all() is True
    assert client.get("a") is None


def test_noreply(daemon) -> None:
    quiet = Client((daemon.host, daemon.port), timeout=10, default_noreply=True)
    try:
        for i in range(200):
            assert quiet.set(f"q{i}", b"v") is True  # noreply: pymemcache assumes success
        quiet.delete("q0")
        quiet.incr("q1", 1, noreply=True)  # non-numeric: the error is silenced
        quiet.touch("q2", 100)
        assert quiet.get("q199") == b"v"
        assert quiet.get("q0") is None
        assert quiet.version()  # the stream is still in sync
    finally:
        quiet.close()


def test_large_values(client: Client) -> None:
    big = bytes(range(256)) * (LARGEST_VALUE // 256) + b"x" * (LARGEST_VALUE % 256)
    assert client.set("b", big) is True
    assert client.get("b") == big
    with pytest.raises(MemcacheServerError, match="object too large for cache"):
        client.set("b", big + b"!")
    assert client.get("b") is None  # a failed set leaves no stale value
    values = {f"big{i}": bytes([i]) * 300_000 for i in range(8)}
    client.set_many(values)
    assert client.get_many(list(values)) == values


def test_stats_and_version(client: Client) -> None:
    client.set("a", b"1")
    client.get("a")
    client.get("nope")
    stats = client.stats()
    assert stats[b"version"] == b"1.6.18"
    assert stats[b"curr_items"] >= 1
    assert stats[b"get_hits"] >= 1 and stats[b"get_misses"] >= 1
    assert stats[b"limit_maxbytes"] == 64 * 1024 * 1024
    settings = client.stats("settings")
    assert settings[b"item_size_max"] == 1024 * 1024
    assert client.stats("items")
    assert client.stats("slabs")[b"active_slabs"] >= 1
    assert client.version() == b"1.6.18"


def test_binary_safe_values_and_flags(client: Client) -> None:
    value = b"\r\nEND\r\nVALUE x 0 1\r\n\x00\xff"
    client.set("bin", value, flags=0xFFFFFFFF)
    assert client.get("bin") == value
    result = client.raw_command(b"gets bin", b"END\r\n")
    assert result.startswith(b"VALUE bin 4294967295 %d " % len(value))
