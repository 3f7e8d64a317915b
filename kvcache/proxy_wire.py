"""The proxy's view of backend replies, sans-I/O: bytes in, whole raw replies out.

The proxy passes replies through byte for byte, so unlike `kvcache.client.ReplyReader`
(which decodes values into Items and raises on error lines) this framer only finds where
each reply ends and hands back its raw bytes. A backend connection is a FIFO of requests;
the caller knows what each reply looks like and asks for that shape:

- LINE: one line (storage, delete, incr/decr, touch, flush_all, version).
- VALUES: `VALUE` blocks up to `END`, or an error line instead (get/gets/gat/gats). The
  blocks come back one per key so a multi-get can be merged with other backends' blocks.
- WHOLE_VALUES: the same reply when one backend answers the whole retrieval: it comes back
  as one piece of bytes, with its number of VALUE blocks (no copy per block, no join).
- META: one meta reply: a line, followed by a data block when it is `VA <size> ...`.
- FENCED: what a quiet command (meta `q`, classic `noreply`) sent before the `mn` the proxy
  appended to it: zero or more replies, then `MN`. The fence is what keeps a pipelined
  connection in step when the backend may or may not answer.

Any other byte sequence means the connection is out of step: `take` raises ValueError and
the caller drops the connection (a reply is never handed to the wrong request).
"""

from __future__ import annotations

from kvcache.client_codec import MAX_LINE_BYTES, MAX_VALUE_BYTES, ReplyBuffer

LINE, VALUES, WHOLE_VALUES, META, FENCED = "line", "values", "whole", "meta", "fenced"
FENCE = b"mn\r\n"

_ERRORS = (b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR")
# What a LINE reply may start with (besides a number: incr/decr).
_LINE_REPLIES = (b"STORED", b"NOT_STORED", b"EXISTS", b"NOT_FOUND", b"DELETED", b"TOUCHED",
                 b"OK", b"VERSION ", *_ERRORS)
_END = b"END\r\n"
_META_CODES = frozenset((b"HD", b"VA", b"EN", b"NF", b"NS", b"EX", b"ME"))

Values = tuple[list[tuple[bytes, bytes]], bytes]
"""A VALUES reply: [(key, raw VALUE block with its data and CRLF)], then the raw line that
ended it (`END\\r\\n`, or an error line)."""
WholeValues = tuple[bytes, int]
"""A WHOLE_VALUES reply: its raw bytes (VALUE blocks, then END or an error line) and the
number of VALUE blocks in it."""


def is_error(line: bytes) -> bool:
    """An error reply line (ERROR, CLIENT_ERROR ..., SERVER_ERROR ...)."""
    return line.startswith(_ERRORS)


class ReplyFramer(ReplyBuffer):
    """Raw replies of one backend connection: `feed(data)`, then `take(shape)` returns the
    next reply of that shape (bytes; `Values` for VALUES) or None until it is complete.

    Invariant: between two complete replies no state is kept but the unread bytes; a VALUES
    or FENCED reply in progress keeps the blocks already parsed so a large multi-get is
    scanned once, not once per arriving packet. A WHOLE_VALUES reply in progress stays in
    the buffer from `_whole_start` (feed keeps it) with `_whole_hits` blocks checked.
    """

    def __init__(self, max_line: int = MAX_LINE_BYTES, max_value: int = MAX_VALUE_BYTES):
        super().__init__(max_line, max_value)
        self._hits: list[tuple[bytes, bytes]] = []
        self._parts: list[bytes] = []
        self._whole_start = -1  # where the WHOLE_VALUES reply in progress starts, or -1
        self._whole_hits = 0

    def feed(self, data: bytes) -> None:
        start = self._whole_start
        if start < 0:
            super().feed(data)
            return
        if start:  # drop what came before the reply in progress, keep the reply
            del self._buf[:start]
            self._pos -= start
            self._whole_start = 0
        self._buf += data

    def idle(self) -> bool:
        """No byte unread and no reply in progress: the next read starts a reply."""
        return (self._pos == len(self._buf) and self._whole_start < 0 and not self._hits
                and not self._parts)

    def take(self, shape: str) -> bytes | Values | WholeValues | None:
        if shape == WHOLE_VALUES:
            return self._whole_values()
        if shape == VALUES:
            return self._values()
        if shape == LINE:
            return self._line_reply()
        if shape == META:
            return self._meta(fenced=False)
        return self._fenced()

    # -- pieces --------------------------------------------------------------------------
    def _line(self) -> bytes | None:
        return self._raw_line()

    def _block(self, start: int, size_token: bytes) -> bytes | None:
        """The data block after a header line read from `start`: the raw header and block,
        or None (position back at `start`) until the whole block arrived."""
        end = self._block_end(size_token)
        if end is None:
            self._pos = start
            return None
        self._pos = end + 2
        return bytes(self._buf[start:end + 2])

    def _line_reply(self) -> bytes | None:
        start = self._pos
        line = self._line()
        if line is None:
            return None
        if not (line.startswith(_LINE_REPLIES) or line.isdigit()):
            raise ValueError(f"unexpected reply {line[:80]!r}")
        return bytes(self._buf[start:self._pos])

    def _meta(self, fenced: bool) -> bytes | None:
        """One meta reply (or error line); under a fence `MN` itself comes back as b""."""
        start = self._pos
        line = self._line()
        if line is None:
            return None
        if line.startswith(b"VA "):
            parts = line.split(b" ", 2)
            return self._block(start, parts[1])
        if fenced:  # a quiet command may be answered by any line: pass it on
            return b"" if line == b"MN" else bytes(self._buf[start:self._pos])
        if (line[:2] not in _META_CODES or line[2:3] not in (b"", b" ")) and not is_error(line):
            raise ValueError(f"unexpected reply {line[:80]!r}")
        return bytes(self._buf[start:self._pos])

    def _value_piece(self) -> tuple[bool, bytes] | None:
        """The next piece of a retrieval reply, the position moved past it: (True, key) for a
        whole VALUE block (header, data, CRLF), (False, the raw line) for the line that ends
        the reply (END or an error line); None (position unchanged) until it arrived whole."""
        buf = self._buf
        start = self._pos
        # `END` is most replies' last line: matched in place, without copying it out
        if buf.startswith(_END, start):
            self._pos = start + len(_END)
            return False, _END
        line = self._raw_line()
        if line is None:
            return None
        if line.startswith(b"VALUE "):
            parts = line.split(b" ")
            if len(parts) not in (4, 5):
                raise ValueError(f"unexpected reply {line[:80]!r}")
            end = self._block_end(parts[3])
            if end is None:
                self._pos = start
                return None
            self._pos = end + 2
            return True, parts[1]
        if is_error(line):
            return False, bytes(buf[start:self._pos])
        raise ValueError(f"unexpected reply {line[:80]!r}")

    def _values(self) -> Values | None:
        while True:
            start = self._pos
            piece = self._value_piece()
            if piece is None:
                return None
            block, data = piece
            if not block:
                hits, self._hits = self._hits, []
                return hits, data
            self._hits.append((data, bytes(self._buf[start:self._pos])))

    def _whole_values(self) -> WholeValues | None:
        if self._whole_start < 0:
            self._whole_start = self._pos
        while True:
            piece = self._value_piece()
            if piece is None:
                return None
            if not piece[0]:
                break
            self._whole_hits += 1
        reply = bytes(self._buf[self._whole_start:self._pos]), self._whole_hits
        self._whole_start, self._whole_hits = -1, 0
        return reply

    def _fenced(self) -> bytes | None:
        while True:
            reply = self._meta(fenced=True)
            if reply is None:
                return None
            if reply == b"":
                parts, self._parts = self._parts, []
                return b"".join(parts)
            self._parts.append(reply)
