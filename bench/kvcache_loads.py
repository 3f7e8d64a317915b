"""Memcached text-protocol helpers of bench.kvcache_bench: readiness, `stats`, and the fast
fill client of the memory section.

The load of the throughput sections is `memcaslap` (libmemcached-tools), a C client; this
module only has what memcaslap does not do:
- `version` / `stats` on a fresh connection (readiness, counters before and after a run);
- `fill`: one raw socket pipelining `set KEY 0 0 SIZE noreply` lines in big batches (no
  replies to wait for), then one `version` round trip, so every set before it has been
  processed when it returns. Whatever the server writes back meanwhile (an error despite
  noreply) is drained after each batch, counted and kept (its start) for the report;
- `verify`: reads a sample of the filled keys back with multi-key gets (`parse_values`)
  and counts the ones missing or not what the fill stored.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable
from typing import Any

REPLY_TIMEOUT_S = 30.0  # a fill's sync waits for every queued set; generous
RECV_BYTES = 1 << 16
KEY_FORMAT = b"key:%010d"  # 14 bytes, the same for every fill
FILL_BYTE = b"v"  # every filled value is this byte repeated
VERIFY_KEYS_PER_GET = 100
VERIFY_SAMPLE = 2000  # keys read back after a fill
ERR_VALUE_LINE = "bad VALUE line {!r}"
ERR_VALUE_BLOCK = "VALUE block of {} bytes not followed by CRLF"
ERR_NO_END = "reply does not end with END"


def _read_until(sock: socket.socket, terminator: bytes, limit: int = 1 << 22) -> bytes:
    """Read until the reply ends with `terminator`."""
    data = bytearray()
    while not data.endswith(terminator):
        chunk = sock.recv(RECV_BYTES)
        if not chunk:
            raise ConnectionError(f"connection closed after {bytes(data[-200:])!r}")
        data += chunk
        if len(data) > limit:
            raise ValueError(f"reply longer than {limit} bytes")
    return bytes(data)


def request(host: str, port: int, line: bytes, terminator: bytes,
            timeout: float = 5.0) -> bytes:
    """One request on a fresh connection; the reply up to and including `terminator`."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(line)
        return _read_until(sock, terminator)


def version(host: str, port: int, timeout: float = 1.0) -> str:
    """The server's `version` answer ("VERSION x.y.z" without the CRLF)."""
    reply = request(host, port, b"version\r\n", b"\r\n", timeout)
    if not reply.startswith(b"VERSION "):
        raise ValueError(f"unexpected reply to version: {reply[:200]!r}")
    return reply.decode(errors="replace").strip()


def stats(host: str, port: int, group: str = "") -> dict[str, str]:
    """`stats [group]` as {name: value}."""
    line = f"stats {group}".strip().encode() + b"\r\n"
    reply = request(host, port, line, b"END\r\n")
    fields: dict[str, str] = {}
    for row in reply.decode(errors="replace").splitlines():
        parts = row.split(" ", 2)
        if len(parts) == 3 and parts[0] == "STAT":
            fields[parts[1]] = parts[2]
    return fields


def _drain(sock: socket.socket, kept: bytearray) -> int:
    """Bytes the server sent so far (without blocking); the first 400 are kept."""
    total = 0
    while select.select([sock], [], [], 0)[0]:
        chunk = sock.recv(RECV_BYTES)
        if not chunk:
            raise ConnectionError("server closed the connection during the fill")
        total += len(chunk)
        if len(kept) < 400:
            kept += chunk[: 400 - len(kept)]
    return total


def fill(host: str, port: int, count: int, value_size: int = 100, batch: int = 20_000,
         start: int = 0, on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Store `count` items KEY_FORMAT % i (i from `start`) with `value_size`-byte values,
    pipelined with noreply, `batch` sets per send; then sync with `version`.

    `on_batch(items_sent)` is called after every batch (the caller samples RSS there).
    Returns the counts, the wall time and what the server wrote back besides VERSION."""
    value = FILL_BYTE * value_size
    template = b"set " + KEY_FORMAT + b" 0 0 %d noreply\r\n%s\r\n"
    unexpected = bytearray()
    unexpected_bytes = 0
    began = time.perf_counter()
    with socket.create_connection((host, port), timeout=REPLY_TIMEOUT_S) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
        sent = 0
        while sent < count:
            n = min(batch, count - sent)
            first = start + sent
            payload = b"".join([template % (i, value_size, value)
                                for i in range(first, first + n)])
            sock.sendall(payload)
            sent += n
            unexpected_bytes += _drain(sock, unexpected)
            if on_batch is not None:
                on_batch(sent)
        sent_s = time.perf_counter() - began
        sock.sendall(b"version\r\n")
        reply = _read_until(sock, b"\r\n")
        while not reply.split(b"\r\n")[-2].startswith(b"VERSION "):
            reply += _read_until(sock, b"\r\n")
        tail = reply[: reply.rfind(b"VERSION ")]
        unexpected_bytes += len(tail)
        if len(unexpected) < 400:
            unexpected += tail[: 400 - len(unexpected)]
    seconds = time.perf_counter() - began
    return {
        "items": count, "value_size": value_size, "batch": batch, "first_key": start,
        "seconds": seconds, "send_seconds": sent_s, "sets_per_s": count / seconds,
        "unexpected_reply_bytes": unexpected_bytes,
        "unexpected_reply_start": bytes(unexpected).decode(errors="replace"),
    }


def parse_values(reply: bytes) -> dict[bytes, bytes]:
    """The items of a complete `get k1 k2 ...` reply (`VALUE key flags bytes` lines, each
    followed by its block, then `END`), as {key: value}. ValueError on anything else."""
    items: dict[bytes, bytes] = {}
    pos = 0
    while True:
        eol = reply.find(b"\r\n", pos)
        if eol < 0:
            raise ValueError(ERR_NO_END)
        line = reply[pos:eol]
        if line == b"END":
            if eol + 2 != len(reply):
                raise ValueError(ERR_NO_END)
            return items
        parts = line.split(b" ")
        if len(parts) != 4 or parts[0] != b"VALUE" or not parts[3].isdigit():
            raise ValueError(ERR_VALUE_LINE.format(line[:80]))
        size = int(parts[3])
        start = eol + 2
        if reply[start + size:start + size + 2] != b"\r\n":
            raise ValueError(ERR_VALUE_BLOCK.format(size))
        items[parts[1]] = reply[start:start + size]
        pos = start + size + 2


def verify(host: str, port: int, first: int, count: int, value_size: int,
           sample: int = VERIFY_SAMPLE) -> dict[str, int]:
    """Read `sample` keys spread over the fill [first, first + count) back; how many were
    missing and how many held another value than the fill's."""
    step = max(1, count // sample)
    keys = [KEY_FORMAT % i for i in range(first, first + count, step)][:sample]
    expected = FILL_BYTE * value_size
    missing = wrong = 0
    with socket.create_connection((host, port), timeout=REPLY_TIMEOUT_S) as sock:
        for at in range(0, len(keys), VERIFY_KEYS_PER_GET):
            chunk = keys[at:at + VERIFY_KEYS_PER_GET]
            sock.sendall(b"get " + b" ".join(chunk) + b"\r\n")
            items = parse_values(_read_until(sock, b"END\r\n"))
            missing += sum(1 for k in chunk if k not in items)
            wrong += sum(1 for k in chunk if k in items and items[k] != expected)
    return {"sampled": len(keys), "missing": missing, "wrong": wrong}
