"""kvcache.client pools: growing a pool, and health (what a down server is sent, and when).

Growing: a fourth real server joins a pool of three; about a quarter of the keys now belong
to it (they miss until written again) and every other key still hits where it was.

The probe drills use a recording server: a real listening socket in a thread that logs every
line each connection sends and either hangs up on it ("dead") or answers it like memcached
("alive"). With the client's injected clock they show, without timing anything, that a down
server gets no I/O at all until its backoff ends, then exactly one probe, `version` (and
`flush_all` under on_down="remap"), on a fresh connection, the delay doubling to its cap.
Held lines (answered only when the test says) show that a late reply to a call sent before
the mark-down leaves the server down for its probe, and that a probe outlasting the cap is
not joined by a second one.
The last drill is real: a SIGSTOPped server under a remapping blocking client, written
meanwhile on its successor, must never read its older copy once it is back.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvcache.client import AsyncClient, Client, Item, NetworkError, ServerDown
from kvcache.ring import Ring
from tests.test_kvcache_client import (
    HANG_S,
    KINDS,
    CacheProcess,
    split,
    start_three,
    wait_until,
)

ANSWERS = {b"version": b"VERSION 1.6.18-stub\r\n", b"flush_all 0": b"OK\r\n"}
HELD = b"get late"  # a request the recorder answers only when told to


class Recorder:
    """A memcached stand-in on 127.0.0.6 that logs each connection's lines."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.6", 0))
        self.address = f"127.0.0.6:{self.listener.getsockname()[1]}"
        self.alive = False
        self.held = {HELD}  # lines answered only once `release` is set
        self.release = threading.Event()
        self.connections: list[list[bytes]] = []  # the lines of each connection, in order
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        lines: list[bytes] = []
        self.connections.append(lines)
        with conn, conn.makefile("rb") as stream:
            for raw in stream:
                line = raw.rstrip(b"\r\n")
                lines.append(line)  # logged before any answer or hang-up the client waits on
                if not self.alive:
                    return
                if line in self.held:
                    self.release.wait()
                reply = b"END\r\n" if line.startswith(b"get ") else ANSWERS.get(line)
                conn.sendall(reply or b"ERROR\r\n")

    def close(self) -> None:
        self.listener.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    yield server
    server.close()


def trip(client: Client, recorder: Recorder) -> None:
    """Three real failures (connected, hung up on): the server is marked down."""
    for _ in range(3):
        with pytest.raises(NetworkError) as info:
            client.get("k")
        assert not isinstance(info.value, ServerDown)
    assert client.down_servers == {recorder.address}
    assert [lines[-1] for lines in recorder.connections] == [b"get k"] * 3


@pytest.mark.parametrize(("on_down", "probe"), [
    ("fail", [b"version"]),
    ("remap", [b"version", b"flush_all 0"]),
])  # fmt: skip
def test_blocking_probe_is_version_on_backoff(
    recorder: Recorder, on_down: str, probe: list[bytes]
) -> None:
    clock = Clock()
    client = Client([recorder.address], timeout=5, retry_backoff=(1.0, 4.0),
                    on_down=on_down, clock=clock)  # type: ignore[arg-type]  # fmt: skip
    trip(client, recorder)
    seen = len(recorder.connections)
    for delay in (1.0, 2.0, 4.0, 4.0):  # the backoff doubles up to its cap
        clock.now += delay - 0.01
        with pytest.raises(ServerDown):
            client.get("k")  # fails fast: no connection at all before the probe is due
        assert len(recorder.connections) == seen
        clock.now += 0.01
        with pytest.raises(ServerDown):
            client.get("k")  # the due probe ran first (and failed: the server hung up)
        assert recorder.connections[seen:] == [[b"version"]]
        seen += 1
    recorder.alive = True
    clock.now += 4.0
    assert client.get("k") is None  # probe answered, server up, the call went to it
    assert recorder.connections[seen:] == [probe, [b"get k"]]
    assert not client.down_servers


def test_async_probe_is_version_and_flush_in_remap_mode(recorder: Recorder) -> None:
    clock = Clock()

    async def drill() -> None:
        client = AsyncClient([recorder.address], timeout=5, retry_backoff=(1.0, 4.0),
                             on_down="remap", clock=clock)  # fmt: skip
        for _ in range(3):
            with pytest.raises(NetworkError):
                await client.get("k")
        assert client.down_servers == {recorder.address}
        with pytest.raises(ServerDown):  # every server down: nowhere to remap to
            await client.get("k")
        assert len(recorder.connections) == 3 and not client._probes
        recorder.alive = True
        clock.now += 1.0
        with pytest.raises(ServerDown):
            await client.get("k")  # starts the probe as a task; this call does not wait
        await asyncio.gather(*client._probes.values())
        assert recorder.connections[3:] == [[b"version", b"flush_all 0"]]
        assert not client.down_servers and await client.get("k") is None
        await client.close()

    asyncio.run(drill())


def test_a_late_reply_leaves_a_down_server_to_its_probe(recorder: Recorder) -> None:
    """A reply to a call sent before the server was marked down does not bring it back:
    only the probe does (under remap it flushes the server first), as mcrouter's TKO."""
    clock = Clock()

    async def drill() -> None:
        client = AsyncClient([recorder.address], timeout=HANG_S, retry_backoff=(1.0, 4.0),
                             on_down="remap", clock=clock)  # fmt: skip
        recorder.alive = True
        late = asyncio.ensure_future(client.get("late"))
        while not any(HELD in lines for lines in recorder.connections):
            assert not late.done()
            await asyncio.sleep(0.01)  # a condition polled: the request reached the server
        recorder.alive = False
        for _ in range(3):
            with pytest.raises(NetworkError):
                await client.get("k")
        assert client.down_servers == {recorder.address}
        recorder.release.set()
        assert await late is None  # its END came back ...
        assert client.down_servers == {recorder.address}  # ... and the server stays down
        recorder.alive = True
        clock.now += 1.0
        with pytest.raises(ServerDown):
            await client.get("k")  # starts the due probe
        await asyncio.gather(*client._probes.values())
        assert recorder.connections[-1] == [b"version", b"flush_all 0"]
        assert not client.down_servers
        await client.close()

    asyncio.run(drill())


def test_one_probe_at_a_time_even_past_the_backoff_cap(recorder: Recorder) -> None:
    """A probe that outlasts the backoff cap is not joined by a second one, whose outcome
    would land after the first's (a stale failure, or a flush of a server back in use)."""
    clock = Clock()

    async def drill() -> None:
        client = AsyncClient([recorder.address], timeout=HANG_S, retry_backoff=(1.0, 4.0),
                             on_down="remap", clock=clock)  # fmt: skip
        for _ in range(3):
            with pytest.raises(NetworkError):
                await client.get("k")
        recorder.alive, recorder.held = True, {b"version"}
        clock.now += 1.0
        with pytest.raises(ServerDown):
            await client.get("k")  # starts the probe; its version waits for `release`
        first = client._probes[recorder.address]
        while [b"version"] not in recorder.connections:
            await asyncio.sleep(0.01)  # a condition polled: the probe reached the server
        clock.now += 10.0  # past the cap: the claim on the probe has run out
        with pytest.raises(ServerDown):
            await client.get("k")
        assert list(client._probes.values()) == [first]  # no second probe
        recorder.release.set()
        await first
        assert not client.down_servers
        assert recorder.connections[3:] == [[b"version", b"flush_all 0"]]
        await client.close()

    asyncio.run(drill())


@pytest.mark.parametrize("kind", KINDS)
def test_stopped_server_under_remap_never_reads_an_older_value(
    kind: str, tmp_path: Path
) -> None:
    servers = start_three(kind, tmp_path)
    try:
        addresses = [p.address for p in servers]
        by_address = {p.address: p for p in servers}
        ring, victim = Ring(addresses), servers[1]
        theirs, others = split(ring, victim.address)
        fast = {"timeout": 1.0, "failure_threshold": 3, "retry_backoff": (0.05, 0.4)}
        with Client(addresses, on_down="remap", **fast) as c:  # type: ignore[arg-type]
            for key in theirs + others:
                assert c.set(key, b"old")
            victim.signal(signal.SIGSTOP)
            try:
                for key in theirs[:3]:
                    with pytest.raises(NetworkError, match="timed out"):
                        c.get(key)
                assert c.down_servers == {victim.address}
                for key in theirs:  # rewritten (or deleted) while their home hangs
                    if key == theirs[0]:
                        assert c.delete(key) is False  # nothing on the successor yet
                    else:
                        assert c.set(key, b"new")
                        successor = ring.get_servers(key, 2)[1]
                        assert by_address[successor].holds(key) == b"new"
            finally:
                victim.signal(signal.SIGCONT)

            def back() -> bool:
                c.get(others[0])  # runs the due probe
                return not c.down_servers

            wait_until(back, "the resumed server is probed")
            for key in theirs:  # home again: a miss (flushed by the probe), never b"old"
                assert c.get(key) is None
            assert c.get_many(theirs) == {}
            assert c.get_many(others) == {k: Item(b"old", 0, None) for k in others}
            assert c.set(theirs[1], b"home") and victim.holds(theirs[1]) == b"home"
    finally:
        for proc in servers:
            proc.stop()



@pytest.mark.parametrize("kind", KINDS)
def test_adding_a_server_moves_about_a_quarter_of_the_keys_to_it(
    kind: str, tmp_path: Path
) -> None:
    servers = start_three(kind, tmp_path)
    try:
        servers.append(CacheProcess(kind, "127.0.0.5", tmp_path).start())
        old, new = [p.address for p in servers[:3]], servers[3]
        keys = [f"grow:{i}" for i in range(1200)]
        with Client(old) as three:
            for key in keys:
                assert three.set(key, key.encode())
        ring = Ring([*old, new.address])
        with Client([*old, new.address]) as four:
            got = four.get_many(keys)
        moved = [k for k in keys if k not in got]
        assert all(ring.get_server(k) == new.address for k in moved)  # only to the new one
        assert len(moved) == sum(ring.get_server(k) == new.address for k in keys)
        assert got == {k: Item(k.encode(), 0, None) for k in keys if k not in moved}
        assert 0.6 / 4 < len(moved) / len(keys) < 1.4 / 4, len(moved)  # about 1/(N+1)
    finally:
        for proc in servers:
            proc.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_copies_written_in_a_servers_place_are_deleted_when_it_returns(
    kind: str, tmp_path: Path
) -> None:
    """Two outages of one server under a remapping client: what was written on its successor
    during the first must not be read during the second."""
    servers = start_three(kind, tmp_path)
    try:
        addresses = [p.address for p in servers]
        by_address = {p.address: p for p in servers}
        ring, victim = Ring(addresses), servers[0]
        theirs, others = split(ring, victim.address)
        successor = {k: by_address[ring.get_servers(k, 2)[1]] for k in theirs}
        fast = {"timeout": 1.0, "failure_threshold": 3, "retry_backoff": (0.05, 0.4)}
        with Client(addresses, on_down="remap", **fast) as c:  # type: ignore[arg-type]

            def outage(write: bytes | None) -> None:
                victim.signal(signal.SIGSTOP)
                try:
                    for key in theirs[:3]:
                        with pytest.raises(NetworkError, match="timed out"):
                            c.get(key)
                    for key in theirs:  # remapped: nothing there, in both outages
                        assert c.get(key) is None
                        if write is not None:
                            assert c.set(key, write)
                finally:
                    victim.signal(signal.SIGCONT)
                wait_until(lambda: c.get(others[0]) is None and not c.down_servers,
                           "the resumed server is probed")  # the get runs the due probe

            outage(b"first outage")  # written on the successors
            assert all(successor[k].holds(k) is None for k in theirs)  # deleted on return
            for key in theirs:
                assert c.set(key, b"home again")
            outage(None)  # the successors' copies are gone: misses, not "first outage"
            assert all(c.get(k) is None for k in theirs)  # home was flushed on return
    finally:
        for proc in servers:
            proc.stop()
