"""`lru tune`, `lru mode`, `lru temp_ttl`: real where the segmented LRU allows, refused with
memcached's own reply where it does not.

`lru tune` sets the HOT and WARM shares of both storage twins (checked on the twins and on
a daemon's `stats items`); `lru mode` and `lru temp_ttl` are answered as memcached answers
them without its LRU maintainer thread (kvcache has none; `stats settings` says so), compared
byte for byte with a memcached started with `-o no_lru_maintainer`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

from kvcache import storage_pure
from kvcache.items import Mode
from tests.kvcache_wire import MEMCACHED, Memcached, reference_missing, request, stat_values
from tests.procs import kvcache_daemon

CONVERSATION = b"".join(line + b"\r\n" for line in (
    b"lru tune 10 30 0.1 2.0", b"lru tune 50 40 0.1 2", b"lru tune 10 30 0 2",
    b"lru tune x 30 1 2", b"lru tune 1 2 3", b"lru mode flat", b"lru mode segmented",
    b"lru mode x", b"lru temp_ttl 60", b"lru temp_ttl -1", b"lru temp_ttl x", b"lru bogus 1",
    b"lru mode flat noreply", b"lru tune 10 30 0.5 3 noreply"))
EXPECTED = b"".join(line + b"\r\n" for line in (
    b"OK", b"ERROR hot and warm pcts must not exceed 80",
    b"ERROR hot/warm age factors must be greater than 0", b"ERROR", b"ERROR",
    b"ERROR", b"ERROR", b"ERROR", b"ERROR", b"ERROR", b"ERROR", b"ERROR"))
TUNED = {"hot_lru_pct": "10", "warm_lru_pct": "30", "hot_max_factor": "0.50",
         "warm_max_factor": "3.00"}
ITEMS = 200


def _native() -> ModuleType | None:
    try:
        return importlib.import_module("kvcache._kvstore")
    except ImportError:
        return None


TWINS = [storage_pure] + ([m] if (m := _native()) is not None else [])


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    started = kvcache_daemon(tmp_path_factory.mktemp("lru")).start()
    yield started
    assert started.stop() == 0, started.log()


def settings_of(host: str, port: int) -> dict[str, str]:
    return stat_values(request(host, port, b"stats settings\r\n"))


def test_lru_commands_answer_as_memcached_without_its_maintainer(daemon) -> None:
    reply = request(daemon.host, daemon.port, CONVERSATION)
    assert reply == EXPECTED
    settings = settings_of(daemon.host, daemon.port)
    assert {name: settings[name] for name in TUNED} == TUNED
    assert settings["lru_maintainer_thread"] == "no"


@pytest.mark.skipif(MEMCACHED is None, reason="memcached is not installed")
def test_lru_commands_like_memcached(tmp_path, daemon) -> None:
    missing = reference_missing()
    if missing:
        pytest.skip(f"byte-for-byte comparison needs the reference memcached: {missing}")
    real = Memcached(tmp_path, ["-t", "1", "-U", "0", "-o", "no_lru_maintainer"]).start()
    try:
        theirs = request(real.host, real.port, CONVERSATION)
        settings = settings_of(real.host, real.port)
    finally:
        real.stop()
    assert request(daemon.host, daemon.port, CONVERSATION) == theirs
    assert {name: settings[name] for name in TUNED} == TUNED


@pytest.mark.parametrize("twin", TWINS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_tune_sets_the_hot_share_of_each_twin(twin: ModuleType) -> None:
    storage = twin.Storage(1 << 24, 1 << 20, 1_000_000)
    for i in range(ITEMS // 2):
        storage.store(Mode.SET, b"k%03d" % i, b"v", 0, 0)
    slab = storage.stats.slab
    assert sum(slab.number_hot) == ITEMS // 2 * 20 // 100
    storage.hot_percent, storage.warm_percent = 60, 20
    for i in range(ITEMS // 2, ITEMS):
        storage.store(Mode.SET, b"k%03d" % i, b"v", 0, 0)
    assert sum(slab.number_hot) == ITEMS * 60 // 100


def test_tune_reaches_the_daemon_lru(tmp_path) -> None:
    fresh = kvcache_daemon(tmp_path).start()
    try:
        assert request(fresh.host, fresh.port, b"lru tune 60 20 0.2 2.0\r\n") == b"OK\r\n"
        sets = b"".join(b"set k%03d 0 0 1\r\nv\r\n" % i for i in range(ITEMS))
        assert request(fresh.host, fresh.port, sets) == b"STORED\r\n" * ITEMS
        items = stat_values(request(fresh.host, fresh.port, b"stats items\r\n"))
        hot = sum(int(v) for k, v in items.items() if k.endswith(":number_hot"))
        assert hot == ITEMS * 60 // 100
    finally:
        assert fresh.stop() == 0, fresh.log()


CRAWLER = b"lru_crawler sleep 2000\r\nlru_crawler tocrawl 7\r\nlru_crawler sleep 1000001\r\n"
CRAWLER_SET = {"lru_crawler_sleep": "2000", "lru_crawler_tocrawl": "7"}


def test_crawler_sleep_and_tocrawl_are_real(daemon) -> None:
    """`lru_crawler sleep N` sets the pause between crawler slices (microseconds) and
    `lru_crawler tocrawl N` the items per slice; `stats settings` shows both, as memcached's
    does, and a sleep over one second is refused with memcached's words."""
    reply = request(daemon.host, daemon.port, CRAWLER)
    assert reply.startswith(b"OK\r\nOK\r\nCLIENT_ERROR"), reply
    settings = settings_of(daemon.host, daemon.port)
    assert {name: settings[name] for name in CRAWLER_SET} == CRAWLER_SET
    assert request(daemon.host, daemon.port, b"lru_crawler tocrawl 0\r\n") == b"OK\r\n"
    assert settings_of(daemon.host, daemon.port)["lru_crawler_tocrawl"] == "0"  # no limit


@pytest.mark.skipif(MEMCACHED is None, reason="memcached is not installed")
def test_crawler_settings_like_memcached(tmp_path) -> None:
    real = Memcached(tmp_path, ["-t", "1", "-U", "0"]).start()
    try:
        theirs = request(real.host, real.port, CRAWLER)
        settings = settings_of(real.host, real.port)
    finally:
        real.stop()
    assert {name: settings[name] for name in CRAWLER_SET} == CRAWLER_SET
    ours = kvcache_daemon(tmp_path).start()
    try:
        assert request(ours.host, ours.port, CRAWLER) == theirs
    finally:
        assert ours.stop() == 0, ours.log()
