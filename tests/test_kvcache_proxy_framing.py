"""kvcache/proxy_wire.py's WHOLE_VALUES shape, sans-I/O: a retrieval one backend answers is
handed back as one piece of bytes with its number of VALUE blocks, whatever the packets it
arrived in; it is the same bytes and hits as the VALUES shape's blocks joined.
"""

from __future__ import annotations

import pytest

from kvcache.proxy_wire import LINE, VALUES, WHOLE_VALUES, ReplyFramer

REPLIES = [
    (LINE, b"STORED\r\n"),
    (WHOLE_VALUES, b"VALUE a 5 2 9\r\nhi\r\nVALUE b 0 0\r\n\r\nEND\r\n"),
    (WHOLE_VALUES, b"VALUE c 0 5\r\nEND\r\n\r\nEND\r\n"),  # a value that looks like END
    (WHOLE_VALUES, b"END\r\n"),
    (WHOLE_VALUES, b"VALUE d 0 1\r\nx\r\nSERVER_ERROR out of memory\r\n"),
    (LINE, b"42\r\n"),
]
HITS = [None, 2, 1, 0, 1, None]
STREAM = b"".join(reply for _, reply in REPLIES)


def _take_all(framer: ReplyFramer, chunks: list[bytes], shapes: list[str]) -> list[object]:
    got: list[object] = []
    for chunk in chunks:
        framer.feed(chunk)
        while len(got) < len(shapes) and (reply := framer.take(shapes[len(got)])) is not None:
            got.append(reply)
    return got


def _expected() -> list[object]:
    return [reply if hits is None else (reply, hits)
            for (_, reply), hits in zip(REPLIES, HITS, strict=True)]


def test_whole_values_byte_by_byte() -> None:
    chunks = [bytes([byte]) for byte in STREAM]
    assert _take_all(ReplyFramer(), chunks, [s for s, _ in REPLIES]) == _expected()


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_whole_values_cut_anywhere(cut: int) -> None:
    chunks = [STREAM[:cut], STREAM[cut:]]
    assert _take_all(ReplyFramer(), chunks, [s for s, _ in REPLIES]) == _expected()


def test_whole_values_agree_with_values_joined() -> None:
    shapes = [VALUES if shape == WHOLE_VALUES else shape for shape, _ in REPLIES]
    split = _take_all(ReplyFramer(), [STREAM], shapes)
    joined = [reply if shape == LINE else (b"".join(b for _, b in reply[0]) + reply[1],
                                           len(reply[0]))
              for shape, reply in zip(shapes, split, strict=True)]
    assert joined == _expected()


@pytest.mark.parametrize("data", [b"STORED\r\n", b"VALUE a 0 1\r\nxyz\r\n", b"VALUE a 0\r\n",
                                  b"VALUE a 0 x\r\n"])
def test_whole_values_refuse_a_reply_out_of_step(data: bytes) -> None:
    framer = ReplyFramer()
    framer.feed(data)
    with pytest.raises(ValueError):
        framer.take(WHOLE_VALUES)
