"""The load client of bench.kvcache_workloads: raw memcached text-protocol sockets, pipelined,
that verify every reply they read.

Strategy: a round runs in `procs` forked worker processes, each an asyncio loop (uvloop when
installed) driving its share of the connections. A worker connects all its connections,
says READY, waits for GO, runs its workload until its deadline, and sends back counts,
the first errors and its own CPU seconds over the window. The parent meters the servers
around GO..results (bench.common.CpuMeter) and adds the workers' CPU as the client's.

Every value the client writes carries its integrity check: 8 hex digits of the CRC-32 of
the rest, which starts with the key (`make_value`); every value read back is checked
(`check_value`), so a value damaged or swapped between keys is an error of the round, as are
a miss where none can happen, a reply of the wrong shape, and an incr/decr result other than
the one the connection's own counter must have.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import socket
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import uvloop

CHECK_DIGITS = 8
MIN_VALUE_BYTES = 48  # room for the check, the key and the version
MAX_ERRORS_KEPT = 5
READY = "ready"
GO = "go"
SYNC = b"mn\r\n"  # meta no-op: its MN answers after every request before it
REPLY_MN = b"MN\r\n"
REPLY_END = b"END\r\n"
REPLY_STORED = b"STORED\r\n"
REPLY_HD = b"HD\r\n"
FILL_BATCH = 500
CONNECT_TIMEOUT_S = 30.0
ERR_BAD_VALUE = "value of {!r} fails its checksum"
ERR_MISS = "{!r} missed (nothing can have evicted it)"
ERR_REPLY = "{} answered {!r}"
ERR_COUNTER = "{} {!r}: expected {}, got {!r}"
ERR_READBACK = "{!r} read back {!r}, expected its last noreply set"
ERR_WORKER = "worker {} ended without a result: {}"


def make_value(key: bytes, size: int, version: int = 0) -> bytes:
    """A `size`-byte value for `key`: CRC-32 of the rest (8 hex digits), then key, version
    and filler. ValueError when `size` is under MIN_VALUE_BYTES."""
    if size < MIN_VALUE_BYTES:
        raise ValueError(f"values are at least {MIN_VALUE_BYTES} bytes, not {size}")
    head = key + b"|%d|" % version
    if len(head) > size - CHECK_DIGITS:
        raise ValueError(f"a {size}-byte value has no room for key {key[:40]!r}")
    body = head + b"x" * (size - CHECK_DIGITS - len(head))
    return b"%08x" % zlib.crc32(body) + body


def check_value(key: bytes, value: bytes) -> bool:
    """True when `value` is intact and was made for `key` (by make_value)."""
    body = value[CHECK_DIGITS:]
    return value[:CHECK_DIGITS] == b"%08x" % zlib.crc32(body) and body.startswith(key + b"|")


@dataclass(frozen=True)
class Spec:
    """One workload as the client runs it. `keys` is the shared keyspace; `prefix` names
    its keys (prefix + index); `depth` requests in flight per connection."""

    kind: str
    prefix: bytes
    keys: int
    value_size: int
    depth: int
    conns: int
    get_share: float = 0.9
    multiget: int = 100
    skew: bool = False


@dataclass
class Tally:
    """What one worker did in its window."""

    ops: int = 0
    gets: int = 0
    hits: int = 0
    misses: int = 0
    sets: int = 0
    errors: int = 0
    first_errors: list[str] = field(default_factory=list)
    cpu_s: float = 0.0
    wall_s: float = 0.0

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.first_errors) < MAX_ERRORS_KEPT:
            self.first_errors.append(text)


def key_of(spec: Spec, index: int) -> bytes:
    return spec.prefix + b"%08d" % index


# -- replies -----------------------------------------------------------------------------


async def read_values(reader: asyncio.StreamReader, tally: Tally) -> dict[bytes, bytes]:
    """The items of one `get` reply, up to END. ConnectionError for a line that is neither
    `VALUE key flags bytes` nor END; IncompleteReadError when the stream ends first."""
    items: dict[bytes, bytes] = {}
    while True:
        line = await reader.readline()
        if line == REPLY_END:
            return items
        parts = line.split()
        if len(parts) != 4 or parts[0] != b"VALUE" or not parts[3].isdigit():
            raise ConnectionError(ERR_REPLY.format("get", line[:80]))
        block = await reader.readexactly(int(parts[3]) + 2)
        if not block.endswith(b"\r\n"):
            raise ConnectionError(ERR_REPLY.format("get", block[-80:]))
        items[parts[1]] = block[:-2]


def _check_item(key: bytes, value: bytes | None, tally: Tally, may_miss: bool) -> None:
    tally.gets += 1
    if value is None:
        tally.misses += 1
        if not may_miss:
            tally.error(ERR_MISS.format(key))
    elif check_value(key, value):
        tally.hits += 1
    else:
        tally.error(ERR_BAD_VALUE.format(key))


async def _expect(reader: asyncio.StreamReader, reply: bytes, what: str, tally: Tally) -> None:
    line = await reader.readline()
    if line != reply:
        tally.error(ERR_REPLY.format(what, line[:80]))


def _set_line(key: bytes, value: bytes, flags: int = 0, noreply: bool = False) -> bytes:
    tail = b" noreply" if noreply else b""
    return b"set %s %d 0 %d%s\r\n%s\r\n" % (key, flags, len(value), tail, value)


# -- the workloads: one coroutine per connection ------------------------------------------


Loop = Callable[[Spec, int, asyncio.StreamReader, asyncio.StreamWriter, float, Tally,
                 random.Random], Awaitable[None]]


async def loop_getset(spec: Spec, conn: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter, deadline: float, tally: Tally,
                      rng: random.Random) -> None:
    """get/set at `get_share`, `depth` pipelined; with `skew`, misses are allowed and each
    is followed by a set of the key (cache-aside), else every get must hit."""
    version = conn << 32
    refill: list[bytes] = []
    while time.monotonic() < deadline:
        plan: list[tuple[bytes, bytes]] = [(b"s", k) for k in refill]
        refill = []
        while len(plan) < spec.depth:
            r = rng.random()
            index = int(spec.keys * r * r) if spec.skew else int(spec.keys * r)
            plan.append((b"g" if rng.random() < spec.get_share else b"s",
                         key_of(spec, min(index, spec.keys - 1))))
        out = []
        for op, key in plan:
            if op == b"g":
                out.append(b"get " + key + b"\r\n")
            else:
                version += 1
                out.append(_set_line(key, make_value(key, spec.value_size, version)))
        writer.write(b"".join(out))
        for op, key in plan:
            if op == b"g":
                item = (await read_values(reader, tally)).get(key)
                _check_item(key, item, tally, spec.skew)
                if item is None and spec.skew:
                    refill.append(key)
            else:
                tally.sets += 1
                await _expect(reader, REPLY_STORED, "set", tally)
        tally.ops += len(plan)


async def loop_multiget(spec: Spec, conn: int, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter, deadline: float, tally: Tally,
                        rng: random.Random) -> None:
    """`get` of `multiget` random keys, `depth` pipelined; every key must hit. ops = keys."""
    while time.monotonic() < deadline:
        batches = [[key_of(spec, rng.randrange(spec.keys)) for _ in range(spec.multiget)]
                   for _ in range(spec.depth)]
        writer.write(b"".join(b"get " + b" ".join(keys) + b"\r\n" for keys in batches))
        for keys in batches:
            items = await read_values(reader, tally)
            for key in keys:
                _check_item(key, items.get(key), tally, False)
            tally.ops += len(keys)


async def loop_noreply(spec: Spec, conn: int, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter, deadline: float, tally: Tally,
                       rng: random.Random) -> None:
    """`set ... noreply` in batches of `depth` on the connection's own keys, each batch
    followed by `mn` (nothing but MN may come back); at the end, the last value of some of
    its keys read back exactly."""
    own = [key_of(spec, conn * spec.keys + i) for i in range(spec.keys)]
    last: dict[bytes, bytes] = {}
    version = 0
    while time.monotonic() < deadline:
        out = []
        for _ in range(spec.depth):
            version += 1
            key = own[version % len(own)]
            last[key] = make_value(key, spec.value_size, version)
            out.append(_set_line(key, last[key], noreply=True))
        writer.write(b"".join(out) + SYNC)
        await _expect(reader, REPLY_MN, "noreply sets then mn", tally)
        tally.ops += spec.depth
        tally.sets += spec.depth
    sample = list(last)[:spec.multiget]
    writer.write(b"get " + b" ".join(sample) + b"\r\n")
    items = await read_values(reader, tally)
    for key in sample:
        if items.get(key) != last[key]:
            tally.error(ERR_READBACK.format(key, (items.get(key) or b"")[:40]))


async def loop_meta(spec: Spec, conn: int, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter, deadline: float, tally: Tally,
                    rng: random.Random) -> None:
    """`mg KEY v f t c` / `ms KEY S T0 F<flags>` at `get_share`, `depth` pipelined; each
    key's client flags are its index (mod 2^16), checked on every hit, as `t-1` and `c`."""
    version = conn << 32
    while time.monotonic() < deadline:
        plan = [(rng.random() < spec.get_share, rng.randrange(spec.keys))
                for _ in range(spec.depth)]
        out = []
        for is_get, index in plan:
            key = key_of(spec, index)
            if is_get:
                out.append(b"mg " + key + b" v f t c\r\n")
            else:
                version += 1
                value = make_value(key, spec.value_size, version)
                out.append(b"ms %s %d T0 F%d\r\n%s\r\n" % (key, len(value), index & 0xFFFF,
                                                        value))
        writer.write(b"".join(out))
        for is_get, index in plan:
            if is_get:
                await _read_meta_get(reader, key_of(spec, index), index & 0xFFFF, tally)
            else:
                tally.sets += 1
                await _expect(reader, REPLY_HD, "ms", tally)
        tally.ops += len(plan)


async def _read_meta_get(reader: asyncio.StreamReader, key: bytes, flags: int,
                         tally: Tally) -> None:
    line = await reader.readline()
    parts = line.split()
    if len(parts) != 5 or parts[0] != b"VA" or not parts[4][1:].isdigit():
        tally.error(ERR_REPLY.format("mg", line[:80]))
        _check_item(key, None, tally, False)
        if parts[:1] == [b"VA"] and parts[1:2] and parts[1].isdigit():
            await reader.readexactly(int(parts[1]) + 2)
        return
    block = await reader.readexactly(int(parts[1]) + 2)
    if parts[2] != b"f%d" % flags or parts[3] != b"t-1":
        tally.error(ERR_REPLY.format("mg", line[:80]))
    _check_item(key, block[:-2], tally, False)


async def loop_counters(spec: Spec, conn: int, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter, deadline: float, tally: Tally,
                        rng: random.Random) -> None:
    """incr/decr (half each, deltas 1..9) of the connection's own `keys` counters, `depth`
    pipelined; each answer must be the value the connection's own arithmetic expects."""
    start = 1 << 40
    own = [b"%sc%d:%d" % (spec.prefix, conn, i) for i in range(spec.keys)]
    writer.write(b"".join(_set_line(k, b"%d" % start) for k in own))
    for _ in own:
        await _expect(reader, REPLY_STORED, "set of a counter", tally)
    expected = dict.fromkeys(own, start)
    while time.monotonic() < deadline:
        plan = [(own[rng.randrange(len(own))], rng.random() < 0.5, rng.randrange(1, 10))
                for _ in range(spec.depth)]
        writer.write(b"".join(b"%s %s %d\r\n" % (b"incr" if up else b"decr", k, d)
                              for k, up, d in plan))
        for key, up, delta in plan:
            expected[key] += delta if up else -delta
            line = await reader.readline()
            if line != b"%d\r\n" % expected[key]:
                tally.error(ERR_COUNTER.format("incr" if up else "decr", key, expected[key],
                                               line[:40]))
        tally.ops += len(plan)


LOOPS: dict[str, Loop] = {
    "getset": loop_getset, "multiget": loop_multiget, "noreply": loop_noreply,
    "meta": loop_meta, "counters": loop_counters,
}


# -- workers -----------------------------------------------------------------------------


async def _worker_main(spec: Spec, host: str, port: int, conns: list[int], seconds: float,
                       seed: int, pipe: Any) -> Tally:
    tally = Tally()
    streams = [await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT_S)
               for _ in conns]
    pipe.send(READY)
    await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
    cpu0, wall0 = time.process_time(), time.monotonic()
    deadline = wall0 + seconds
    jobs = [LOOPS[spec.kind](spec, c, r, w, deadline, tally, random.Random(seed * 100_003 + c))
            for c, (r, w) in zip(conns, streams, strict=True)]
    outcomes = await asyncio.gather(*jobs, return_exceptions=True)
    tally.cpu_s, tally.wall_s = time.process_time() - cpu0, time.monotonic() - wall0
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            tally.error(f"connection failed: {outcome!r}")
    for _, writer in streams:
        writer.close()
    return tally


def _worker(spec: Spec, host: str, port: int, conns: list[int], seconds: float, seed: int,
            pipe: Any) -> None:
    uvloop.install()  # a project dependency: the client must not be the slower side
    try:
        tally = asyncio.run(_worker_main(spec, host, port, conns, seconds, seed, pipe))
        pipe.send(asdict(tally))
    except Exception as exc:  # the parent reports it as a failed round
        pipe.send({"crash": repr(exc)})


def run_workers(spec: Spec, host: str, port: int, seconds: float, procs: int, seed: int,
                on_go: Callable[[], None], on_done: Callable[[], None]) -> list[dict[str, Any]]:
    """Run `spec` with its connections spread over `procs` forked workers; `on_go` is called
    just before GO (the parent starts its meters), `on_done` when every worker has ended its
    window. Each worker's Tally as a dict; RuntimeError when a worker crashed."""
    ctx = multiprocessing.get_context("fork")
    procs = max(1, min(procs, spec.conns))
    shares = [list(range(spec.conns))[i::procs] for i in range(procs)]
    pipes, workers = [], []
    for share in shares:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(spec, host, port, share, seconds, seed, child))
        proc.start()
        pipes.append(parent)
        workers.append(proc)
    try:
        answers = [p.recv() for p in pipes]
        crashed = [a for a in answers if a != READY]
        if not crashed:
            on_go()
            for p in pipes:
                p.send(GO)
            answers = [p.recv() for p in pipes]
            on_done()
    finally:
        for proc in workers:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join()
    bad = [a for a in answers if not isinstance(a, dict) or "crash" in a]
    if bad:
        raise RuntimeError(ERR_WORKER.format(len(bad), bad[0]))
    return answers


# -- preloading --------------------------------------------------------------------------


def preload(host: str, port: int, spec: Spec, first: int = 0, count: int | None = None,
            flags_of_index: bool = False) -> int:
    """Store keys [first, first + count) of `spec` (all by default) with make_value values,
    pipelined noreply in batches of FILL_BATCH, then sync with `mn`. Returns the number
    stored; RuntimeError when the server wrote anything besides MN."""
    count = spec.keys - first if count is None else count
    with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S) as sock:
        for at in range(first, first + count, FILL_BATCH):
            batch = range(at, min(at + FILL_BATCH, first + count))
            sock.sendall(b"".join(
                _set_line(key_of(spec, i), make_value(key_of(spec, i), spec.value_size),
                          i & 0xFFFF if flags_of_index else 0, noreply=True) for i in batch)
                + SYNC)
            reply = sock.recv(64)
            while len(reply) < len(REPLY_MN) and reply:
                reply += sock.recv(64)
            if reply != REPLY_MN:
                raise RuntimeError(f"preload of {spec.prefix!r}: server answered {reply!r}")
    return count


def overwrite(host: str, port: int, key: bytes, value: bytes) -> None:
    """Store `value` under `key` as is (the test's way to damage a value between rounds)."""
    with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S) as sock:
        sock.sendall(_set_line(key, value))
        reply = sock.recv(64)
        if reply != REPLY_STORED:
            raise RuntimeError(f"set {key!r}: {reply!r}")
