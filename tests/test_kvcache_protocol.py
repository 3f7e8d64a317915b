"""The sans-I/O parser (kvcache/protocol.py) and the number and flag readers, without sockets.

The expectations are memcached 1.6.18's, as measured by tests/test_kvcache_differential.py;
here they are pinned down where the differential test cannot see them (chunking, buffer
sizes, the exact request objects).
"""

from __future__ import annotations

import pytest

from kvcache.metaflags import decode_key, parse_meta_flags
from kvcache.numbers import strtol32, strtoul32, strtoull
from kvcache.protocol import Close, Reject, RequestParser, Store, ntokens, tokenize

MB = 1024 * 1024


def parse(data: bytes, item_size_max: int = MB, piece: int = 0) -> list[object]:
    parser = RequestParser(item_size_max)
    out: list[object] = []
    pieces = [data[i:i + piece] for i in range(0, len(data), piece)] if piece else [data]
    for chunk in pieces:
        parser.feed(chunk)
        while (request := parser.next_request()) is not None:
            out.append(request)
    return out


def test_lines_and_tokens() -> None:
    assert parse(b"get a b\r\nversion\nfoo  bar \r\n") == [
        [b"get", b"a", b"b"], [b"version"], [b"foo", b"bar"]]
    assert tokenize(b"get a\tb") == [b"get", b"a\tb"]  # tabs belong to keys
    assert parse(b"get a\x00b c\r\n") == [[b"get", b"a"]]  # memcached reads with strlen
    assert parse(b"\r\n") == [[b"\r"]]  # a lone \r is not stripped (memcached)


def test_token_count_is_capped_like_memcacheds() -> None:
    assert ntokens([b"x"] * 5) == 6
    assert ntokens([b"x"] * 23) == 24
    assert ntokens([b"x"] * 40) == 24


def test_storage_request_with_its_block() -> None:
    (request,) = parse(b"set k 5 100 3 noreply\r\nabc\r\n")
    assert isinstance(request, Store)
    assert (request.command, request.key, request.flags, request.exptime, request.noreply,
            request.data) == (b"set", b"k", 5, 100, True, b"abc")


def test_bad_data_chunk_resumes_after_the_announced_bytes() -> None:
    first, second, third = parse(b"set k 0 0 2\r\nabcd\r\nxy\r\n")
    assert isinstance(first, Store) and first.data is None and not first.too_large
    # memcached takes exactly 2 + 2 bytes ("abcd"), then reads "\r\n" as a (bad) command
    assert (second, third) == ([b"\r"], [b"xy"])


def test_too_large_is_swallowed_and_the_stream_stays_in_sync() -> None:
    block = b"x" * (MB + 10)
    requests = parse(b"set k 0 0 %d\r\n%s\r\nget k\r\n" % (len(block), block), piece=4096)
    assert len(requests) == 2
    assert isinstance(requests[0], Store) and requests[0].too_large
    assert requests[1] == [b"get", b"k"]


@pytest.mark.parametrize("piece", [0, 1, 7, 1000, 65536, 100_000])
def test_big_blocks_do_not_depend_on_how_they_arrive(piece: int) -> None:
    value = bytes(range(256)) * 3000
    data = b"set k 0 0 %d\r\n%s\r\nget k\r\n" % (len(value), value)
    requests = parse(data, piece=piece)
    assert isinstance(requests[0], Store) and requests[0].data == value
    assert requests[1] == [b"get", b"k"]


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"set k 0 0", b"ERROR\r\n"),
        (b"set k 0 0 1 2 3", b"ERROR\r\n"),
        (b"set " + b"k" * 251 + b" 0 0 1", b"CLIENT_ERROR bad command line format\r\n"),
        (b"set k 0 0 -1", b"CLIENT_ERROR bad command line format\r\n"),
        (b"set k 0 0 -1 noreply", b""),
        (b"cas k 0 0 1 -1", b"CLIENT_ERROR bad command line format\r\n"),
        (b"ms k", b"CLIENT_ERROR bad command line format\r\n"),
        (b"ms", b"ERROR\r\n"),
    ],
)
def test_refused_headers_have_no_block(line: bytes, reply: bytes) -> None:
    first, second = parse(line + b"\r\nversion\r\n")
    assert isinstance(first, Reject) and first.reply == reply
    assert second == [b"version"]


def test_meta_set_errors_swallow_the_block() -> None:
    first, second = parse(b"ms k 3 Zx\r\nabc\r\nversion\r\n")
    assert isinstance(first, Reject) and first.reply == b"CLIENT_ERROR invalid flag\r\n"
    assert second == [b"version"]


def test_line_without_newline_over_2048_closes_unless_multiget() -> None:
    assert isinstance(parse(b"x" * 2049)[-1], Close)
    assert parse(b"x" * 2048) == []
    assert parse(b"get " + b"k " * 5000) == []  # a multi-get may keep coming
    assert isinstance(parse(b" " * 101 + b"get " + b"k " * 2000)[-1], Close)
    assert isinstance(parse(b"gat 0 " + b"k " * 2000)[-1], Close)  # only get and gets


def test_line_longer_than_memcacheds_read_buffer_closes() -> None:
    # memcached reads 16384 bytes at a time: the newline must be among them
    assert isinstance(parse(b"x" * 16383 + b"\r\n")[0], Close)
    assert parse(b"x" * 16382 + b"\r\n") == [[b"x" * 16382]]
    keys = b" ".join(b"k%05d" % i for i in range(5000))
    assert parse(b"get " + keys + b"\r\n")[0][:2] == [b"get", b"k00000"]


def test_nothing_after_close() -> None:
    parser = RequestParser(MB)
    parser.feed(b"y" * 3000)
    assert isinstance(parser.next_request(), Close)
    parser.feed(b"\r\nversion\r\n")
    assert parser.next_request() is None


@pytest.mark.parametrize(
    ("token", "u64", "u32", "i32"),
    [
        (b"5", 5, 5, 5),
        (b"-0", 0, 0, 0),
        (b"-1", None, None, -1),
        (b" 7", 7, 7, 7),
        (b"7\t", 7, 7, 7),
        (b"7x", None, None, None),
        (b"", None, None, None),
        (b"4294967296", 4294967296, 0, 0),
        (b"18446744073709551615", 18446744073709551615, 4294967295, None),
        (b"18446744073709551616", None, None, None),
        (b"-9223372036854775809", 9223372036854775807, 4294967295, None),
        (b"-2147483649", None, None, 2147483647),
        (b"0" * 30 + b"1", 1, 1, 1),
    ],
)
def test_numbers_read_as_memcacheds_strtol(token: bytes, u64, u32, i32) -> None:
    assert (strtoull(token), strtoul32(token), strtol32(token)) == (u64, u32, i32)


@pytest.mark.parametrize(
    ("text", "key"),
    [(b"Zm9v", b"foo"), (b"Zg==", b"f"), (b"YR==", b"a"), (b"Zm==Zm==", b"f"),
     (b"ZZ=a", b"e\x90"), (b"Y!Q==", b"a"), (b"Zm9", None), (b"Zm9v=", None),
     (b"====", None), (b"Z===", None)],
)
def test_base64_keys_decode_like_memcached(text: bytes, key: bytes | None) -> None:
    assert decode_key(text) == key


def test_meta_flag_errors() -> None:
    assert parse_meta_flags(b"k", [b"v", b"v"]).error == "CLIENT_ERROR duplicate flag"
    assert parse_meta_flags(b"k", [b"E1"]).error == "CLIENT_ERROR invalid flag"
    assert parse_meta_flags(b"k", [b"Tx", b"Cx"]).error == (
        "CLIENT_ERROR bad token in command line format")
    flags = parse_meta_flags(b"Zm9v", [b"b", b"T30", b"q", b"MA", b"O1"])
    assert flags.error is None
    assert (flags.key, flags.key_binary, flags.exptime, flags.no_reply, flags.mode) == (
        b"foo", True, 30, True, ord("A"))
