"""The load generators of bench.idgen_bench, each run in a fresh child process.

`python -m bench.idgen_loads KIND JSON_ARGS` runs one load and prints one JSON line with its
raw numbers. A fresh process per run keeps runs independent: no heap left by the previous
one (a freed 60 MB list makes glibc copy instead of mremap the next growing list), no
imports or threads of other loads, and its CPU time is its own.

Loads:
- fill / next_one: one in-process `Sequencer` (compiled or pure twin) issuing ids as fast
  as it may, for about `seconds`. Timing starts at a millisecond boundary, so the first ms
  is whole and ids/s can be compared with 4096 ids per ms.
- batch: one raw socket pipelining `depth` `NEXT batch` requests; each reply is decoded to
  Python ints and checked (count, type of every element, increasing across replies).
- redispy: redis-py calling `NEXT batch` one request at a time.
- mixed: one raw socket pipelining distinct requests (`NEXT`, `NEXT n` of several counts,
  `PING`; to redis-server `INCR`/`INCRBY n`/`PING`), so no run of identical commands can be
  answered in one batch; every reply is parsed (core.resp_client.ReplyParser) and checked,
  and every id is checked unique across the whole run.
- prefetch: `idgen.client.IdgenClient(servers, prefetch=P).next_id()` in a loop.
"""

from __future__ import annotations

import importlib
import json
import operator
import socket
import sys
import time
from itertools import islice
from typing import Any

CEILING_IDS_PER_S = 4_096_000  # 4096 ids per ms for one worker
EPOCH_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z, idgen's default epoch
WORKER = 1
IMPLS = {"native": "native._snowflake", "pure": "native.snowflake_pure"}
SEQ_MASK = 4095
TIME_SHIFT = 22
RECV_BYTES = 1 << 20
LINE_MAX = 23  # b":" + 19 digits + b"\r\n" is 22; one spare
CRLF = b"\r\n"
REPLY_TIMEOUT_S = 10.0  # a server that stops answering fails the run instead of hanging it
MARK_BEGIN = "BEGIN"  # printed when the timed window opens and closes, so the parent can
MARK_END = "END"  # meter CPU over exactly that window
UNIQUE_SAMPLE = 200_000  # next_id() calls after the prefetch window, checked distinct


def _mark(tag: str) -> None:
    print(tag, flush=True)


def _wait_ms_boundary() -> None:
    """Spin until the wall clock's millisecond changes."""
    start = time.time_ns() // 1_000_000
    while time.time_ns() // 1_000_000 == start:
        pass


def _ms_stats(ids: list[int]) -> dict[str, int]:
    """How the ids spread over milliseconds: each ms's run starts at sequence 0, so the
    number of ms used is the number of ids with sequence 0."""
    first_ms = ids[0] >> TIME_SHIFT
    last_ms = ids[-1] >> TIME_SHIFT
    used = sum(1 for i in ids if not i & SEQ_MASK)
    span = last_ms - first_ms + 1
    return {"span_ms": span, "used_ms": used, "missing_ms": span - used}


def _increasing(ids: list[int]) -> bool:
    return all(map(operator.lt, ids, islice(ids, 1, None)))


# -- in-process generator ----------------------------------------------------------------


def load_fill(impl: str, seconds: float) -> dict[str, Any]:
    """`seq.fill(out, N - len(out), SystemClock(), huge_limit)` until N ids, N = the
    ceiling's ids in `seconds`; EXHAUSTED is answered by calling again."""
    from core.clock import SystemClock

    module = importlib.import_module(IMPLS[impl])
    seq = module.Sequencer(WORKER, EPOCH_MS)
    clock = SystemClock()
    limit = module.MAX_TIME
    ok, exhausted = module.OK, module.EXHAUSTED
    count = int(seconds * CEILING_IDS_PER_S)
    out: list[int] = []
    fill = seq.fill
    calls = 0
    _mark(MARK_BEGIN)
    _wait_ms_boundary()
    cpu0 = time.process_time()
    start = time.perf_counter()
    while len(out) < count:
        status = fill(out, count - len(out), clock, limit)
        calls += 1
        if status != ok and status != exhausted:
            raise RuntimeError(f"fill stopped with status {status}")
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    _mark(MARK_END)
    if not _increasing(out):
        raise RuntimeError("ids are not strictly increasing")
    return {
        "impl": impl, "ids": len(out), "seconds": elapsed, "cpu_seconds": cpu, "calls": calls,
        "ids_per_s": len(out) / elapsed, **_ms_stats(out),
    }


def load_next_one(impl: str, seconds: float) -> dict[str, Any]:
    """`seq.next_one(SystemClock(), huge_limit)` in a loop for about `seconds`; a negative
    answer (EXHAUSTED: the ms is used up) is a call that issued nothing."""
    from core.clock import SystemClock

    module = importlib.import_module(IMPLS[impl])
    seq = module.Sequencer(WORKER, EPOCH_MS)
    clock = SystemClock()
    limit = module.MAX_TIME
    next_one = seq.next_one
    issued = 0
    calls = 0
    last = -1
    _mark(MARK_BEGIN)
    _wait_ms_boundary()
    cpu0 = time.process_time()
    start = time.perf_counter()
    deadline = start + seconds
    now = start
    while now < deadline:
        for _ in range(1024):
            result = next_one(clock, limit)
            if result >= 0:
                issued += 1
                if result <= last:
                    raise RuntimeError("ids are not strictly increasing")
                last = result
        calls += 1024
        now = time.perf_counter()
    elapsed = now - start
    cpu = time.process_time() - cpu0
    _mark(MARK_END)
    return {
        "impl": impl, "ids": issued, "seconds": elapsed, "cpu_seconds": cpu,
        "calls": calls, "ids_per_s": issued / elapsed,
    }


# -- NEXT n over one socket --------------------------------------------------------------


class BatchDecoder:
    """Decodes `*n` arrays of integers (RESP2 NEXT n replies) from a byte stream.

    `decode(buf, pos)` -> (ids, new_pos), or None while the reply is incomplete. The fast
    path guesses the reply's end from its first line's length (ids of one batch usually
    have the same number of digits) and proves the guess: the segment ends with CRLF and
    holds exactly n CRLFs. Otherwise it finds the end with one bounded split. Either way
    the elements are split on CRLF ':' and converted by int(), so a non-integer element,
    a missing ':' or a wrong count raises ValueError.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.header = b"*%d\r\n" % count

    def decode(self, buf: bytes, pos: int) -> tuple[list[int], int] | None:
        n = self.count
        header = self.header
        size = len(buf)
        body = pos + len(header)
        if size < body:
            return None
        if buf[pos:body] != header:
            raise ValueError(f"unexpected reply {buf[pos:pos + 120]!r}")
        first_end = buf.find(CRLF, body, body + LINE_MAX + 1)
        if first_end < 0:
            if size - body > LINE_MAX:
                raise ValueError("element line too long")
            return None
        end = body + n * (first_end + 2 - body)
        if end <= size and buf[end - 2:end] == CRLF and buf.count(CRLF, body, end) == n:
            segment = buf[body + 1:end - 2]
        else:
            window = buf[body:body + n * LINE_MAX]
            parts = window.split(CRLF, n)
            if len(parts) <= n:
                if len(window) >= n * LINE_MAX:
                    raise ValueError("element line too long")
                return None
            end = body + len(window) - len(parts[-1])
            segment = buf[body + 1:end - 2]
        if buf[body] != 58:
            raise ValueError("array element is not an integer")
        pieces = segment.split(b"\r\n:")
        if len(pieces) != n:
            raise ValueError("array element is not an integer")
        return list(map(int, pieces)), end


def load_batch(host: str, port: int, batch: int, depth: int, seconds: float) -> dict[str, Any]:
    """Keep `depth` `NEXT batch` requests in flight on one connection for about `seconds`,
    then drain; ids/s over the whole time from the first send to the last reply."""
    request = b"*2\r\n$4\r\nNEXT\r\n$%d\r\n%d\r\n" % (len(str(batch)), batch)
    decoder = BatchDecoder(batch)
    decode = decoder.decode
    sock = socket.create_connection((host, port), timeout=REPLY_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    recv = sock.recv
    buf = b""
    pos = 0
    ids_total = 0
    replies = 0
    last_id = -1
    _mark(MARK_BEGIN)
    cpu0 = time.process_time()
    start = time.perf_counter()
    deadline = start + seconds
    sock.sendall(request * depth)
    in_flight = depth
    sending = True
    while in_flight:
        try:
            data = recv(RECV_BYTES)
        except TimeoutError:
            raise RuntimeError(
                f"no reply within {REPLY_TIMEOUT_S} s with {in_flight} NEXT {batch} in flight "
                f"after {replies} replies ({len(buf) - pos} bytes of a partial reply held)"
            ) from None
        if not data:
            raise ConnectionError("server closed the connection")
        buf = buf[pos:] + data if pos < len(buf) else data
        pos = 0
        done = 0
        while True:
            decoded = decode(buf, pos)
            if decoded is None:
                break
            ids, pos = decoded
            if ids[0] <= last_id:
                raise RuntimeError("ids are not increasing across replies")
            last_id = ids[-1]
            ids_total += len(ids)
            done += 1
        if done:
            in_flight -= done
            replies += done
            if sending:
                if time.perf_counter() < deadline:
                    sock.sendall(request * done)
                    in_flight += done
                else:
                    sending = False
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    _mark(MARK_END)
    sock.close()
    return {
        "batch": batch, "depth": depth, "replies": replies, "ids": ids_total,
        "seconds": elapsed, "cpu_seconds": cpu, "ids_per_s": ids_total / elapsed,
    }


def load_redispy(host: str, port: int, batch: int, seconds: float) -> dict[str, Any]:
    """redis-py's `execute_command("NEXT", batch)`, one request at a time."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # No retries: a request that times out fails the run once instead of being re-sent.
    client = redis.Redis(host=host, port=port, socket_timeout=REPLY_TIMEOUT_S,
                         retry=Retry(NoBackoff(), 0))
    client.execute_command("NEXT", batch)  # connect and handshake outside the timing
    execute = client.execute_command
    ids_total = 0
    calls = 0
    _mark(MARK_BEGIN)
    cpu0 = time.process_time()
    start = time.perf_counter()
    deadline = start + seconds
    now = start
    while now < deadline:
        ids = execute("NEXT", batch)
        if len(ids) != batch or type(ids[-1]) is not int:
            raise RuntimeError(f"NEXT {batch} answered {ids!r:.80}")
        ids_total += batch
        calls += 1
        now = time.perf_counter()
    elapsed = now - start
    cpu = time.process_time() - cpu0
    _mark(MARK_END)
    client.close()
    return {
        "batch": batch, "calls": calls, "ids": ids_total, "seconds": elapsed,
        "cpu_seconds": cpu, "ids_per_s": ids_total / elapsed,
        "redis_py": redis.__version__,
    }


# -- distinct pipelined requests --------------------------------------------------------

MIXED_KEY = "bench:mixed"
# One cycle of distinct requests and the ids each issues (NEXT n: n; INCRBY key n: n).
MIXED = {
    "idgen": [(("NEXT",), 1), (("NEXT", 2), 2), (("PING",), 0), (("NEXT", 1), 1),
              (("NEXT", 3), 3), (("NEXT", 7), 7)],
    "redis": [(("INCR", MIXED_KEY), 1), (("INCRBY", MIXED_KEY, 2), 2), (("PING",), 0),
              (("INCRBY", MIXED_KEY, 1), 1), (("INCRBY", MIXED_KEY, 3), 3),
              (("INCRBY", MIXED_KEY, 7), 7)],
}


class MixedChecker:
    """Checks each reply of a MIXED cycle against its request and gathers the ids: idgen's
    NEXT gives ids, NEXT n an array of n; redis's INCR/INCRBY n the counter's new value v,
    that is the ids v-n+1..v. ValueError for a wrong reply; `unique()` after the run."""

    def __init__(self, server: str) -> None:
        self.cycle = MIXED[server]
        self.server = server
        self.ids: list[int] = []
        self.last_counter = 0
        self.index = 0

    def check(self, reply: object) -> int:
        """The next reply in order; returns the ids it issued."""
        from core.resp_client import ReplyError

        request, count = self.cycle[self.index]
        self.index = (self.index + 1) % len(self.cycle)
        if isinstance(reply, ReplyError):
            raise ValueError(f"{request} answered an error: {reply}")
        if count == 0:
            if reply not in ("PONG", b"PONG"):
                raise ValueError(f"{request} answered {reply!r:.80}")
        elif self.server == "redis":
            self._counter(request, count, reply)
        elif len(request) == 1:
            if type(reply) is not int:
                raise ValueError(f"{request} answered {reply!r:.80}")
            self.ids.append(reply)
        elif not isinstance(reply, list) or len(reply) != count or \
                any(type(i) is not int for i in reply):
            raise ValueError(f"{request} answered {reply!r:.80}")
        else:
            self.ids.extend(reply)
        return count

    def _counter(self, request: tuple[object, ...], count: int, reply: object) -> None:
        if type(reply) is not int or reply - count < self.last_counter:
            raise ValueError(f"{request} answered {reply!r:.80} after {self.last_counter}")
        self.last_counter = reply
        self.ids.append(reply)

    def unique(self) -> bool:
        """Every id of the run distinct (redis: the counter ranges never overlapped, which
        `_counter` checked reply by reply)."""
        return len(set(self.ids)) == len(self.ids)


def load_mixed(host: str, port: int, server: str, depth: int, seconds: float
               ) -> dict[str, Any]:
    """Keep `depth` cycles of MIXED[server] requests in flight on one connection for about
    `seconds`, then drain; requests/s from the first send to the last reply."""
    from core.resp_client import NEED_DATA, ReplyParser, encode_command

    checker = MixedChecker(server)
    cycle = b"".join(encode_command(*request) for request, _ in checker.cycle)
    per_cycle = len(checker.cycle)
    parser = ReplyParser()
    sock = socket.create_connection((host, port), timeout=REPLY_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    requests = ids = 0
    _mark(MARK_BEGIN)
    cpu0 = time.process_time()
    start = time.perf_counter()
    deadline = start + seconds
    sock.sendall(cycle * depth)
    in_flight = depth * per_cycle
    sending = True
    while in_flight:
        try:
            data = sock.recv(RECV_BYTES)
        except TimeoutError:
            raise RuntimeError(f"no reply within {REPLY_TIMEOUT_S} s with {in_flight} "
                               f"requests in flight after {requests}") from None
        if not data:
            raise ConnectionError("server closed the connection")
        parser.feed(data)
        while (reply := parser.next_reply()) is not NEED_DATA:
            ids += checker.check(reply)
            requests += 1
            in_flight -= 1
            if sending and checker.index == 0:
                if time.perf_counter() < deadline:
                    sock.sendall(cycle)
                    in_flight += per_cycle
                else:
                    sending = False
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    _mark(MARK_END)
    sock.close()
    if not checker.unique():
        raise RuntimeError(f"{len(checker.ids) - len(set(checker.ids))} ids issued twice")
    return {
        "server": server, "depth_cycles": depth, "cycle": [list(r) for r, _ in checker.cycle],
        "requests": requests, "ids": ids, "seconds": elapsed, "cpu_seconds": cpu,
        "rps": requests / elapsed, "first_id": min(checker.ids), "last_id": max(checker.ids),
        "ids_unique": True,
    }


# -- the prefetching client --------------------------------------------------------------


def load_prefetch(servers: list[str], prefetch: int, seconds: float) -> dict[str, Any]:
    """`IdgenClient(servers, prefetch=P).next_id()` in a loop for about `seconds`."""
    from idgen.client import IdgenClient

    client = IdgenClient(servers, prefetch=prefetch)
    try:
        next_id = client.next_id
        warm = [next_id() for _ in range(1000)]  # connect and first refill outside timing
        last = warm[-1]
        calls = 0
        _mark(MARK_BEGIN)
        cpu0 = time.process_time()
        start = time.perf_counter()
        deadline = start + seconds
        now = start
        while now < deadline:
            for _ in range(4096):
                next_id()
            calls += 4096
            now = time.perf_counter()
        elapsed = now - start
        cpu = time.process_time() - cpu0
        _mark(MARK_END)
        final = next_id()
        if final <= last and len(servers) == 1:
            raise RuntimeError("ids from one server did not increase")
        sample = [next_id() for _ in range(UNIQUE_SAMPLE)]
        if len(set(sample)) != len(sample) or final in sample:
            raise RuntimeError(f"next_id() gave an id twice in {UNIQUE_SAMPLE} calls")
        batch = getattr(client, "batch", None)
    finally:
        client.close()
    return {
        "servers": servers, "prefetch": prefetch, "batch": batch, "calls": calls,
        "seconds": elapsed, "cpu_seconds": cpu, "calls_per_s": calls / elapsed,
    }


LOADS = {
    "fill": load_fill,
    "next_one": load_next_one,
    "batch": load_batch,
    "redispy": load_redispy,
    "mixed": load_mixed,
    "prefetch": load_prefetch,
}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in LOADS:
        print(f"usage: python -m bench.idgen_loads {{{','.join(LOADS)}}} JSON_KWARGS",
              file=sys.stderr)
        return 2
    result = LOADS[argv[0]](**json.loads(argv[1]))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
