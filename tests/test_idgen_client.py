"""Tests of idgen.client against real idgen server processes: ids, prefetch, failover, faults.

Servers are started with `python -m idgen serve` on free loopback ports, each with its own
worker id and data directory under tmp_path; faults are real signals (SIGKILL mid-use).
"""

from __future__ import annotations

import asyncio
import gc
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvloop

from core.resp_client import ReplyError, RespConnection
from idgen import layout
from idgen.client import (
    AsyncIdgenClient,
    IdgenClient,
    IdgenError,
    IdgenUnavailable,
    IdgenUsageError,
    parse,
    parse_servers,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"


@dataclass
class IdgenProcess:
    """One `idgen serve` process started by a test."""

    worker_id: int
    port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes]
    extra: tuple[str, ...] = field(default=())

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as in a crash."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        """SIGTERM and wait; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


Spawn = Callable[..., IdgenProcess]


@pytest.fixture
def spawn(
    tmp_path: Path, free_port: Callable[..., int], wait_for_port: Callable[..., None]
) -> Iterator[Spawn]:
    """`spawn(worker_id, port=None, data_dir=None, extra=(), wait=True)`: a running server.

    All are stopped (SIGTERM) at the end of the test.
    """
    started: list[IdgenProcess] = []

    def start(
        worker_id: int,
        *,
        port: int | None = None,
        data_dir: Path | None = None,
        extra: tuple[str, ...] = (),
        wait: bool = True,
    ) -> IdgenProcess:
        port = port or free_port()
        data_dir = data_dir or tmp_path / f"worker-{worker_id}"
        log_path = tmp_path / f"worker-{worker_id}-{len(started)}.log"
        command = [
            sys.executable, "-m", "idgen", "serve", "--listen", f"{HOST}:{port}",
            "--worker-id", str(worker_id), "--data-dir", str(data_dir), *extra,
        ]
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                command, cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT
            )
        server = IdgenProcess(worker_id, port, data_dir, log_path, proc, extra)
        started.append(server)
        if wait:
            await_listening(server)
        return server

    def await_listening(server: IdgenProcess) -> None:
        try:
            wait_for_port(HOST, server.port, timeout=30, proc=server.proc)
        except (RuntimeError, TimeoutError) as exc:
            raise AssertionError(f"{exc}\n{server.log_path.read_text()}") from None

    start.await_listening = await_listening  # type: ignore[attr-defined]
    yield start
    for server in started:
        server.stop()


def spawn_many(spawn: Spawn, worker_ids: list[int], **kwargs: object) -> list[IdgenProcess]:
    """Start several servers at once (they boot in parallel), then wait for each."""
    servers = [spawn(w, wait=False, **kwargs) for w in worker_ids]
    for server in servers:
        spawn.await_listening(server)  # type: ignore[attr-defined]
    return servers


def assert_increasing_per_worker(ids: list[int]) -> None:
    """Ids from each worker appear in strictly increasing order."""
    last: dict[int, int] = {}
    for id_ in ids:
        worker = parse(id_).worker
        assert id_ > last.get(worker, -1), f"worker {worker} went backwards at {id_}"
        last[worker] = id_


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


# -- plain use ---------------------------------------------------------------------------


def test_next_id_and_next_ids(spawn: Spawn) -> None:
    server = spawn(11)
    with IdgenClient(server.address) as client:
        singles = [client.next_id() for _ in range(500)]
        batch = client.next_ids(1000)
        big = client.next_ids(250_000)  # three requests: 100,000 + 100,000 + 50,000
        assert client.next_ids(0) == []
    assert len(batch) == 1000 and len(big) == 250_000
    ids = singles + batch + big
    assert all(a < b for a, b in zip(ids, ids[1:], strict=False))
    assert {parse(i).worker for i in ids} == {11}
    now_ms = time.time() * 1000
    assert abs(parse(ids[0]).time_ms - now_ms) < 60_000


def test_several_servers_unique_and_increasing_per_server(spawn: Spawn) -> None:
    servers = spawn_many(spawn, [1, 2, 3])
    addresses = [s.address for s in servers]
    ids: list[int] = []
    with IdgenClient(addresses) as one, IdgenClient(list(reversed(addresses))) as other:
        for _ in range(300):
            ids.append(one.next_id())
            ids.append(other.next_id())
        ids += one.next_ids(5000) + other.next_ids(5000)
    assert len(set(ids)) == len(ids)
    assert {parse(i).worker for i in ids} == {1, 3}  # each client stays on its first server
    assert_increasing_per_worker(ids)


def test_parse_offline_equals_server_parse(spawn: Spawn) -> None:
    server = spawn(42)
    assert IdgenClient.parse is layout.parse and parse is layout.parse
    with IdgenClient(server.address) as client:
        ids = client.next_ids(50) + [client.next_id()]
        for id_ in ids[::10]:
            assert client.server_parse(id_) == parse(id_)
        with pytest.raises(IdgenUsageError) as caught:
            client.server_parse(-1)
        assert isinstance(caught.value, ValueError) and isinstance(caught.value, IdgenError)
        assert client.next_id() > ids[-1]  # the usage error did not disturb the connection
    with RespConnection.connect(HOST, server.port, timeout=5) as resp2:
        for id_ in ids[::10]:
            p = parse(id_)
            assert resp2.call("PARSE", id_) == [
                b"id", p.id, b"time_ms", p.time_ms, b"time", p.time_iso.encode(),
                b"worker", 42, b"sequence", p.sequence,
            ]
    with RespConnection.connect(HOST, server.port, timeout=5, protocol=3) as resp3:
        p = parse(ids[0])
        assert resp3.call("PARSE", ids[0]) == {
            b"id": p.id, b"time_ms": p.time_ms, b"time": p.time_iso.encode(),
            b"worker": 42, b"sequence": p.sequence,
        }


def test_usage_errors_and_arguments(spawn: Spawn) -> None:
    server = spawn(12)
    with IdgenClient(server.address) as client:
        with pytest.raises(ValueError):
            client.next_ids(-1)
        first = client.next_id()
        with pytest.raises(IdgenUsageError):
            client._caller.call(lambda r: r, "NEXT", 0)  # -ERR count out of range
        assert client.next_id() > first
    for bad in ("", "localhost", "h:0", "h:70000", "h:x", ":80"):
        with pytest.raises(ValueError):
            IdgenClient(bad)
    assert parse_servers("a:1, [::1]:2") == [("a", 1), ("::1", 2)]
    with pytest.raises(ValueError):
        IdgenClient("h:1", prefetch=10, batch=100_001)
    with pytest.raises(ValueError):
        IdgenClient("h:1", prefetch=-1)
    with pytest.raises(ValueError):
        IdgenClient("h:1", timeout=0)
    client = IdgenClient(server.address)
    client.close()
    with pytest.raises(IdgenError):
        client.next_id()


# -- prefetch ----------------------------------------------------------------------------


def test_prefetch_unique_and_refills(spawn: Spawn) -> None:
    servers = spawn_many(spawn, [21, 22])
    with IdgenClient([s.address for s in servers], prefetch=1000) as client:
        assert client.batch == 500
        wait_until(lambda: client.buffered >= 500)  # filled in the background at start
        ids = [client.next_id() for _ in range(20_000)]
        assert len(set(ids)) == len(ids)
        assert_increasing_per_worker(ids)
        while client.buffered >= 500:  # below the low-water mark
            ids.append(client.next_id())
        wait_until(lambda: client.buffered >= 500)  # refilled without being asked for an id
        assert client.buffered < 1000
        # Several threads share one client; every id is handed out once.
        per_thread: list[list[int]] = [[] for _ in range(4)]

        def consume(out: list[int]) -> None:
            for _ in range(10_000):
                out.append(client.next_id())

        threads = [threading.Thread(target=consume, args=(out,)) for out in per_thread]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for out in per_thread:
            ids += out
        ids += client.next_ids(3000)
    assert client.buffered == 0  # close() drops the buffer
    assert len(set(ids)) == len(ids)


def test_prefetch_larger_batches(spawn: Spawn) -> None:
    server = spawn(23)
    with IdgenClient(server.address, prefetch=200_000, batch=100_000) as client:
        ids = [client.next_id() for _ in range(300_000)]
    assert all(a < b for a, b in zip(ids, ids[1:], strict=False))


# -- failover and faults -----------------------------------------------------------------


def _consume_while_killing(
    client: IdgenClient, servers: list[IdgenProcess], after: int
) -> list[int]:
    """Take ids in a thread; SIGKILL the server in use mid-way; `after` more ids, no error."""
    by_worker = {s.worker_id: s for s in servers}
    ids: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def run() -> None:
        try:
            while not stop.is_set():
                ids.append(client.next_id())
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        wait_until(lambda: len(ids) > 200 or bool(errors))
        victim = by_worker[parse(ids[-1]).worker]
        victim.kill()
        at_kill = len(ids)
        wait_until(lambda: len(ids) > at_kill + after or bool(errors), timeout=30)
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    assert len(set(ids)) == len(ids)
    assert_increasing_per_worker(ids)
    assert victim.worker_id not in {parse(i).worker for i in ids[-100:]}
    return ids


def test_failover_when_server_is_killed_mid_use(spawn: Spawn) -> None:
    servers = spawn_many(spawn, [31, 32, 33])
    with IdgenClient([s.address for s in servers], timeout=2.0) as client:
        ids = _consume_while_killing(client, servers, after=500)
    assert len({parse(i).worker for i in ids}) == 2


def test_failover_with_prefetch(spawn: Spawn) -> None:
    servers = spawn_many(spawn, [34, 35])
    with IdgenClient([s.address for s in servers], timeout=2.0, prefetch=2000) as client:
        ids = _consume_while_killing(client, servers, after=10_000)
    assert len({parse(i).worker for i in ids}) == 2


@pytest.mark.parametrize("prefetch", [0, 1000])
def test_failover_when_server_hangs(spawn: Spawn, prefetch: int) -> None:
    servers = spawn_many(spawn, [36, 37])
    with IdgenClient([s.address for s in servers], timeout=0.5, prefetch=prefetch) as client:
        first = client.next_id()
        hung = next(s for s in servers if s.worker_id == parse(first).worker)
        hung.proc.send_signal(signal.SIGSTOP)  # alive but silent, as behind a partition
        try:
            ids = [client.next_id() for _ in range(3000)]
        finally:
            hung.proc.send_signal(signal.SIGCONT)
    assert len(set(ids)) == len(ids) and first not in ids
    assert parse(ids[-1]).worker != hung.worker_id


def test_dropped_client_stops_its_prefetch_thread(spawn: Spawn) -> None:
    server = spawn(38)
    client = IdgenClient(server.address, prefetch=100)
    client.next_id()
    thread = client._refiller.thread  # type: ignore[union-attr]
    del client
    gc.collect()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_unavailable_when_all_are_down(spawn: Spawn, free_port: Callable[..., int]) -> None:
    servers = spawn_many(spawn, [41, 42])
    addresses = [s.address for s in servers]
    with IdgenClient(addresses) as client, IdgenClient(addresses, prefetch=100) as prefetching:
        client.next_id()
        wait_until(lambda: prefetching.buffered > 0)
        for server in servers:
            server.kill()
        with pytest.raises(IdgenUnavailable) as caught:
            client.next_id()
        assert set(caught.value.errors) == set(addresses)
        assert isinstance(caught.value, ConnectionError) and isinstance(caught.value, IdgenError)
        with pytest.raises(IdgenUnavailable):  # all marked down: one probe, still nothing
            client.next_ids(10)
        with pytest.raises(IdgenUnavailable):
            for _ in range(1000):  # the buffer runs dry, then the refill failure surfaces
                prefetching.next_id()
    with IdgenClient(f"{HOST}:{free_port()}", timeout=0.5) as nowhere:
        with pytest.raises(IdgenUnavailable):
            nowhere.next_id()


def test_server_back_after_restart_on_same_data_dir(spawn: Spawn) -> None:
    server = spawn(51)
    with IdgenClient(server.address) as client:
        before = client.next_ids(1000)
        server.kill()
        with pytest.raises(IdgenUnavailable):
            client.next_id()
        spawn(51, port=server.port, data_dir=server.data_dir)
        deadline = time.monotonic() + 15
        while True:  # usable again once its backoff (1 s, then 2 s) has passed
            try:
                after = client.next_id()
                break
            except IdgenUnavailable:
                assert time.monotonic() < deadline
                time.sleep(0.1)
    assert after > before[-1]  # the high-water mark survived SIGKILL: no id is reissued


def test_noauth_and_password(spawn: Spawn) -> None:
    locked = spawn(63, extra=("--requirepass", "pw"), wait=False)
    open_ = spawn(62)
    spawn.await_listening(locked)  # type: ignore[attr-defined]
    with IdgenClient(locked.address, password="pw") as client:
        assert parse(client.next_id()).worker == 63
    with IdgenClient(locked.address) as client:
        with pytest.raises(IdgenUnavailable) as caught:
            client.next_id()
        assert "NOAUTH" in str(caught.value)
    with IdgenClient(locked.address, password="wrong") as client:
        with pytest.raises(IdgenUnavailable):
            client.next_id()
    with IdgenClient([locked.address, open_.address]) as client:  # NOAUTH: fail over
        assert {parse(client.next_id()).worker for _ in range(20)} == {62}


def test_clock_refusal_fails_over(spawn: Spawn) -> None:
    server = spawn(71)
    with IdgenClient(server.address) as client:
        client.next_ids(10)
    assert server.stop() == 0
    behind = spawn(
        71, port=server.port, data_dir=server.data_dir, extra=("--clock-offset-ms", "-60000")
    )
    healthy = spawn(72)
    with RespConnection.connect(HOST, behind.port, timeout=5) as conn:
        with pytest.raises(ReplyError) as caught:
            conn.call("NEXT")
        assert caught.value.code == "CLOCK"
    with IdgenClient([behind.address, healthy.address]) as client:
        ids = [client.next_id() for _ in range(50)] + client.next_ids(50)
    assert {parse(i).worker for i in ids} == {72}


# -- asyncio -----------------------------------------------------------------------------

LOOPS = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.mark.parametrize("loop", list(LOOPS))
def test_async_next_id_next_ids_and_parse(spawn: Spawn, loop: str) -> None:
    servers = spawn_many(spawn, [81, 82])

    async def main() -> list[int]:
        async with AsyncIdgenClient([s.address for s in servers]) as client:
            ids = [await client.next_id() for _ in range(300)]
            ids += await client.next_ids(150_000)
            assert await client.server_parse(ids[0]) == parse(ids[0])
            with pytest.raises(IdgenUsageError):
                await client.server_parse(2**63)
            with pytest.raises(ValueError):
                await client.next_ids(-2)
            # Concurrent tasks share the client.
            more = await asyncio.gather(*(client.next_id() for _ in range(200)))
            return ids + list(more)

    ids = LOOPS[loop](main())
    assert len(set(ids)) == len(ids) == 150_500
    assert {parse(i).worker for i in ids} == {81}
    assert_increasing_per_worker(ids[:150_300])


@pytest.mark.parametrize("loop", list(LOOPS))
def test_async_prefetch(spawn: Spawn, loop: str) -> None:
    server = spawn(83)

    async def main() -> list[int]:
        async with AsyncIdgenClient(server.address, prefetch=1000) as client:
            ids = [await client.next_id() for _ in range(30_000)]
            while client.buffered >= 500:  # below the low-water mark
                ids.append(await client.next_id())
            deadline = time.monotonic() + 15
            while client.buffered < 500:  # refilled in the background
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)

            async def worker() -> list[int]:
                return [await client.next_id() for _ in range(5000)]

            for chunk in await asyncio.gather(*(worker() for _ in range(4))):
                ids += chunk
        assert client.buffered == 0
        return ids

    ids = LOOPS[loop](main())
    assert len(set(ids)) == len(ids) >= 50_000  # the drain loop may take none: a refill ran


@pytest.mark.parametrize("prefetch", [0, 2000])
def test_async_failover_when_server_is_killed(spawn: Spawn, prefetch: int) -> None:
    servers = spawn_many(spawn, [84, 85, 86])
    by_worker = {s.worker_id: s for s in servers}

    async def main() -> tuple[list[int], int]:
        ids: list[int] = []
        async with AsyncIdgenClient(
            [s.address for s in servers], timeout=2.0, prefetch=prefetch
        ) as client:
            for _ in range(300):
                ids.append(await client.next_id())
            victim = by_worker[parse(ids[-1]).worker]
            victim.proc.send_signal(signal.SIGKILL)
            await asyncio.sleep(0.05)
            for _ in range(prefetch * 2 + 500):
                ids.append(await client.next_id())
        return ids, victim.worker_id

    ids, victim = asyncio.run(main())
    assert len(set(ids)) == len(ids)
    assert_increasing_per_worker(ids)
    assert victim not in {parse(i).worker for i in ids[-100:]}


def test_async_unavailable_when_all_are_down(spawn: Spawn) -> None:
    servers = spawn_many(spawn, [87, 88])
    addresses = [s.address for s in servers]

    async def main() -> None:
        async with AsyncIdgenClient(addresses) as client, AsyncIdgenClient(
            addresses, prefetch=100
        ) as prefetching:
            await client.next_id()
            await prefetching.next_id()
            for server in servers:
                server.kill()
            with pytest.raises(IdgenUnavailable) as caught:
                await client.next_id()
            assert set(caught.value.errors) == set(addresses)
            with pytest.raises(IdgenUnavailable):
                for _ in range(1000):
                    await prefetching.next_id()
        with pytest.raises(IdgenError):
            await client.next_id()  # closed

    asyncio.run(main())
