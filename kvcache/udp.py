"""memcached's UDP transport (-U PORT): one datagram in, its requests run, framed replies out.

Strategy: every datagram is a whole conversation turn. It starts with memcached's 8-byte
frame header (request id, sequence number, datagram count, reserved; big-endian 16-bit
words). A datagram that is not longer than the header, or whose count is not 1 (a request
spanning several datagrams, which memcached does not support), is dropped without a reply,
as memcached drops it. The rest is fed to a fresh `RequestParser` and each complete request
runs through kvcache/commands.py, exactly as on TCP; a request left incomplete at the end of
the datagram is discarded (memcached replaces its read buffer with the next datagram too;
only a storage command's missing data block differs: memcached would read the next
datagram, header included, as that data).

Replies follow memcached's response objects: each request is one response, except a
retrieval (`get`, `gets`, `gat`, `gats`), which is one response per key (a miss is an empty
one) with `END` on the last. Every non-empty response is cut into datagrams of at most
DATAGRAM_BYTES, header included, numbered 0..n-1 with the count n and the client's request
id. An empty response first in a datagram's replies is sent as a bare header with count 0
(memcached's quirk for a leading miss, or `quit`); later empty ones and noreply silences
send nothing. `quit` and any request that would close a TCP connection end the datagram's
processing; the UDP socket stays open.
"""

from __future__ import annotations

import asyncio
import logging
import struct

from kvcache import commands
from kvcache.engine import Closing, Engine, Stream
from kvcache.protocol import RequestParser

log = logging.getLogger("kvcache")

HEADER = struct.Struct(">HHHH")  # request id, sequence number, datagram count, reserved
HEADER_BYTES = HEADER.size
DATAGRAM_BYTES = 1400  # memcached's UDP_MAX_PAYLOAD_SIZE: header plus reply bytes
PAYLOAD_BYTES = DATAGRAM_BYTES - HEADER_BYTES
RETRIEVALS = {b"get": 1, b"gets": 1, b"gat": 2, b"gats": 2}  # command -> first key token
SILENT: None = None  # a response that sends nothing (noreply, a quiet meta miss)

Response = bytes | None


def frames(request_id: int, responses: list[Response]) -> list[bytes]:
    """The datagrams carrying `responses` for `request_id` (see the module docstring)."""
    out: list[bytes] = []
    for index, response in enumerate(responses):
        if response is None:
            continue
        if not response:
            if index == 0:
                out.append(HEADER.pack(request_id, 0, 0, 0))
            continue
        count = -(-len(response) // PAYLOAD_BYTES)
        for seq in range(count):
            piece = response[seq * PAYLOAD_BYTES:(seq + 1) * PAYLOAD_BYTES]
            out.append(HEADER.pack(request_id, seq, count, 0) + piece)
    return out


def split_retrieval(keys: list[bytes], reply: bytes) -> list[bytes]:
    """One response per key of a `get`-family reply: the key's VALUE block or b"" for a
    miss, whatever follows the last block (END, an error) joined to the last response.
    A reply that does not parse as VALUE blocks stays one response."""
    units: list[bytes] = []
    pos = 0
    for key in keys:
        prefix = b"VALUE " + key + b" "
        if not reply.startswith(prefix, pos):
            units.append(b"")
            continue
        eol = reply.find(b"\r\n", pos)
        words = reply[pos:eol].split()
        if eol < 0 or len(words) < 4 or not words[3].isdigit():
            return [reply]
        end = eol + 2 + int(words[3]) + 2
        units.append(reply[pos:end])
        pos = end
    if not units:
        return [reply]
    units[-1] += reply[pos:]
    return units


def responses_of(request: object, reply: bytes) -> list[Response]:
    """The response objects memcached would build for `request`, whose reply is `reply`."""
    if type(request) is list and request and request[0] in RETRIEVALS:
        keys = request[RETRIEVALS[request[0]]:]
        if keys and reply:
            return list(split_retrieval(keys, reply))
    return [reply if reply else SILENT]


def run_datagram(engine: Engine, item_size_max: int, payload: bytes) -> list[Response]:
    """Run every complete request in `payload`; their responses in order."""
    parser = RequestParser(item_size_max, use_cas=engine.settings.use_cas)
    parser.feed(payload)
    engine.pinned = set()  # items a reply holds stay valid until it is sent (Engine.pinned)
    out: list[Response] = []
    while (request := parser.next_request()) is not None:
        reply = commands.execute(engine, request)
        if type(reply) is Stream:
            reply = b"".join(reply.chunks)  # type: ignore[union-attr]
        if isinstance(reply, Closing):
            out.append(b"")
            break
        out.extend(responses_of(request, reply))  # type: ignore[arg-type]
    return out


class UdpEndpoint(asyncio.DatagramProtocol):
    """The -U listener: every datagram answered as the module docstring says."""

    def __init__(self, engine: Engine, item_size_max: int) -> None:
        self.engine = engine
        self.item_size_max = item_size_max
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) <= HEADER_BYTES or self.transport is None:
            return
        request_id, _seq, count, _reserved = HEADER.unpack_from(data)
        stats = self.engine.stats
        stats.bytes_read += len(data)
        if count != 1:
            return
        try:
            responses = run_datagram(self.engine, self.item_size_max, data[HEADER_BYTES:])
        except Exception:
            log.exception("UDP datagram from %s failed", addr)
            return
        for datagram in frames(request_id, responses):
            stats.bytes_written += len(datagram)
            self.transport.sendto(datagram, addr)


async def listen(engine: Engine, item_size_max: int, hosts: list[str],
                 port: int) -> list[asyncio.DatagramTransport]:
    """One UDP endpoint per host on `port`; the transports (close them to stop)."""
    loop = asyncio.get_running_loop()
    out = []
    for host in hosts:
        transport, _ = await loop.create_datagram_endpoint(
            lambda: UdpEndpoint(engine, item_size_max), local_addr=(host, port))
        out.append(transport)
    return out
