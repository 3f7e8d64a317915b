"""`kvcache proxy` with real processes: three backends on 127.0.0.2-4 and the proxy.

Backends are real memcached (and, for the protocol checks, `python -m kvcache serve`). Keys
are checked on the backend `kvcache.ring.Ring` names, asking the backends directly. Replies
are compared byte for byte with a standalone memcached where one server would answer the
same (kvcache/proxy_plan.py says which checks the proxy makes itself). Fault drills are real:
SIGKILL, SIGSTOP/SIGCONT, restart on the same port. Nothing is timed: waits poll a condition
under a hang deadline.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pymemcache.client.base import Client

from kvcache.proxy_plan import Forward, Local, Retrieve, plan
from kvcache.proxy_wire import FENCED, LINE, META, VALUES, ReplyFramer
from kvcache.ring import Ring
from tests import hang
from tests.conftest import find_free_port
from tests.kvcache_wire import MEMCACHED, MEMCCAPABLE, Memcached, converse, masked, request
from tests.procs import ROOT, Daemon, kvcache_daemon

pytestmark = pytest.mark.skipif(MEMCACHED is None, reason="memcached is not installed")

FLAGS = ["-m", "64", "-I", "1m", "-t", "1", "-U", "0"]
HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
HANG_S = 20.0


def _wired() -> bool:
    """Whether `python -m kvcache proxy` exists yet (the server engineer wires it)."""
    run = subprocess.run([sys.executable, "-m", "kvcache", "proxy", "--help"], cwd=ROOT,
                         capture_output=True)
    return run.returncode == 0


PROXY_MODULE = ["kvcache", "proxy"] if _wired() else ["kvcache.proxy"]


def wait_until(check: Callable[[], object], what: str) -> object:
    """Poll `check` until it returns something true; fail after HANG_S (a hang detector)."""
    deadline = time.monotonic() + HANG_S
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


class Node:
    """One backend process (memcached or kvcache serve) that can be killed, stopped,
    continued and restarted on the same address."""

    def __init__(self, tmp: Path, host: str, kind: str) -> None:
        self.kind = kind
        if kind == "memcached":
            self.mc: Memcached | None = Memcached(tmp, FLAGS, host=host)
            self.port = self.mc.port
            self.daemon: Daemon | None = None
        else:
            self.mc = None
            self.daemon = kvcache_daemon(tmp, host=host, extra=FLAGS)
            self.port = self.daemon.port
        self.host = host

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        proc = self.mc.proc if self.mc is not None else self.daemon.proc  # type: ignore[union-attr]
        assert proc is not None
        return proc

    def start(self) -> Node:
        (self.mc or self.daemon).start()  # type: ignore[union-attr]
        return self

    def signal(self, signum: int) -> None:
        """Send `signum`; SIGSTOP returns once every thread stopped (tests/hang.py)."""
        hang.send(self.proc, signum)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def client(self) -> Client:
        return Client((self.host, self.port), timeout=HANG_S, connect_timeout=HANG_S)


class Cluster:
    """Three backends and a proxy in front of them (`extra`: proxy options)."""

    def __init__(self, tmp: Path, kind: str = "memcached", extra: tuple[str, ...] = (),
                 weights: tuple[int, ...] = (1, 1, 1)):
        self.nodes = [Node(tmp, host, kind) for host in HOSTS]
        for node in self.nodes:
            node.start()
        self.ring = Ring([(n.host, n.port, w) for n, w in zip(self.nodes, weights, strict=True)])
        port = find_free_port()
        servers = [f"{n.address}:{w}" for n, w in zip(self.nodes, weights, strict=True)]
        argv = [*PROXY_MODULE, "-l", "127.0.0.1", "-p", str(port),
                "--servers", ",".join(servers), *extra]
        self.proxy = Daemon(argv, "127.0.0.1", port, tmp / f"proxy-{port}.log").start()
        self.port = port

    def node(self, address: str) -> Node:
        return next(n for n in self.nodes if n.address == address)

    def client(self) -> Client:
        return Client(("127.0.0.1", self.port), timeout=HANG_S, connect_timeout=HANG_S)

    def raw(self, data: bytes) -> bytes:
        """The replies to `data`, read up to the proxy's own answer to a closing `mn` (a
        sentinel key could route to a backend a drill took down)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=HANG_S) as sock:
            sock.sendall(data + b"mn\r\n")
            out = b""
            while not out.endswith(b"MN\r\n"):
                chunk = sock.recv(1 << 20)
                assert chunk, f"connection closed after {out[-200:]!r}"
                out += chunk
        return out[:-4]

    def stats(self, arg: str = "") -> dict[str, str]:
        reply = self.raw(f"stats {arg}".strip().encode() + b"\r\n")
        return {line.split(" ")[1]: line.split(" ", 2)[2] for line in reply.decode().split("\r\n")
                if line.startswith("STAT ")}

    def state(self, address: str) -> str:
        return self.stats("backends")[f"backend:{address}:state"]

    def close(self) -> None:
        code = self.proxy.stop()
        for node in self.nodes:
            node.stop()
        assert code == 0, self.proxy.log()  # SIGTERM: a graceful exit 0


@pytest.fixture(scope="module", params=["memcached", "kvcache"])
def cluster(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A shared cluster for tests that leave every backend running."""
    tmp = tmp_path_factory.mktemp(f"proxy-{request.param}")
    cluster = Cluster(tmp, request.param)
    yield cluster
    cluster.close()


@pytest.fixture()
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """A fresh memcached cluster per fault drill."""
    made: list[Cluster] = []

    def make(*extra: str, weights: tuple[int, ...] = (1, 1, 1)) -> Cluster:
        made.append(Cluster(tmp_path, "memcached", extra, weights))
        return made[-1]

    yield make
    for cluster in made:
        cluster.close()


# -- sans-I/O pieces ---------------------------------------------------------------------------
def test_framer_takes_replies_split_anywhere() -> None:
    stream = (b"STORED\r\nVALUE a 5 2 9\r\nhi\r\nVALUE b 0 0\r\n\r\nEND\r\n"
              b"VA 3 f1\r\nabc\r\nEN\r\nVA 1\r\nx\r\nMN\r\nMN\r\n42\r\n")
    shapes = [LINE, VALUES, META, FENCED, FENCED, LINE]
    framer = ReplyFramer()
    got: list[object] = []
    for byte in stream:
        framer.feed(bytes([byte]))
        while len(got) < len(shapes) and (reply := framer.take(shapes[len(got)])) is not None:
            got.append(reply)
    assert got == [
        b"STORED\r\n",
        ([(b"a", b"VALUE a 5 2 9\r\nhi\r\n"), (b"b", b"VALUE b 0 0\r\n\r\n")], b"END\r\n"),
        b"VA 3 f1\r\nabc\r\n",
        b"EN\r\nVA 1\r\nx\r\n",
        b"",
        b"42\r\n",
    ]


@pytest.mark.parametrize("shape,data", [(LINE, b"VALUE a 0 1\r\n"), (VALUES, b"STORED\r\n"),
                                        (META, b"END\r\n"), (VALUES, b"VALUE a 0 1\r\nxyz\r\n")])
def test_framer_refuses_a_reply_out_of_step(shape: str, data: bytes) -> None:
    framer = ReplyFramer()
    framer.feed(data)
    with pytest.raises(ValueError):
        framer.take(shape)


def test_plan_routes_meta_base64_keys_by_their_bytes() -> None:
    mg = plan([b"mg", b"Zm9v", b"b", b"v", b"q"])
    assert isinstance(mg, Forward) and mg.key == b"foo" and mg.shape == FENCED
    assert mg.payload == b"mg Zm9v b v q\r\nmn\r\n" and not mg.write
    assert isinstance(plan([b"get", b"k" * 251]), Local)
    get = plan([b"gat", b"+10", b"a", b"b", b"a"])
    assert isinstance(get, Retrieve) and get.exptime == b"10" and get.keys == [b"a", b"b", b"a"]


# -- the protocol through the proxy -------------------------------------------------------------
def test_every_operation_lands_on_the_ring_owner(cluster: Cluster) -> None:
    client = cluster.client()
    client.flush_all()
    keys = [f"op:{i}" for i in range(30)]
    for key in keys:
        assert client.set(key, key.encode(), expire=0, noreply=False)
    for key in keys:
        owner = cluster.ring.get_server(key)
        for node in cluster.nodes:
            held = node.client().get(key)
            assert held == (key.encode() if node.address == owner else None), (key, node.address)
    k = keys[0]
    assert client.get(k) == k.encode()
    value, token = client.gets(k)
    assert value == k.encode()
    assert client.cas(k, b"new", token, noreply=False)
    assert client.cas(k, b"newer", token, noreply=False) is False
    assert not client.add(k, b"x", noreply=False)
    assert client.add("op:added", b"x", noreply=False)
    assert client.replace(k, b"mid", noreply=False)
    assert client.append(k, b">", noreply=False) and client.prepend(k, b"<", noreply=False)
    assert client.get(k) == b"<mid>"
    assert client.set("op:n", b"10", noreply=False)
    assert client.incr("op:n", 5) == 15 and client.decr("op:n", 20) == 0
    assert client.touch(k, 100, noreply=False)
    assert client.delete("op:added", noreply=False)
    assert not client.delete("op:added", noreply=False)
    assert client.get_many(keys[1:4]) == {key: key.encode() for key in keys[1:4]}
    assert set(client.gets_many(keys[1:3])) == set(keys[1:3])
    client.set_many({"op:m1": b"1", "op:m2": b"2"}, noreply=False)
    client.delete_many(["op:m1"], noreply=False)
    assert client.get_many(["op:m1", "op:m2"]) == {"op:m2": b"2"}
    assert client.set("op:g", b"gv", flags=3, noreply=False)
    assert cluster.raw(b"gat 100 op:g\r\n") == b"VALUE op:g 3 2\r\ngv\r\nEND\r\n"
    assert cluster.raw(b"gats 100 nope\r\n") == b"END\r\n"
    assert client.version().endswith(b"-proxy")
    assert client.flush_all(noreply=False)
    assert all(node.client().get(k) is None for node in cluster.nodes)
    stats = client.stats()
    assert stats[b"backends"] == 3 or stats[b"backends"] == b"3"
    client.quit()


def test_multiget_of_200_keys_comes_back_in_order(cluster: Cluster) -> None:
    keys = [f"mget:{i}" for i in range(200)]
    client = cluster.client()
    client.set_many({k: b"v-" + k.encode() for k in keys[::2]}, noreply=False)
    owners = {cluster.ring.get_server(k) for k in keys}
    assert len(owners) == 3
    asked = keys + keys[:3]  # repeats are answered each time, as memcached does
    reply = cluster.raw(("get " + " ".join(asked) + "\r\n").encode())
    expected = b"".join(b"VALUE %s 0 %d\r\nv-%s\r\n" % (k.encode(), len(k) + 2, k.encode())
                        for k in asked if int(k.split(":")[1]) % 2 == 0)
    assert reply == expected + b"END\r\n"
    gets = cluster.raw(("gets " + " ".join(keys) + "\r\n").encode())
    assert [line.split(b" ")[1].decode() for line in gets.split(b"\r\n")
            if line.startswith(b"VALUE")] == keys[::2]


def test_meta_quiet_pipeline_closed_by_mn(cluster: Cluster) -> None:
    keys = [f"q:{i}" for i in range(40)]
    sets = b"".join(b"ms %s 2 q\r\nv%d\r\n" % (k.encode(), i % 10) for i, k in enumerate(keys))
    assert cluster.raw(sets + b"mn\r\n") == b"MN\r\n"
    gets = b"".join(b"mg %s v q k\r\nmg %s-miss v q\r\n" % (k.encode(), k.encode())
                    for k in keys)
    reply = cluster.raw(gets + b"md q:0 q\r\nmd q:0 q\r\nmn\r\n")
    hits = b"".join(b"VA 2 k%s\r\nv%d\r\n" % (k.encode(), i % 10) for i, k in enumerate(keys))
    assert reply == hits + b"NF\r\nMN\r\n"  # a quiet md hides HD, not NF


def test_noreply_pipeline_says_nothing(cluster: Cluster) -> None:
    keys = [f"nr:{i}" for i in range(50)]
    writes = b"".join(b"set %s 0 0 1 noreply\r\n%d\r\n" % (k.encode(), i % 10)
                      for i, k in enumerate(keys))
    writes += b"incr nr:1 5 noreply\r\ndelete nr:2 noreply\r\ntouch nr:3 10 noreply\r\n"
    writes += b"append nr:4 0 0 1 noreply\r\n!\r\nflush_all 0 noreply\r\nset nr:5 0 0 1\r\nz\r\n"
    assert cluster.raw(writes + b"get nr:5 nr:1\r\n") == b"STORED\r\nVALUE nr:5 0 1\r\nz\r\nEND\r\n"
    writes = b"".join(b"set %s 0 0 1 noreply\r\n%d\r\n" % (k.encode(), i % 10)
                      for i, k in enumerate(keys))
    writes += b"incr nr:1 5 noreply\r\ndelete nr:2 noreply\r\n"
    reply = cluster.raw(writes + ("get " + " ".join(keys[:4]) + "\r\n").encode())
    assert reply == b"VALUE nr:0 0 1\r\n0\r\nVALUE nr:1 0 1\r\n6\r\nVALUE nr:3 0 1\r\n3\r\nEND\r\n"


@pytest.mark.skipif(MEMCCAPABLE is None, reason="memccapable is not installed")
def test_memccapable_ascii_passes(cluster: Cluster) -> None:
    run = subprocess.run([MEMCCAPABLE, "-a", "-t", "10", "-h", "127.0.0.1", "-p",
                          str(cluster.port)], capture_output=True, text=True, timeout=120)
    output = run.stdout + run.stderr
    assert "[FAIL]" not in output and run.returncode == 0, output
    assert "All tests passed" in output


# -- replies equal to one memcached's -----------------------------------------------------------
def L(*lines: str | bytes) -> bytes:  # noqa: N802 - reads like a transcript
    return b"".join((x.encode() if isinstance(x, str) else x) + b"\r\n" for x in lines)


K251 = "k" * 251
BIG = b"v" * (1024 * 1024 + 1)
CASES: dict[str, bytes] = {
    "set-get": L("set a 0 0 5", "hello", "get a", "gets a", "get a a nope a", "bget a"),
    "modes": L("add a 0 0 1", "x", "add a 0 0 1", "y", "replace b 0 0 1", "x", "replace a 3 0 2",
               "yy", "append a 0 0 1", ">", "prepend a 0 0 1", "<", "append zz 0 0 1", "x",
               "get a", "add b 5 0 2 noreply", "bb", "get b"),
    "cas": L("cas a 0 0 1 1", "x", "set a 0 0 1", "x", "cas a 0 0 1 999999", "y",
             "cas a 0 0 1", "cas a 0 0 1 abc", "x", "cas a 0 0 1 -1", "x", "get a"),
    "delete": L("delete a", "set a 0 0 1", "x", "delete a", "delete a 0", "delete a 1",
                "delete a noreply", "delete a 0 noreply", "delete a 1 noreply", "delete a x y z",
                "delete", "delete a 0 noreply x", "delete " + K251),
    "arithmetic": L("incr n 1", "decr n 1", "set n 0 0 3", "100", "decr n 1",
                    "incr n 18446744073709551615", "incr n abc", "incr n -1", "decr n 1000",
                    "set t 0 0 2", "ab", "incr t 1",
                    "incr " + K251 + " 1", "incr n", "get n"),
    "touch": L("touch a 10", "set a 0 0 1", "x", "touch a 10", "touch a abc", "gat 100 a",
               "gat abc a", "gats 0", "touch a"),
    "bad-lines": L("get", "gets", "set " + K251 + " 0 0 1", "x", "set a 0 0 -1",
                   "set a abc 0 1", "x", "foo", "x", "m", "mz a", "GET a", "", "set a 0 0 1 2 3 4",
                   "verbosity", "verbosity 1", "verbosity x", "verbosity 1 noreply",
                   "flush_all abc", "flush_all 0"),
    "data-chunk": L("set a 0 0 1", "xyz", "set b 0 0 2", "ab", "get a b"),
    "too-large": L("set a 0 0 1", "x", b"set a 0 0 %d" % len(BIG), BIG, "get a",
                   "set b 0 0 1", "x", b"ms b %d T0" % len(BIG), BIG, "get b"),
    "meta": L("ms a 2 T0 F5", "hi", "mg a v f t s", "mg a k O123 v", "mg miss v",
              "mg miss q v", "ma n", "ma n N0 J10 v", "ma n MD D3 v", "mg a zz", "mg a v v",
              "md a C999", "ms a 2 MX", "hi", "mg " + K251, "mg", "md a q", "mg a v",
              "ms Zm9v 3 b", "bar", "mg Zm9v b v k", "get foo", "me foo", "mn"),
    "meta-quiet": L(*[f"ms mq{i} 1 q O{i}\r\n{i % 10}" for i in range(24)], "mn",
                    *[f"mg mq{i} q k v O{i}\r\nmg mq{i}x q k v O{i}" for i in range(24)], "mn",
                    "ma mq1 q", "ma mq1 q v D5", "ma nope q", "md mq2 q", "md mq2 q",
                    "mg mq2 v", "mn", "ms mq3 1 q I\r\nz", "md mq4 q I T30", "mg mq4 v",
                    "mn"),
    "meta-errors": L("ms a", "ms a 2 " + " ".join(f"O{i}" for i in range(20)), "hi",
                     "ms a x", "ms a 2 F", "hi", "md", "ma a MX", "mg a O" + "1" * 40, "mn"),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    real = Memcached(tmp_path_factory.mktemp("reference"), FLAGS).start()
    yield real.host, real.port
    real.stop()


@pytest.mark.parametrize("name", list(CASES))
def test_replies_match_one_memcached(cluster: Cluster, reference: tuple[str, int],
                                     name: str) -> None:
    data = L("flush_all") + CASES[name]
    want, want_closed = converse(*reference, data)
    got, got_closed = converse("127.0.0.1", cluster.port, data)
    assert masked(got) == masked(want)
    assert got_closed == want_closed


# memcached drops the replies still queued on a connection when a get names a key over 250
# bytes (see tests/test_kvcache_differential.py); compared as the first command only.
@pytest.mark.parametrize("line", ["get " + K251, "get a " + K251 + " b", "gat 0 " + K251])
def test_long_key_in_a_get_first_on_connection(cluster: Cluster, reference: tuple[str, int],
                                               line: str) -> None:
    assert cluster.raw(L(line)) == request(*reference, L(line))


def test_http_request_closes_like_memcached(cluster: Cluster) -> None:
    out, closed = converse("127.0.0.1", cluster.port, L("GET / HTTP/1.1"), sentinel=False)
    assert closed and out == b""


def test_stats_show_each_backend(cluster: Cluster) -> None:
    cluster.client().get_many([f"st:{i}" for i in range(20)])
    stats = cluster.stats()
    for node in cluster.nodes:
        prefix = f"backend:{node.address}:"
        assert stats[prefix + "state"] == "up"
        assert int(stats[prefix + "requests"]) > 0
        assert int(stats[prefix + "errors"]) == 0
        assert int(stats[prefix + "latency_p99_us"]) >= int(stats[prefix + "latency_p50_us"]) > 0
    assert int(stats["cmd_get"]) >= 20 and int(stats["curr_connections"]) >= 1
    assert stats["backends_down"] == "0"
    assert cluster.stats("settings")["proxy_replicas"] == "1"


# -- faults -----------------------------------------------------------------------------------
def _keys_by_owner(cluster: Cluster, count: int = 90) -> tuple[list[str], dict[str, str]]:
    keys = [f"fault:{i}" for i in range(count)]
    client = cluster.client()
    for key in keys:
        assert client.set(key, key.encode(), noreply=False)
    return keys, {key: cluster.ring.get_server(key) for key in keys}


class Raw:
    """A line-level conversation with the proxy."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=HANG_S)
        self.file = self.sock.makefile("rb")

    def get(self, key: str) -> bytes:
        """`=value` for a hit, `MISS`, or the error line."""
        self.sock.sendall(b"get %s\r\n" % key.encode())
        line = self.file.readline().rstrip(b"\r\n")
        if line.startswith(b"VALUE "):
            value = self.file.readline().rstrip(b"\r\n")
            assert self.file.readline() == b"END\r\n"
            return b"=" + value
        return b"MISS" if line == b"END" else line


def test_sigkill_in_fail_mode(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster("--timeout", "0.5", "--retry-backoff", "0.1,0.5")
    keys, owner = _keys_by_owner(cluster)
    victim = cluster.nodes[1]
    victim.kill()
    raw = Raw(cluster.port)
    for _ in range(2):  # before and after it is marked down
        for key in keys:
            line = raw.get(key)
            if owner[key] == victim.address:
                assert line.startswith(b"SERVER_ERROR backend "), line
            else:
                assert line == b"=" + key.encode(), line  # never a wrong value
    lost = next(k for k in keys if owner[k] == victim.address)
    assert raw.get(lost) == b"SERVER_ERROR backend unavailable"
    stats = cluster.stats()
    assert stats[f"backend:{victim.address}:state"] == "down"
    assert int(stats[f"backend:{victim.address}:marked_down"]) == 1
    assert int(stats[f"backend:{victim.address}:errors"]) >= 3  # requests it failed
    assert int(stats[f"backend:{victim.address}:failures"]) >= 3  # consecutive
    for node in cluster.nodes:
        if node is not victim:
            assert stats[f"backend:{node.address}:state"] == "up"
            assert stats[f"backend:{node.address}:errors"] == "0"
    assert int(stats["proxy_errors"]) > 0
    victim.start()  # the same port, empty
    wait_until(lambda: cluster.state(victim.address) == "up", "the probe to see it back")
    client = cluster.client()
    assert client.get(lost) is None
    assert client.set(lost, b"again", noreply=False) and victim.client().get(lost) == b"again"


def test_sigkill_in_remap_mode_moves_keys_to_the_successor(
        make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster("--on-down", "remap", "--timeout", "0.5")
    keys, owner = _keys_by_owner(cluster)
    victim = cluster.nodes[0]
    victim.kill()
    client = cluster.client()
    raw = Raw(cluster.port)
    moved = [k for k in keys if owner[k] == victim.address]
    wait_until(lambda: raw.get(moved[0]) == b"MISS", "the victim to be ejected")
    rest = cluster.ring.without([victim.address])
    for key in moved:
        assert client.get(key) is None  # its copy died with the victim: a miss, never stale
        assert client.set(key, b"moved", noreply=False)
        assert cluster.node(rest.get_server(key)).client().get(key) == b"moved"
    for key in keys:
        if key not in moved:
            assert client.get(key) == key.encode()


def test_sigstop_times_out_then_marks_down_and_sigcont_comes_back(
        make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster("--timeout", "0.3", "--retry-backoff", "0.1,0.3")
    keys, owner = _keys_by_owner(cluster)
    victim = cluster.nodes[2]
    mine = [k for k in keys if owner[k] == victim.address]
    others = [k for k in keys if owner[k] != victim.address]
    victim.signal(signal.SIGSTOP)
    try:
        client = cluster.client()
        raw = Raw(cluster.port)
        seen = []
        for key in mine[:4]:
            seen.append(raw.get(key))
            assert raw.get(others[len(seen)]) == b"=" + others[len(seen)].encode()
        assert seen[0] == b"SERVER_ERROR backend timeout"
        assert seen[-1] == b"SERVER_ERROR backend unavailable"  # threshold 3 reached
        assert cluster.state(victim.address) == "down"
        assert client.get_many(others) == {k: k.encode() for k in others}
    finally:
        victim.signal(signal.SIGCONT)
    wait_until(lambda: cluster.state(victim.address) == "up", "the probe to see it back")
    assert cluster.client().get(mine[0]) == mine[0].encode()  # a hung node kept its data
    assert int(cluster.stats()[f"backend:{victim.address}:timeouts"]) >= 3


def test_replicas_keep_every_key_readable_after_a_sigkill(
        make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster("--replicas", "2", "--timeout", "0.5")
    keys, _ = _keys_by_owner(cluster, 120)
    for key in keys:  # each key is on its two ring successors, and only there
        holders = {n.address for n in cluster.nodes if n.client().get(key) == key.encode()}
        assert holders == set(cluster.ring.get_servers(key, 2)), key
    victim = cluster.nodes[1]
    victim.kill()
    client = cluster.client()
    assert client.get_many(keys) == {k: k.encode() for k in keys}
    for key in keys:
        assert client.get(key) == key.encode(), key
    value, token = client.gets(keys[0])
    assert client.cas(keys[0], b"swapped", token, noreply=False)
    assert client.set(keys[1], b"after", noreply=False) and client.get(keys[1]) == b"after"
    assert client.get(keys[0]) == b"swapped"


def test_replicated_cas_is_copied_to_the_other_replica(
        make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster("--replicas", "2")
    client = cluster.client()
    assert client.set("rc", b"one", noreply=False)
    _, token = client.gets("rc")
    assert client.cas("rc", b"two", token, noreply=False)
    first, second = cluster.ring.get_servers("rc", 2)
    assert cluster.node(first).client().get("rc") == b"two"
    assert wait_until(lambda: cluster.node(second).client().get("rc") == b"two", "the copy")
    token_line = cluster.raw(b"mg rc c\r\n")  # meta: ms with C runs on the first replica
    assert token_line.startswith(b"HD c")
    token = token_line.split(b" c")[1].strip()
    assert cluster.raw(b"ms rc 5 C%s\r\nthree\r\nms rc 4 C1\r\nfour\r\n" % token) == (
        b"HD\r\nEX\r\n")
    assert wait_until(lambda: cluster.node(second).client().get("rc") == b"three", "the copy")
    assert cluster.node(first).client().get("rc") == b"three"


@pytest.mark.skipif(shutil.which("memcached") is None, reason="memcached is not installed")
def test_refuses_bad_options(tmp_path: Path) -> None:
    for extra in (["--servers", "127.0.0.2:1", "--replicas", "2"],
                  ["--servers", "127.0.0.2:x"], ["--servers", ""]):
        proxy = Daemon([*PROXY_MODULE, "-p", str(find_free_port()), *extra], "127.0.0.1", 0,
                       tmp_path / "bad.log")
        assert proxy.run_to_exit() == 2, proxy.log()


def test_sigint_exits_cleanly(tmp_path: Path) -> None:
    port = find_free_port()
    proxy = Daemon([*PROXY_MODULE, "-p", str(port), "--servers", "127.0.0.2:1"], "127.0.0.1",
                   port, tmp_path / "sigint.log").start()
    proxy.signal(signal.SIGINT)
    assert proxy.proc is not None and proxy.proc.wait(timeout=HANG_S) == 0, proxy.log()


def test_quit_closes_after_the_replies_before_it(cluster: Cluster) -> None:
    with socket.create_connection(("127.0.0.1", cluster.port), timeout=HANG_S) as sock:
        sock.sendall(b"version\r\nquit\r\n")
        data = b""
        while chunk := sock.recv(1024):
            data += chunk
    assert data.startswith(b"VERSION ") and data.endswith(b"-proxy\r\n")
