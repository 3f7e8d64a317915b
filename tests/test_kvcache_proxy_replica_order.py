"""Pipeline order with `--replicas 2` (issue #14): a read that misses on a key's first copy
is asked of the second copy, and that second request must not overtake the client's later
requests for the key. A read never sees a write the same client sent after it.

Deterministic set-up, real processes: two kvcache backends and a proxy with `--replicas 2`;
the old value is written straight to the key's *second* copy only, so its first copy
misses and the proxy asks the second one. The whole pipeline goes in one send, so the later
write reaches both backends in the same tick as the first read (before the miss can come
back): without the ordering, the retry would find the new value.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kvcache.proxy_order import ReadFence
from kvcache.proxy_plan import Broadcast, Forward, Local, Retrieve
from kvcache.proxy_wire import LINE
from kvcache.ring import Ring
from tests.conftest import find_free_port
from tests.procs import Daemon, kvcache_daemon

HOSTS = ("127.0.0.2", "127.0.0.3")
TIMEOUT_S = 20.0
OLD, NEW = b"old", b"v2"


class Replicated:
    """Two kvcache backends and a proxy writing each key to both (`--replicas 2`)."""

    def __init__(self, tmp: Path) -> None:
        self.nodes = [kvcache_daemon(tmp, host=host, extra=["-m", "64"]).start()
                      for host in HOSTS]
        self.ring = Ring([(n.host, n.port, 1) for n in self.nodes])
        self.port = find_free_port()
        argv = ["kvcache", "proxy", "-l", "127.0.0.1", "-p", str(self.port),
                "--servers", ",".join(n.address for n in self.nodes), "--replicas", "2",
                "--pool-size", "1", "--timeout", str(TIMEOUT_S)]
        self.proxy = Daemon(argv, "127.0.0.1", self.port, tmp / "proxy.log").start()

    def second_copy_only(self, key: bytes, value: bytes) -> None:
        """`key` = `value` on the key's second copy, nothing on its first."""
        first, second = self.ring.get_servers(key, 2)
        for node in self.nodes:
            if node.address == first:
                _ask(node.host, node.port, b"delete %s\r\n" % key, _lines(1))
            elif node.address == second:
                _ask(node.host, node.port, _set(key, value), _lines(1))

    def ask(self, data: bytes, complete: Callable[[bytes], bool]) -> bytes:
        return _ask("127.0.0.1", self.port, data, complete)

    def close(self) -> None:
        assert self.proxy.stop() == 0, self.proxy.log()
        for node in self.nodes:
            node.stop()


def _ask(host: str, port: int, data: bytes, complete: Callable[[bytes], bool]) -> bytes:
    with socket.create_connection((host, port), timeout=TIMEOUT_S) as sock:
        sock.sendall(data)
        got = b""
        while not complete(got):
            chunk = sock.recv(1 << 16)
            assert chunk, f"connection closed after {got[-200:]!r}"
            got += chunk
        return got


def _lines(count: int) -> Callable[[bytes], bool]:
    return lambda got: got.count(b"\r\n") >= count


def _set(key: bytes, value: bytes) -> bytes:
    return b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value)


def _value(key: bytes, value: bytes) -> bytes:
    return b"VALUE %s 0 %d\r\n%s\r\n" % (key, len(value), value)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicated]:
    cluster = Replicated(tmp_path_factory.mktemp("replica_order"))
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.mark.parametrize("write, write_reply", [
    (_set(b"{k}", NEW), b"STORED\r\n"),
    (b"delete {k}\r\n", b"NOT_FOUND\r\n"),  # the first copy's answer: it has no copy
    (b"flush_all\r\n", b"OK\r\n"),
])
def test_a_get_retried_on_the_second_copy_answers_before_a_later_write(
        cluster: Replicated, write: bytes, write_reply: bytes) -> None:
    for round_ in range(5):  # a few keys: each their own ring placement
        key = b"order:%s:%d" % (write.split()[0], round_)
        cluster.second_copy_only(key, OLD)
        got = cluster.ask(b"get %s\r\n" % key + write.replace(b"{k}", key),
                          lambda got: got.endswith(write_reply))
        assert got == _value(key, OLD) + b"END\r\n" + write_reply


def test_a_multiget_retried_on_the_second_copy_answers_before_a_later_write(
        cluster: Replicated) -> None:
    key, other = b"order:multi", b"order:multi-other"
    cluster.ask(_set(other, b"o"), _lines(1))
    cluster.second_copy_only(key, OLD)
    got = cluster.ask(b"get %s %s\r\n" % (key, other) + _set(key, NEW) + b"get %s\r\n" % key,
                      lambda got: got.count(b"END\r\n") == 2)
    assert got == (_value(key, OLD) + _value(other, b"o") + b"END\r\n" + b"STORED\r\n"
                   + _value(key, NEW) + b"END\r\n")


def test_mg_retried_on_the_second_copy_answers_before_a_later_ms(cluster: Replicated) -> None:
    key = b"order:meta"
    cluster.second_copy_only(key, OLD)
    got = cluster.ask(b"mg %s v\r\nms %s 2\r\n%s\r\nmg %s v\r\n" % (key, key, NEW, key),
                      _lines(5))
    assert got == b"VA 3\r\nold\r\nHD\r\nVA 2\r\nv2\r\n"


def test_a_miss_on_both_copies_stays_a_miss_and_other_keys_keep_flowing(
        cluster: Replicated) -> None:
    key, other = b"order:nowhere", b"order:elsewhere"
    cluster.ask(b"delete %s\r\n" % key, _lines(1))
    pipeline = (b"get %s\r\n" % key + _set(other, b"x") + b"get %s\r\n" % other
                + _set(key, NEW) + b"get %s\r\n" % key)
    got = cluster.ask(pipeline, lambda got: got.count(b"END\r\n") == 3)
    assert got == (b"END\r\nSTORED\r\n" + _value(other, b"x") + b"END\r\nSTORED\r\n"
                   + _value(key, NEW) + b"END\r\n")


def test_a_held_write_still_runs_and_answers_after_the_client_half_closes(
        cluster: Replicated) -> None:
    key = b"order:halfclose"
    cluster.second_copy_only(key, OLD)
    with socket.create_connection(("127.0.0.1", cluster.port), timeout=TIMEOUT_S) as sock:
        sock.sendall(b"get %s\r\n" % key + _set(key, NEW) + b"get %s\r\n" % key)
        sock.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := sock.recv(1 << 16):
            got += chunk
    assert got == (_value(key, OLD) + b"END\r\n" + b"STORED\r\n" + _value(key, NEW)
                   + b"END\r\n")


def test_the_fence_holds_only_requests_that_could_change_a_pending_reads_key() -> None:
    loop = asyncio.new_event_loop()
    try:
        fence, fut = ReadFence(), loop.create_future()
        fence.add([b"k", b"k"], fut)
        assert fence.hold(Retrieve(b"get", None, [b"k"])) is None  # reads change nothing
        assert fence.hold(Retrieve(b"gat", b"10", [b"x", b"k"])) is fut
        assert fence.hold(Forward(b"set", b"k", b"", LINE, True)) is fut
        assert fence.hold(Forward(b"set", b"other", b"", LINE, True)) is None
        assert fence.hold(Local(b"", Forward(b"delete", b"k", b"", LINE, True))) is fut
        assert fence.hold(Broadcast(b"flush_all\r\n", LINE, False)) is fut
        fut.set_result(b"END\r\n")
        loop.run_until_complete(asyncio.sleep(0))  # the done callback drops the entry
        assert len(fence) == 0
        assert fence.hold(Broadcast(b"flush_all\r\n", LINE, False)) is None
    finally:
        loop.close()


def test_a_write_waits_for_every_pending_read_of_its_key(cluster: Replicated) -> None:
    key, other = b"order:many", b"order:many-other"
    cluster.ask(_set(other, b"o"), _lines(1))
    cluster.second_copy_only(key, OLD)
    reads = [b"get %s\r\n" % key, b"get %s %s\r\n" % (other, key), b"mg %s v\r\n" % key] * 10
    got = cluster.ask(b"".join(reads) + _set(key, NEW) + b"get %s\r\n" % key,
                      lambda got: got.endswith(b"STORED\r\n" + _value(key, NEW) + b"END\r\n"))
    old_block = _value(key, OLD)
    expected = [old_block + b"END\r\n", _value(other, b"o") + old_block + b"END\r\n",
                b"VA 3\r\nold\r\n"] * 10
    assert got == b"".join(expected) + b"STORED\r\n" + _value(key, NEW) + b"END\r\n"


def _random_pipeline(rng: random.Random, keys: list[bytes],
                     model: dict[bytes, bytes]) -> tuple[bytes, bytes]:
    """Forty requests over `keys` and the replies one memcached would give, in order."""
    sent, expected = [], []
    for _ in range(40):
        key, roll = rng.choice(keys), rng.random()
        if roll < 0.45:
            sent.append(b"get %s\r\n" % key)
            expected.append(_value(key, model[key]) if key in model else b"")
            expected.append(b"END\r\n")
        elif roll < 0.75:
            value = b"v%d" % rng.randrange(1000)
            sent.append(_set(key, value))
            expected.append(b"STORED\r\n")
            model[key] = value
        elif roll < 0.85:
            sent.append(b"delete %s noreply\r\n" % key)
            model.pop(key, None)
        else:
            sent.append(b"get " + b" ".join(keys) + b"\r\n")
            expected.extend(_value(k, model[k]) for k in keys if k in model)
            expected.append(b"END\r\n")
    return b"".join(sent), b"".join(expected)


def test_random_pipelines_answer_as_one_server_would(cluster: Replicated) -> None:
    rng = random.Random(14)
    for round_ in range(30):
        keys = [b"order:rand:%d:%d" % (round_, i) for i in range(4)]
        model: dict[bytes, bytes] = {}
        for key in keys:
            if rng.random() < 0.6:  # a miss on its first copy, a hit on its second
                cluster.second_copy_only(key, OLD)
                model[key] = OLD
        sent, expected = _random_pipeline(rng, keys, model)
        with socket.create_connection(("127.0.0.1", cluster.port), timeout=TIMEOUT_S) as sock:
            sock.sendall(sent)
            sock.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := sock.recv(1 << 16):
                got += chunk
        assert got == expected, f"round {round_}"
