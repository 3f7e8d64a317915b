"""The server's reply writes (kvcache/server.py `Connection._write`), through a real socket.

Replies queued while a read is parsed go out in one write: joined while they are small, as
pieces of one gathered write (Lane.send_parts) once they pass WRITE_JOIN_MAX, so a large
value is not copied into a joined buffer. Either way the client reads the replies in the
order of its requests, byte for byte, and `bytes_written` counts every byte.
"""

from __future__ import annotations

import asyncio

from core.clock import ManualClock
from kvcache.server import WRITE_JOIN_MAX, KvcacheServer
from kvcache.settings import Settings

BIG = bytes(range(256)) * (3 * WRITE_JOIN_MAX // 256)


def _value(key: bytes, data: bytes) -> bytes:
    return b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (key, len(data), data)


async def _stats(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> dict[str, str]:
    writer.write(b"stats\r\n")
    text = (await reader.readuntil(b"END\r\n")).decode()
    return {w[1]: w[2] for w in (line.split() for line in text.splitlines()) if len(w) == 3}


def test_pipelined_small_and_large_replies_keep_their_order_and_bytes() -> None:
    async def main() -> None:
        server = KvcacheServer(Settings(), ManualClock())
        await server.start(["127.0.0.1"], 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"set big 0 0 %d\r\n%s\r\nset small 0 0 2\r\nhi\r\n" % (len(BIG), BIG))
        assert await reader.readexactly(16) == b"STORED\r\nSTORED\r\n"
        before = int((await _stats(reader, writer))["bytes_written"])
        pipeline = [b"get small\r\n", b"get big\r\n", b"incr nothing 1\r\n", b"get big\r\n",
                    b"get small\r\n"]
        expected = [_value(b"small", b"hi"), _value(b"big", BIG), b"NOT_FOUND\r\n",
                    _value(b"big", BIG), _value(b"small", b"hi")]
        assert sum(map(len, expected)) > WRITE_JOIN_MAX  # the gathered write's case
        writer.write(b"".join(pipeline))
        assert await reader.readexactly(sum(map(len, expected))) == b"".join(expected)
        writer.write(b"get small\r\nget small\r\n")  # small: one joined write
        assert await reader.readexactly(2 * len(expected[0])) == expected[0] * 2
        after = int((await _stats(reader, writer))["bytes_written"])
        stats_reply = after - before - sum(map(len, expected)) - 2 * len(expected[0])
        assert 0 < stats_reply < 4096  # only the first `stats` reply besides the replies
        writer.close()
        await server.close()

    asyncio.run(main())
