"""The proxy's hot path under pipelining, with real processes: two kvcache backends on
127.0.0.2-3 and a proxy with one connection per backend (`--pool-size 1`), so every client
shares it and each backend reply is delivered straight into its request's slot
(kvcache/proxy_exec.py `Answer`). Checked byte for byte: each client gets exactly its own
replies, in its order, whichever backend answered and in whatever order the backends did.
Faults are real (SIGSTOP, SIGKILL); nothing is timed, waits poll a condition.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kvcache.proxy_exec import Answer, Slot
from kvcache.proxy_server import ClientConnection, ProxyConfig, ProxyServer
from kvcache.ring import Ring
from tests import hang
from tests.conftest import find_free_port
from tests.procs import Daemon, kvcache_daemon

HOSTS = ("127.0.0.2", "127.0.0.3")
HANG_S = 20.0
CLIENTS = 12
ROUNDS = 150
CONNECTION_ERROR = b"SERVER_ERROR backend connection error\r\n"


class Pool:
    """Two kvcache backends and the proxy in front of them."""

    def __init__(self, tmp: Path) -> None:
        self.nodes = [kvcache_daemon(tmp, host=host, extra=["-m", "64"]).start()
                      for host in HOSTS]
        self.ring = Ring([(n.host, n.port, 1) for n in self.nodes])
        self.port = find_free_port()
        argv = ["kvcache", "proxy", "-l", "127.0.0.1", "-p", str(self.port),
                "--servers", ",".join(n.address for n in self.nodes),
                "--pool-size", "1", "--timeout", str(HANG_S)]
        self.proxy = Daemon(argv, "127.0.0.1", self.port, tmp / "proxy.log").start()

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=HANG_S)

    def ask(self, data: bytes, end: bytes) -> bytes:
        """Replies to `data` on a fresh connection, read until they end with `end`."""
        with self.connect() as sock:
            sock.sendall(data)
            return read_until(sock, lambda got: got.endswith(end))

    def stats(self, arg: str = "") -> dict[str, str]:
        reply = self.ask(f"stats {arg}".strip().encode() + b"\r\n", b"END\r\n")
        return {line.split(" ")[1]: line.split(" ", 2)[2]
                for line in reply.decode().split("\r\n") if line.startswith("STAT ")}

    def keys_on(self, node: Daemon, count: int, prefix: str) -> list[bytes]:
        keys = (f"{prefix}:{i}" for i in range(10_000))
        return [k.encode() for k in keys if self.ring.get_server(k) == node.address][:count]

    def close(self) -> None:
        assert self.proxy.stop() == 0, self.proxy.log()
        for node in self.nodes:
            node.stop()


def read_until(sock: socket.socket, complete: Callable[[bytes], bool]) -> bytes:
    got = b""
    while not complete(got):
        chunk = sock.recv(1 << 16)
        assert chunk, f"connection closed after {got[-200:]!r}"
        got += chunk
    return got


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[Pool]:
    pool = Pool(tmp_path)
    try:
        yield pool
    finally:
        pool.close()


def _value(key: bytes, value: bytes) -> bytes:
    return b"VALUE %s 0 %d\r\n%s\r\n" % (key, len(value), value)


def _deleted(i: int) -> bool:
    return i % 7 == 3


def _conversation(client: int) -> tuple[bytes, bytes]:
    """A pipeline of sets, gets, multi-gets over both backends, noreply and misses; the
    exact replies one memcached would give."""
    sent, expected = [], []
    for i in range(ROUNDS):
        key, value = b"c%d:k%d" % (client, i), b"v%d-%d" % (client, i) * (1 + i % 3)
        sent.append(b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value))
        expected.append(b"STORED\r\n")
        sent.append(b"get %s\r\n" % key)
        expected.append(_value(key, value) + b"END\r\n")
        if i % 10 == 9:  # keys most likely on both backends, some deleted, one never set
            earlier = (i - 9, i - 4, i - 1)
            keys = [b"c%d:k%d" % (client, j) for j in earlier] + [b"c%d:none" % client]
            sent.append(b"get " + b" ".join(keys) + b"\r\n")
            blocks = [_value(k, b"v%d-%d" % (client, j) * (1 + j % 3))
                      for k, j in zip(keys, earlier, strict=False) if not _deleted(j)]
            expected.append(b"".join(blocks) + b"END\r\n")
        if _deleted(i):
            sent.append(b"set %s 0 0 1 noreply\r\nx\r\n" % key)  # says nothing
            sent.append(b"delete %s\r\n" % key)
            expected.append(b"DELETED\r\n")
    return b"".join(sent), b"".join(expected)


def test_many_clients_pipelining_over_shared_backend_connections(pool: Pool) -> None:
    socks = [pool.connect() for _ in range(CLIENTS)]
    talks = [_conversation(c) for c in range(CLIENTS)]
    chunk = 1500  # interleave the clients' bytes, cut anywhere
    longest = max(len(sent) for sent, _ in talks)
    for offset in range(0, longest, chunk):
        for sock, (sent, _) in zip(socks, talks, strict=True):
            sock.sendall(sent[offset:offset + chunk])
    for sock, (_, expected) in zip(socks, talks, strict=True):
        size = len(expected)
        got = read_until(sock, lambda got: len(got) >= size)  # noqa: B023 - used at once
        assert got == expected
        sock.close()
    stats = pool.stats()
    assert int(stats["proxy_cmd_get"]) == CLIENTS * (ROUNDS + ROUNDS // 10)
    assert int(stats["proxy_cmd_set"]) == CLIENTS * (ROUNDS + len(range(3, ROUNDS, 7)))
    assert int(stats["proxy_cmd_delete"]) == CLIENTS * len(range(3, ROUNDS, 7))
    assert stats["proxy_errors"] == "0"


def test_requests_waiting_on_a_killed_backend_fail_in_their_place(pool: Pool) -> None:
    dead, alive = pool.nodes
    lost, kept = pool.keys_on(dead, 2, "lost"), pool.keys_on(alive, 2, "kept")
    setup = b"".join(b"set %s 0 0 2\r\nok\r\n" % k for k in lost + kept)
    assert pool.ask(setup, b"STORED\r\n" * 4) == b"STORED\r\n" * 4  # both links are up
    assert dead.proc is not None
    hang.send(dead.proc, signal.SIGSTOP)
    with pool.connect() as sock:
        order = [lost[0], kept[0], lost[1], kept[1]]
        sock.sendall(b"".join(b"get %s\r\n" % k for k in order) + b"version\r\n")
        deadline = time.monotonic() + HANG_S  # a hang detector: both gets reach the backend
        while int(pool.stats("backends")[f"backend:{dead.address}:inflight"]) < 2:
            assert time.monotonic() < deadline, "the gets never reached the stopped backend"
            time.sleep(0.02)
        dead.kill()
        got = read_until(sock, lambda got: got.endswith(b"-proxy\r\n"))
    hit = {k: _value(k, b"ok") + b"END\r\n" for k in kept}
    assert got == (CONNECTION_ERROR + hit[kept[0]] + CONNECTION_ERROR + hit[kept[1]]
                   + b"VERSION 1.6.18-proxy\r\n")
    assert int(pool.stats()["proxy_errors"]) == 2


class _Transport:
    """What a client connection writes, kept (no socket)."""

    def __init__(self) -> None:
        self.written = b""

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 1) if name == "peername" else None

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def test_a_late_done_callback_never_takes_the_next_slot() -> None:
    """The hang of the reverted quick replies (3b62cae): a future's done callback runs a tick
    after the future completed; by then its slot was written and the next request's slot,
    still waiting, is the only one. The callback must leave that slot alone: both replies
    are written, in order."""

    async def scenario() -> bytes:
        proxy = ProxyServer(ProxyConfig(servers=[("127.0.0.1", 1, 1)]))
        conn = ClientConnection(proxy)
        transport = _Transport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        fut = asyncio.get_running_loop().create_future()
        conn.queue.append(Slot(fut=fut))
        fut.add_done_callback(conn._on_done)
        fut.set_result(b"FIRST\r\n")  # its callback is now scheduled, not run
        conn._flush()  # as the request loop does when the head is done
        waiting = Answer(False, 0)
        waiting.notify = conn._notify
        conn.queue.append(waiting)
        await asyncio.sleep(0)  # the late done callback runs
        waiting.set_result(b"SECOND\r\n")
        for _ in range(3):
            await asyncio.sleep(0)
        proxy.pool.close()
        return transport.written

    assert asyncio.run(asyncio.wait_for(scenario(), HANG_S)) == b"FIRST\r\nSECOND\r\n"
