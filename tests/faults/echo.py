"""A tiny echo node for harness tests: `python -m tests.faults.echo HOST PORT`.

TCP on HOST:PORT echoes every byte back. UDP on the same address echoes each datagram, except
the datagram TIME_QUERY, answered with the node's clocks as text: "<time.time()>
<time.monotonic()>" (so a test can read a node's wall clock, faked or not).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import cast

TIME_QUERY = b"TIME"
CHUNK_BYTES = 65536


async def _echo_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(CHUNK_BYTES):
            writer.write(chunk)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


class _EchoUdp(asyncio.DatagramProtocol):
    """Echo datagrams; answer TIME_QUERY with the clocks."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if data == TIME_QUERY:
            data = f"{time.time()!r} {time.monotonic()!r}".encode()
        self.transport.sendto(data, addr)


async def serve(host: str, port: int) -> None:
    """Serve TCP and UDP echo on host:port until killed."""
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(_EchoUdp, local_addr=(host, port))
    server = await asyncio.start_server(_echo_tcp, host, port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], int(sys.argv[2])))
