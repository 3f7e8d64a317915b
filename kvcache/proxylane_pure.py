"""The proxy's fast lane, pure-Python reference: the twin of kvcache._proxylane
(kvcache/proxy_lane.py picks one; tests/test_kvcache_proxy_lane.py proves them equal and
proves both agree with the request parser and the reply framer). Sans-I/O: bytes in, where a
request or a reply lies out.

The proxy's hot path is a client read that is one plain `get <key>` or `set` and the
backend's reply to it. Three functions let that path skip the general machinery:
- `lane_request(data, value_max)`: the read is exactly one `get <key>\\r\\n`, or one `set
  <key> <flags> <exptime> <bytes>\\r\\n` with its whole block (1 to LANE_DIGITS plain digits
  per number, no noreply, at most `value_max` bytes of value, so surely storable): its key
  and whether it is the set. The bytes are then forwarded as they came: they are what the
  plan would send for that get, and an equivalent set line (the plan re-renders the
  numbers). Everything else returns None and goes through kvcache/protocol.py's parser.
- `may_hold_a_block(data, held_before)`: whether the parser, which holds no byte after
  being fed `data`, may still wait for a storage block (its header was the last line) or
  be in a line begun in an earlier read. Conservative: true when in doubt.
- `quick_take(data, pos, shape)`: the LINE or WHOLE_VALUES reply at `data[pos:]` when it is
  whole and of the plainest form (a success line; VALUE blocks then END); None leaves it to
  kvcache/proxy_wire.py's framer, which judges everything else (errors, cuts, bad bytes).
- `deliver(data, pending, future_type)`: `quick_take` for the requests waiting on a backend
  connection, oldest first, each reply handed to its waiter.
- `Answer`: the reply slot of a request one backend answers (kvcache/proxy_exec.py), which
  the backend connection completes directly: made, completed and read once per request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvcache.client_codec import MAX_VALUE_BYTES
from kvcache.mcproto_pure import CLASSIC_STORAGE, MAX_KEY_BYTES, tokenize
from kvcache.proxy_wire import LINE, WHOLE_VALUES, WholeValues

LANE_DIGITS = 9  # a lane set's numbers: 1 to 9 plain digits, inside every range check
CRLF = b"\r\n"
_GET = b"get "
_SET = b"set "
_END = b"END\r\n"
_VALUE = b"VALUE "
# The success lines a LINE reply may be (besides a number: incr/decr). Errors go to the
# framer, which knows them.
_LINE_OK = (b"STORED", b"NOT_STORED", b"EXISTS", b"NOT_FOUND", b"DELETED", b"TOUCHED",
            b"OK", b"VERSION ")

__all__ = ["LANE_DIGITS", "Answer", "deliver", "lane_request", "may_hold_a_block",
           "quick_take"]


def lane_request(data: bytes, value_max: int) -> tuple[bytes, bool] | None:
    """(key, is_set) if `data` is exactly one plain get or set (module docstring), else None."""
    if data.startswith(_GET):
        key = data[4:-2]
        if (not data.endswith(CRLF) or not 0 < len(key) <= MAX_KEY_BYTES or b" " in key
                or b"\n" in key or b"\0" in key):
            return None
        return key, False
    if not data.startswith(_SET):
        return None
    end = data.find(b"\n")
    if end < 5 or data[end - 1] != 0x0D or b"\0" in data[:end]:
        return None
    words = data[:end - 1].split(b" ")
    if len(words) != 5 or not 0 < len(words[1]) <= MAX_KEY_BYTES:
        return None
    for number in words[2:]:
        if not 0 < len(number) <= LANE_DIGITS or not number.isdigit():
            return None
    size = int(words[4])
    if size > value_max or len(data) != end + 1 + size + 2 or not data.endswith(CRLF):
        return None
    return words[1], True


def may_hold_a_block(data: bytes, held_before: bool) -> bool:
    """Whether a parser holding no byte after `data` may wait for a block (module
    docstring); `held_before`: it held bytes before `data` came."""
    start = data.rfind(b"\n", 0, len(data) - 1) + 1
    if start == 0 and held_before:  # the last line began in an earlier read
        return True
    line = data[start:]
    if b"\0" in line:
        return True
    tokens = tokenize(line.rstrip(b"\r\n"))
    return bool(tokens) and (tokens[0] in CLASSIC_STORAGE or tokens[0] == b"ms")


def quick_take(data: bytes, pos: int, shape: str) -> tuple[bytes | WholeValues, int] | None:
    """(the reply as the framer's `take(shape)` returns it, the position after it), or None
    (nothing consumed) for anything but a whole plain LINE or WHOLE_VALUES reply."""
    if shape == WHOLE_VALUES:
        return _whole_values(data, pos)
    if shape == LINE:
        eol = data.find(CRLF, pos)
        if eol < 0:
            return None
        line = data[pos:eol]
        if not (line.startswith(_LINE_OK) or line.isdigit()):
            return None
        return (data if pos == 0 and eol + 2 == len(data) else data[pos:eol + 2]), eol + 2
    return None


def deliver(data: bytes, pending: Any, future_type: type) -> tuple[int, int]:
    """Take the replies at the start of `data` that `quick_take` reads for the requests at
    the head of `pending` (a deque of (waiter, shape, ...) tuples, oldest first): each
    request taken off `pending`, its reply handed to its waiter (`set_result`; a waiter of
    `future_type` already done, cancelled, is skipped). (The position after the last reply
    taken, the number taken); the rest is the framer's."""
    pos = answered = 0
    while pending:
        waiter, shape = pending[0][:2]
        got = quick_take(data, pos, shape)
        if got is None:
            break
        reply, pos = got
        pending.popleft()
        answered += 1
        if type(waiter) is not future_type or not waiter.done():
            waiter.set_result(reply)
    return pos, answered


def _whole_values(data: bytes, pos: int) -> tuple[WholeValues, int] | None:
    start, hits = pos, 0
    while not data.startswith(_END, pos):
        if not data.startswith(_VALUE, pos):
            return None
        eol = data.find(CRLF, pos)
        if eol < 0:
            return None
        parts = data[pos:eol].split(b" ")
        if len(parts) not in (4, 5) or not parts[3].isdigit() or not all(parts[1:]):
            return None
        if len(parts) == 5 and not parts[4].isdigit():
            return None
        size = int(parts[3])
        if size > MAX_VALUE_BYTES or not parts[2].isdigit():
            return None
        pos = eol + 2 + size
        if data[pos:pos + 2] != CRLF:
            return None
        pos += 2
        hits += 1
    end = pos + len(_END)
    return (data if start == 0 and end == len(data) else data[start:end], hits), end


class Answer:
    """The slot of a request one backend answers (most requests): the backend connection
    delivers the reply straight into it, as the waiter of `BackendConn.send` (the interface
    of an asyncio.Future), so the hot path makes no future and schedules no callback per
    request. `notify(answer)` (set by the client connection while `waiting`) is called once
    the reply or failure is in. `keys`: a retrieval of that many keys, whose reply
    (WHOLE_VALUES: bytes and hits) is passed on byte for byte. `silent`: the client gets
    nothing (classic noreply). `fut` and `barrier` are a slot's (kvcache/proxy_exec.py
    `Slot`): never a future, never a barrier."""

    __slots__ = ("reply", "error", "silent", "keys", "waiting", "notify")
    fut = None
    barrier = False

    def __init__(self, silent: bool, keys: int) -> None:
        self.reply: Any = b""
        self.error: Any = None  # a BackendFailure: its `line` is what the client is told
        self.silent = silent
        self.keys = keys
        self.waiting = True
        self.notify: Callable[[Answer], None] | None = None

    def done(self) -> bool:
        return not self.waiting

    def set_result(self, reply: Any) -> None:
        self.reply = reply
        self.waiting = False
        if self.notify is not None:
            self.notify(self)

    def set_exception(self, exc: BaseException) -> None:
        self.error = exc
        self.waiting = False
        if self.notify is not None:
            self.notify(self)

    def result(self, counters: Any) -> bytes:
        """The client's reply; counts errors and the retrieval's hits and misses in
        `counters` (proxy_errors, get_hits, get_misses)."""
        if self.error is not None:
            counters.proxy_errors += 1
            return b"" if self.silent else self.error.line  # type: ignore[no-any-return]
        reply = self.reply
        if self.keys:
            reply, hits = reply
            counters.get_hits += hits
            counters.get_misses += self.keys - hits
        return b"" if self.silent else reply  # type: ignore[no-any-return]
