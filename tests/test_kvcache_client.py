"""kvcache.client: the sans-I/O parts alone, then both clients against real server processes.

Servers are real processes on their own loopback addresses (127.0.0.2-4): `memcached`, and
our own `python -m kvcache serve` once that module exists (the variant is skipped only while
the module is missing). Placement is checked by asking each server directly (pymemcache's
plain Client) which one holds a key, against kvcache.ring and against pymemcache's HashClient
driven by uhashring's ketama. Faults are real signals: SIGKILL, SIGSTOP/SIGCONT, restarts on
the same port. Timeouts and backoffs are short (1 s, 0.05 s doubling to 0.4 s) to keep the
drills quick; no test asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymemcache.client.base import Client as PlainClient
from pymemcache.client.hash import HashClient
from uhashring import HashRing

from kvcache.client import (
    AsyncClient,
    Client,
    Command,
    CommandError,
    Item,
    NetworkError,
    ProtocolError,
    ReplyReader,
    ServerDown,
    ServerError,
)
from kvcache.client_async import _AsyncConn
from kvcache.client_sync import _Conn
from kvcache.ring import Ring, parse_server
from tests import hang
from tests.conftest import find_free_port, wait_for_tcp_port

ROOT = Path(__file__).resolve().parent.parent
needs_memcached = pytest.mark.skipif(shutil.which("memcached") is None, reason="no memcached")
KINDS = [
    pytest.param("memcached", id="memcached", marks=needs_memcached),
    pytest.param("kvcache", id="kvcache"),
]
FAST = {"timeout": 1.0, "failure_threshold": 3, "retry_backoff": (0.05, 0.4)}
HANG_S = 60.0  # a timeout no drill should reach: a call on a stopped server stays pending


# -- sans-I/O: the reply reader --------------------------------------------------------------


def feed_in_pieces(data: bytes, shape: str, cut: int) -> Any:
    reader = ReplyReader()
    reader.feed(data[:cut])
    first = reader.read(shape)
    if first is not None:
        return first
    reader.feed(data[cut:])
    return reader.read(shape)


def test_reader_gives_the_same_reply_at_every_split() -> None:
    stream = b"VALUE a 5 3 9\r\nx\r\n\r\nVALUE bb 0 0\r\n\r\nEND\r\n"
    want = {b"a": Item(b"x\r\n", 5, 9), b"bb": Item(b"", 0, None)}
    for cut in range(len(stream) + 1):
        assert feed_in_pieces(stream, "values", cut) == want
    stats = b"STAT pid 12\r\nSTAT version 1.6 x\r\nEND\r\n"
    for cut in range(len(stats) + 1):
        assert feed_in_pieces(stats, "stats", cut) == {"pid": "12", "version": "1.6 x"}


def test_reader_raises_error_replies_and_stays_in_sync() -> None:
    reader = ReplyReader()
    reader.feed(b"VALUE a 0 1\r\nx\r\nSERVER_ERROR out of memory\r\nERROR\r\n")
    reader.feed(b"CLIENT_ERROR bad\r\nSTORED\r\n")
    with pytest.raises(ServerError, match="out of memory"):
        reader.read_values()
    with pytest.raises(CommandError, match="ERROR"):
        reader.read_line()
    with pytest.raises(CommandError, match="bad"):
        reader.read_line()
    assert reader.read_line() == b"STORED"
    reader.feed(b"SERVER_ERROR oom\r\nSTORED\r\nVERSION 1\r\nDELETED\r\n")
    assert reader.skip_fence() is True  # noreply leftovers up to the fence are dropped
    assert reader.read_line() == b"DELETED"


@pytest.mark.parametrize(
    ("data", "shape"),
    [
        (b"VALUE a 0 3\r\nabcd\r\n", "values"),  # block longer than announced
        (b"VALUE a zero 3\r\n", "values"),
        (b"VALUE a 0 -3\r\n", "values"),
        (b"STORED\r\n", "values"),
        (b"x" * 9000, "line"),  # no line end within the limit
        (b"VALUE a 0 999999999999\r\n", "values"),  # over the value limit
        (b"NOPE\r\n", "stats"),
    ],
)
def test_reader_rejects_broken_framing(data: bytes, shape: str) -> None:
    reader = ReplyReader()
    reader.feed(data)
    with pytest.raises(ValueError):
        reader.read(shape)


def test_arguments_are_checked_before_any_io() -> None:
    client = Client(["127.0.0.1:1"])  # nothing listens there; no call below reaches it
    for bad_key in ["", "a b", "a\nb", "k" * 251, b"\x00", "é" * 126]:
        with pytest.raises(ValueError):
            client.get(bad_key)
    with pytest.raises(TypeError):
        client.set("k", "text")  # type: ignore[arg-type]
    for kwargs in [{"flags": -1}, {"flags": 1 << 32}, {"exptime": 1 << 40}]:
        with pytest.raises(ValueError):
            client.set("k", b"v", **kwargs)
    with pytest.raises(ValueError):
        client.incr("k", -1)
    with pytest.raises(ValueError):
        Client(["a"], on_down="drop")  # type: ignore[arg-type]
    assert client.get_many([]) == {}


# -- real servers ------------------------------------------------------------------------------


class CacheProcess:
    """One memcached-compatible server process on its own loopback address."""

    def __init__(self, kind: str, host: str, log_dir: Path) -> None:
        self.kind, self.host, self.port = kind, host, find_free_port(host)
        self.log_path = log_dir / f"{kind}-{host}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def argv(self) -> list[str]:
        if self.kind == "kvcache":
            return [sys.executable, "-m", "kvcache", "serve", "-p", str(self.port), "-l", self.host]
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        return ["memcached", "-p", str(self.port), "-l", self.host, "-U", "0", *user]

    def start(self) -> CacheProcess:
        with open(self.log_path, "ab") as log:
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=log, cwd=ROOT, env=env)
        wait_for_tcp_port(self.host, self.port, timeout=20, proc=self.proc)
        return self

    def signal(self, signum: int) -> None:
        """Send `signum`; SIGSTOP returns once every thread stopped (tests/hang.py)."""
        assert self.proc is not None
        hang.send(self.proc, signum)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)
        if self.kind == "memcached":  # nothing to flush; its SIGTERM path takes ~0.5 s
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def holds(self, key: str) -> bytes | None:
        """The value this server alone holds for key (asked directly, not through a ring)."""
        direct = PlainClient((self.host, self.port), connect_timeout=2, timeout=2)
        try:
            return direct.get(key)
        finally:
            direct.close()


def start_three(kind: str, log_dir: Path) -> list[CacheProcess]:
    started: list[CacheProcess] = []
    try:
        for i in range(3):
            started.append(CacheProcess(kind, f"127.0.0.{i + 2}", log_dir).start())
    except BaseException:
        for proc in started:
            proc.stop()
        raise
    return started


@pytest.fixture(scope="module", params=KINDS)
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[CacheProcess]]:
    """Three servers shared by the tests that do not hurt them (flushed before each)."""
    procs = start_three(request.param, tmp_path_factory.mktemp("cache"))
    yield procs
    for proc in procs:
        proc.stop()


@pytest.fixture
def three(shared: list[CacheProcess]) -> list[CacheProcess]:
    with Client([p.address for p in shared]) as client:
        client.flush_all()
    return shared


@pytest.fixture(params=KINDS)
def fresh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[CacheProcess]]:
    """Three servers of one test's own, for the fault drills."""
    procs = start_three(request.param, tmp_path)
    yield procs
    for proc in procs:
        proc.stop()


def keys_on(ring: Ring, server: str, count: int, prefix: str = "key") -> list[str]:
    found = []
    i = 0
    while len(found) < count:
        if ring.get_server(f"{prefix}:{i}") == server:
            found.append(f"{prefix}:{i}")
        i += 1
    return found


def test_every_operation(three: list[CacheProcess]) -> None:
    with Client([p.address for p in three]) as c:
        assert c.get("k") is None
        assert c.set("k", b"v1", flags=42) is True
        assert c.get("k") == Item(b"v1", 42, None)
        token = c.gets("k")
        assert token is not None and token.value == b"v1" and token.cas is not None
        assert c.add("k", b"x") is False and c.add("new", b"n") is True
        assert c.replace("k", b"v2", flags=42) and c.replace("absent", b"x") is False
        assert c.append("k", b">") is True and c.prepend("k", b"<") is True
        assert c.append("absent", b"x") is False and c.prepend("absent", b"x") is False
        assert c.get("k") == Item(b"<v2>", 42, None)
        fresh_token = c.gets("k")
        assert fresh_token is not None
        assert c.cas("k", b"stale", token.cas) is False  # type: ignore[arg-type]
        assert c.cas("k", b"v3", fresh_token.cas, flags=7) is True  # type: ignore[arg-type]
        assert c.cas("absent", b"v", 1) is None
        assert c.get("k") == Item(b"v3", 7, None)
        assert c.set("n", b"10") and c.incr("n", 5) == 15 and c.decr("n", 20) == 0
        assert c.incr("n", (1 << 64) - 1) == (1 << 64) - 1 and c.incr("n") == 0  # wraps
        assert c.incr("absent") is None and c.decr("absent") is None
        with pytest.raises(CommandError, match="non-numeric"):
            c.incr("k")
        assert c.touch("k", 100) is True and c.touch("absent", 100) is False
        assert c.gat("k", 100) == Item(b"v3", 7, None) and c.gat("absent", 1) is None
        assert c.delete("k") is True and c.delete("k") is False
        assert c.set("gone", b"v", exptime=-1) is True and c.get("gone") is None
        for verb in ("set", "add", "replace"):
            assert getattr(c, verb)("nr", b"v", noreply=True) is True
        assert c.append("nr", b"+", noreply=True) and c.prepend("nr", b"-", noreply=True)
        assert c.incr("n", 3, noreply=True) is None and c.touch("nr", 50, noreply=True)
        assert c.get("nr") == Item(b"-v+", 0, None)
        n = c.get("n")  # a number that lost digits MAY be space-padded (protocol.txt)
        assert n is not None and n.value.rstrip(b" ") == b"3"
        assert c.delete("nr", noreply=True) is True and c.get("nr") is None
        assert c.gets("n") is not None
        # binary values, CRLF inside, empty, large
        for value in (b"", b"\r\nEND\r\n", bytes(range(256)), os.urandom(300_000)):
            assert c.set("bin", value) and c.get("bin") == Item(value, 0, None)
        assert set(c.version()) == set(c.servers)
        stats = c.stats()
        assert set(stats) == set(c.servers) and all("pid" in s for s in stats.values())
        assert all("maxconns" in s for s in c.stats("settings").values())
        c.flush_all()
        assert c.get("n") is None


def test_get_many_asks_each_server_once(
    three: list[CacheProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    with Client([p.address for p in three]) as c:
        keys = [f"many:{i}" for i in range(200)]
        for i, key in enumerate(keys[:150]):
            c.set(key, b"%d" % i, flags=i)
        sent: list[bytes] = []
        steps: list[str] = []
        send, receive = _Conn.send, _Conn.receive

        def counting(self: _Conn, command: Any, deadline: float) -> None:
            sent.append(command.payload)
            steps.append("write")
            send(self, command, deadline)

        def reading(self: _Conn, command: Any, deadline: float) -> Any:
            steps.append("read")
            return receive(self, command, deadline)

        monkeypatch.setattr(_Conn, "send", counting)
        monkeypatch.setattr(_Conn, "receive", reading)
        got = c.get_many(keys + [b"many:0"])
        # one request per server, every one written before any reply is read: one round trip
        assert len(sent) == 3 and all(p.startswith(b"get ") for p in sent)
        assert steps == ["write"] * 3 + ["read"] * 3
        ring = Ring(c.servers)
        asked = sorted(k for p in sent for k in p.split()[1:])
        assert asked == sorted(k.encode() for k in keys)  # the repeated key asked once
        for payload in sent:  # each request holds exactly one server's keys
            assert len({ring.get_server(k) for k in payload.split()[1:]}) == 1
        want: dict[str | bytes, Item] = {k: Item(b"%d" % i, i, None) for i, k in enumerate(keys)}
        assert got == {**{k: want[k] for k in keys[:150]}, b"many:0": want["many:0"]}
        with_cas = c.get_many(keys[:5], cas=True)
        assert all(item.cas is not None for item in with_cas.values())


def test_keys_land_where_the_ring_says(three: list[CacheProcess]) -> None:
    by_address = {p.address: p for p in three}
    ring = Ring(by_address)
    with Client(list(by_address)) as c:
        keys = [f"place:{i}" for i in range(300)]
        for key in keys:
            c.set(key, key.encode())
        for key in keys:
            home = ring.get_server(key)
            assert {a for a, p in by_address.items() if p.holds(key) is not None} == {home}
        assert len({ring.get_server(k) for k in keys}) == 3


class UhashringKetama:
    """A pymemcache HashClient hasher: uhashring's ketama with libmemcached's node names."""

    def __init__(self) -> None:
        self.ring = HashRing(hash_fn="ketama")
        self.nodes: dict[str, str] = {}  # ketama name -> HashClient's "host:port"

    def _name(self, node: str) -> str:
        host, port, _ = parse_server(node)
        return host if port == 11211 else node

    def add_node(self, node: str) -> None:
        self.nodes[self._name(node)] = node
        self.ring.add_node(self._name(node))

    def remove_node(self, node: str) -> None:
        self.ring.remove_node(self._name(node))

    def get_node(self, key: str) -> str | None:
        name = self.ring.get_node(key)
        return None if name is None else self.nodes[name]


def test_pymemcache_hashclient_with_ketama_agrees(three: list[CacheProcess]) -> None:
    by_address = {p.address: p for p in three}
    theirs = HashClient([(p.host, p.port) for p in three], hasher=UhashringKetama, timeout=2)
    keys = [f"pm:{i}" for i in range(300)]
    for key in keys:
        theirs.set(key, key.encode(), noreply=False)
    ring = Ring(by_address)
    hasher = theirs.hasher  # the UhashringKetama pymemcache placed each key with
    with Client(list(by_address)) as ours:
        for key in keys:
            holders = [a for a, p in by_address.items() if p.holds(key) is not None]
            assert holders == [hasher.get_node(key)] == [ring.get_server(key)]
            assert ours.get(key) == Item(key.encode(), 0, None)
        assert ours.get_many(keys) == {k: Item(k.encode(), 0, None) for k in keys}
    theirs.close()


def test_server_error_replies_are_answers_not_failures(three: list[CacheProcess]) -> None:
    with Client([p.address for p in three], **FAST) as c:  # type: ignore[arg-type]
        for _ in range(5):  # memcached's default item limit is 1 MiB
            with pytest.raises((ServerError, CommandError)):
                c.set("huge", b"x" * (2 << 20))
        assert not c.down_servers
        assert all(h.failures == 0 for h in c.router.health.values())
        assert c.set("after", b"ok") and c.get("after") == Item(b"ok", 0, None)


@pytest.mark.parametrize("kind", KINDS)
def test_out_of_memory_is_not_a_failure(kind: str, tmp_path: Path) -> None:
    proc = CacheProcess(kind, "127.0.0.5", tmp_path)
    argv = proc.argv() + ["-m", "2", "-M"]  # 2 MiB, no eviction: full means an error
    proc.argv = lambda: argv  # type: ignore[method-assign]
    proc.start()
    try:
        with Client([proc.address], **FAST) as c:  # type: ignore[arg-type]
            errors = 0
            for i in range(400):
                try:
                    c.set(f"fill:{i}", b"x" * 40_000)
                except ServerError as exc:
                    assert "out of memory" in str(exc)
                    errors += 1
            assert errors > 10
            assert not c.down_servers and c.router.health[proc.address].failures == 0
            assert c.get("fill:0") == Item(b"x" * 40_000, 0, None)
    finally:
        proc.stop()


def test_stray_replies_never_become_answers(three: list[CacheProcess]) -> None:
    with Client([p.address for p in three], **FAST) as c:  # type: ignore[arg-type]
        c.set("a", b"1")
        c.set("b", b"2")
        # memcached answers an unparsable noreply line with ERROR: the fence drops it
        c._run(Command(b"bogus noreply\r\n", "none", lambda _: None, b"a"))
        assert c.get("a") == Item(b"1", 0, None)
        # a VALUE for a key that was not asked for is a broken reply, not a value
        wrong = Command(b"get a\r\n", "values", lambda items: items, b"a", frozenset([b"b"]))
        with pytest.raises(ProtocolError):
            c._run(wrong)
        assert c.get("b") == Item(b"2", 0, None)


def test_threads_share_one_client(three: list[CacheProcess]) -> None:
    with Client([p.address for p in three]) as c:
        failures: list[str] = []

        def worker(n: int) -> None:
            for i in range(200):
                key, value = f"t{n}:{i}", b"%d-%d" % (n, i)
                c.set(key, value)
                if c.get(key) != Item(value, 0, None):
                    failures.append(key)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []


# -- fault drills --------------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    """Poll until condition() holds (a bound on a wait, not a timing assertion)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting: {what}")
        time.sleep(0.02)


def comes_back(client: Client, server: str, key: str) -> Callable[[], bool]:
    """A call for `key` runs the due probes; true once `server` is up again."""

    def check() -> bool:
        try:
            client.get(key)
        except NetworkError:
            pass
        return server not in client.down_servers

    return check


def split(ring: Ring, victim: str, count: int = 150) -> tuple[list[str], list[str]]:
    keys = [f"drill:{i}" for i in range(count)]
    return [k for k in keys if ring.get_server(k) == victim], [
        k for k in keys if ring.get_server(k) != victim
    ]


def trip(client: Client, keys: list[str], match: str | None = None) -> None:
    """Call for the victim's keys until the threshold: each fails for real, none fast."""
    for key in keys[:3]:
        with pytest.raises(NetworkError, match=match) as info:
            client.get(key)
        assert not isinstance(info.value, ServerDown)


def test_killed_server_fails_fast_then_comes_back(fresh: list[CacheProcess]) -> None:
    addresses = [p.address for p in fresh]
    ring, victim = Ring(addresses), fresh[1]
    theirs, others = split(ring, victim.address)
    with Client(addresses, on_down="fail", **FAST) as c:  # type: ignore[arg-type]
        for key in theirs + others:
            c.set(key, key.encode())
        victim.kill()
        trip(c, theirs)
        assert c.down_servers == {victim.address}
        for key in theirs:  # fail fast, never another server's answer
            with pytest.raises(ServerDown):
                c.get(key)
            with pytest.raises(ServerDown):
                c.set(key, b"elsewhere")
        assert all(c.get(k) == Item(k.encode(), 0, None) for k in others)
        with pytest.raises(ServerDown) as info:
            c.get_many(theirs + others)
        assert info.value.partial == {k: Item(k.encode(), 0, None) for k in others}
        assert set(c.version()) == set(addresses) - {victim.address}
        victim.start()  # same address, empty
        wait_until(comes_back(c, victim.address, others[0]), "the restarted server is probed")
        assert c.get(theirs[0]) is None  # its data died with it: a miss, not a wrong value
        assert c.set(theirs[0], b"again") and victim.holds(theirs[0]) == b"again"


def test_killed_server_remaps_to_its_successor_then_keys_go_home(
    fresh: list[CacheProcess],
) -> None:
    addresses = [p.address for p in fresh]
    by_address = {p.address: p for p in fresh}
    ring, victim = Ring(addresses), fresh[0]
    theirs, others = split(ring, victim.address)
    with Client(addresses, on_down="remap", **FAST) as c:  # type: ignore[arg-type]
        for key in theirs + others:
            c.set(key, key.encode())
        victim.kill()
        trip(c, theirs)
        assert c.down_servers == {victim.address}
        for key in theirs:
            successor = ring.get_servers(key, 2)[1]
            assert ring.without([victim.address]).get_server(key) == successor
            assert c.get(key) is None
            assert c.set(key, b"remapped") and by_address[successor].holds(key) == b"remapped"
        assert c.get_many(others) == {k: Item(k.encode(), 0, None) for k in others}
        victim.start()
        wait_until(comes_back(c, victim.address, others[0]), "the restarted server is probed")
        assert c.set(theirs[0], b"home") and victim.holds(theirs[0]) == b"home"
        assert c.get(theirs[0]) == Item(b"home", 0, None)


def test_stopped_server_times_out_goes_down_and_returns(fresh: list[CacheProcess]) -> None:
    addresses = [p.address for p in fresh]
    ring, victim = Ring(addresses), fresh[2]
    theirs, others = split(ring, victim.address)
    with Client(addresses, on_down="fail", **FAST) as c:  # type: ignore[arg-type]
        for key in theirs + others:
            c.set(key, key.encode())
        victim.signal(signal.SIGSTOP)
        try:
            trip(c, theirs, match="timed out")
            assert c.down_servers == {victim.address}
            with pytest.raises(ServerDown):
                c.get(theirs[3])
            assert all(c.get(k) == Item(k.encode(), 0, None) for k in others[:20])
        finally:
            victim.signal(signal.SIGCONT)
        wait_until(comes_back(c, victim.address, others[0]), "the resumed server is probed")
        assert all(c.get(k) == Item(k.encode(), 0, None) for k in theirs)  # it kept its data


# -- the asyncio client ------------------------------------------------------------------------


def test_async_every_operation(three: list[CacheProcess]) -> None:
    async def drill() -> None:
        async with AsyncClient([p.address for p in three]) as c:
            assert await c.set("k", b"v1", flags=3) is True
            assert await c.get("k") == Item(b"v1", 3, None)
            token = await c.gets("k")
            assert token is not None and token.cas is not None
            assert await c.cas("k", b"v2", token.cas) is True
            assert await c.cas("k", b"v3", token.cas) is False
            assert await c.add("k", b"x") is False and await c.replace("k", b"v4")
            assert await c.append("k", b">") and await c.prepend("k", b"<")
            assert await c.get("k") == Item(b"<v4>", 0, None)
            assert await c.set("n", b"1") and await c.incr("n", 9) == 10
            assert await c.decr("n", 3) == 7 and await c.incr("absent") is None
            with pytest.raises(CommandError):
                await c.incr("k")
            assert await c.touch("k", 10) and await c.gat("k", 10) == Item(b"<v4>", 0, None)
            assert await c.delete("k") and not await c.delete("k")
            assert await c.set("nr", b"v", noreply=True) and await c.get("nr") == Item(b"v", 0)
            values = await asyncio.gather(*(c.set(f"g:{i}", b"%d" % i) for i in range(100)))
            assert all(values)
            got = await c.get_many([f"g:{i}" for i in range(120)])
            assert got == {f"g:{i}": Item(b"%d" % i, 0, None) for i in range(100)}
            assert set(await c.version()) == set(c.servers)
            assert all("pid" in s for s in (await c.stats()).values())
            await c.flush_all()
            assert await c.get("n") is None

    asyncio.run(drill())


def test_async_get_many_asks_all_servers_at_once(
    three: list[CacheProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    in_flight, most = 0, 0
    original = _AsyncConn.exchange_one

    async def tracking(self: _AsyncConn, command: Any) -> Any:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        try:
            return await original(self, command)
        finally:
            in_flight -= 1

    async def drill() -> None:
        async with AsyncClient([p.address for p in three]) as c:
            for i in range(60):
                await c.set(f"m:{i}", b"v")
            monkeypatch.setattr(_AsyncConn, "exchange_one", tracking)
            assert len(await c.get_many([f"m:{i}" for i in range(60)])) == 60

    asyncio.run(drill())
    assert most == 3


def test_async_kill_fail_and_remap(fresh: list[CacheProcess]) -> None:
    addresses = [p.address for p in fresh]
    by_address = {p.address: p for p in fresh}
    ring, victim = Ring(addresses), fresh[1]
    theirs, others = split(ring, victim.address)

    async def drill() -> None:
        failing = AsyncClient(addresses, on_down="fail", **FAST)  # type: ignore[arg-type]
        remapping = AsyncClient(addresses, on_down="remap", **FAST)  # type: ignore[arg-type]
        for key in theirs + others:
            await failing.set(key, key.encode())
        victim.kill()
        for c in (failing, remapping):
            for key in theirs[:3]:
                with pytest.raises(NetworkError) as info:
                    await c.get(key)
                assert not isinstance(info.value, ServerDown)
            assert c.down_servers == {victim.address}
        for key in theirs:
            with pytest.raises(ServerDown):
                await failing.get(key)
            assert await remapping.set(key, b"moved")
            assert by_address[ring.get_servers(key, 2)[1]].holds(key) == b"moved"
        for c in (failing, remapping):
            assert await c.get_many(others) == {k: Item(k.encode(), 0, None) for k in others}
        victim.start()
        for c in (failing, remapping):
            for _ in range(500):
                try:
                    await c.get(others[0])
                except NetworkError:
                    pass
                if not c.down_servers:
                    break
                await asyncio.sleep(0.02)
            assert not c.down_servers
            assert await c.set(theirs[0], b"home") and victim.holds(theirs[0]) == b"home"
            await c.close()

    asyncio.run(drill())


async def cancelled_while_waiting(addresses: list[str], victim: CacheProcess, key: str) -> None:
    """A call cancelled while it waits on a hung server drops its connection and counts no
    failure. Certain, not timed: the server is stopped, the timeout is far off, and the
    cancel comes once the request sits unread in the server's socket."""
    async with AsyncClient(addresses, timeout=HANG_S) as c:
        task = asyncio.ensure_future(c.get(key))
        deadline = time.monotonic() + HANG_S
        while not hang.unread_bytes(victim.host, victim.port):
            assert not task.done() and time.monotonic() < deadline, "the request never left"
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert c.router.health[victim.address].failures == 0


def test_async_stopped_server_times_out_and_returns(fresh: list[CacheProcess]) -> None:
    addresses = [p.address for p in fresh]
    ring, victim = Ring(addresses), fresh[0]
    theirs, others = split(ring, victim.address)

    async def drill() -> None:
        async with AsyncClient(addresses, on_down="remap", **FAST) as c:  # type: ignore[arg-type]
            for key in theirs + others:
                await c.set(key, key.encode())
            victim.signal(signal.SIGSTOP)
            try:
                await cancelled_while_waiting(addresses, victim, theirs[0])
                for key in theirs[:3]:
                    with pytest.raises(NetworkError, match="timed out"):
                        await c.get(key)
                assert c.down_servers == {victim.address}
                assert await c.get(theirs[0]) is None  # remapped: a miss on the successor
                assert await c.set(theirs[0], b"newer")  # written on the successor
                assert await c.delete(theirs[1]) is False  # deleted there (a miss)
            finally:
                victim.signal(signal.SIGCONT)
            for _ in range(500):
                await c.get(others[0])
                if not c.down_servers:
                    break
                await asyncio.sleep(0.02)
            assert not c.down_servers
            # Home again, flushed by the probe: the copies it kept through the hang are gone,
            # so neither the overwritten nor the deleted key reads its older value.
            assert victim.holds(theirs[0]) is None and victim.holds(theirs[1]) is None
            assert await c.get(theirs[0]) is None and await c.get(theirs[1]) is None
            assert await c.get_many(others) == {k: Item(k.encode(), 0, None) for k in others}

    asyncio.run(drill())
