"""core/connections.py with real sockets: admission, refusal, back-pressure and shutdown.

A tiny line-echo protocol stands on the layer the way the RESP and memcached servers do
(admit in connection_made, release in connection_lost); the clients are plain sockets.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from core.connections import Connections, Listeners

REFUSAL = b"FULL\r\n"
HIGH_WATER = 64 * 1024


class Echo(asyncio.Protocol):
    """Echoes what it reads; stops reading while its writes are paused."""

    def __init__(self, clients: Connections) -> None:
        self.clients = clients
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.clients.admit(self, "test")

    def connection_lost(self, exc: Exception | None) -> None:
        self.clients.release(self)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def pause_writing(self) -> None:
        self.paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        self.transport.resume_reading()


async def _serve(limit: int) -> tuple[Connections, Listeners, int]:
    clients = Connections("test", limit, REFUSAL, HIGH_WATER)
    listeners = Listeners()
    port = await listeners.tcp(lambda: Echo(clients), ["127.0.0.1"], 0)
    return clients, listeners, port


async def _until(condition: object, what: str) -> None:
    for _ in range(1000):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


def test_a_client_beyond_the_limit_is_refused_and_a_freed_slot_admits_again() -> None:
    async def main() -> None:
        clients, listeners, port = await _serve(limit=1)
        first = await _connect(port)
        first[1].write(b"hi\n")
        assert await first[0].readline() == b"hi\n"
        second = await _connect(port)
        assert await second[0].read() == REFUSAL  # then EOF: closed by the server
        assert (clients.total, clients.rejected, len(clients)) == (1, 1, 1)
        first[1].close()
        await _until(lambda: len(clients) == 0, "the first client to be released")
        third = await _connect(port)
        third[1].write(b"again\n")
        assert await third[0].readline() == b"again\n"
        assert clients.total == 2
        await listeners.shutdown(clients, grace=1.0)
        assert await third[0].read() == b""
        second[1].close()
        third[1].close()

    asyncio.run(main())


def test_a_client_that_stops_reading_is_paused_then_aborted_at_shutdown() -> None:
    async def main() -> None:
        clients, listeners, port = await _serve(limit=4)
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await _until(lambda: len(clients) == 1, "the client to be admitted")
        (server_side,) = clients.open
        chunk = b"x" * 65536
        loop = asyncio.get_running_loop()
        while not server_side.paused:  # the echo fills the socket the client never reads
            await loop.sock_sendall(sock, chunk)
            await asyncio.sleep(0)
        # Closing waits for the queued echo, which never drains: the grace period ends it.
        await listeners.shutdown(clients, grace=0.2)
        assert len(clients) == 0
        sock.close()

    asyncio.run(main())


def test_shutdown_waits_for_busy_requests_and_stops_accepting() -> None:
    async def main() -> None:
        clients, listeners, port = await _serve(limit=4)
        reader, writer = await _connect(port)
        await _until(lambda: len(clients) == 1, "the client to be admitted")
        finished: list[str] = []

        async def request() -> None:
            await asyncio.sleep(0.05)
            finished.append("request")

        busy = asyncio.get_running_loop().create_task(request())
        await listeners.shutdown(clients, grace=5.0, busy=[busy])
        assert finished == ["request"]
        assert await reader.read() == b""
        with pytest.raises(OSError):
            await _connect(port)
        writer.close()

    asyncio.run(main())
