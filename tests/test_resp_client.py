"""Tests of core.resp_client: the sans-I/O reply parser alone, then real round trips to redis.

The parser is driven by one table of (wire bytes, expected value) cases, fed whole, one byte
at a time and all cases back to back; a hypothesis strategy builds random nested replies
with an encoder written here, independently of the module under test.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from core.resp_client import (
    NEED_DATA,
    AsyncRespConnection,
    ProtocolError,
    Push,
    ReplyError,
    ReplyParser,
    RespConnection,
    RespConnectionError,
    RespTimeoutError,
    encode_command,
)

# -- helpers ---------------------------------------------------------------------------


def normalize(value: object) -> object:
    """Make replies comparable: errors by text, pushes tagged, floats' NaN equal to itself."""
    if isinstance(value, ReplyError):
        return ("error", value.code, str(value))
    if isinstance(value, Push):
        return ("push", [normalize(v) for v in value])
    if isinstance(value, list):
        return [normalize(v) for v in value]
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


def parse_all(data: bytes, step: int | None = None, **limits: int) -> list[object]:
    """Every reply in `data`, fed whole or `step` bytes at a time; none may be left over."""
    parser = ReplyParser(**limits)
    out: list[object] = []
    chunks = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    for chunk in chunks:
        parser.feed(chunk)
        while (reply := parser.next_reply()) is not NEED_DATA:
            out.append(reply)
    assert parser.buffered() == 0
    return out


# -- the parser, type by type ----------------------------------------------------------

CASES: list[tuple[str, bytes, object]] = [
    ("simple", b"+OK\r\n", "OK"),
    ("simple-empty", b"+\r\n", ""),
    ("simple-utf8", "+h\u00e9\r\n".encode(), "h\u00e9"),
    ("error", b"-ERR unknown command 'FOO'\r\n", ("error", "ERR", "ERR unknown command 'FOO'")),
    ("error-clock", b"-CLOCK moved back 7 ms\r\n", ("error", "CLOCK", "CLOCK moved back 7 ms")),
    ("error-noauth", b"-NOAUTH Authentication required.\r\n",
     ("error", "NOAUTH", "NOAUTH Authentication required.")),
    ("integer", b":1000\r\n", 1000),
    ("integer-neg", b":-9223372036854775808\r\n", -(2**63)),
    ("integer-max", b":9223372036854775807\r\n", 2**63 - 1),
    ("bulk", b"$5\r\nhello\r\n", b"hello"),
    ("bulk-empty", b"$0\r\n\r\n", b""),
    ("bulk-crlf-inside", b"$4\r\n\r\n\r\n\r\n", b"\r\n\r\n"),
    ("bulk-null", b"$-1\r\n", None),
    ("array", b"*2\r\n$3\r\nfoo\r\n:7\r\n", [b"foo", 7]),
    ("array-empty", b"*0\r\n", []),
    ("array-null", b"*-1\r\n", None),
    ("array-nested", b"*2\r\n*1\r\n:1\r\n*0\r\n", [[1], []]),
    ("array-errors-in-place", b"*2\r\n-ERR x\r\n+OK\r\n", [("error", "ERR", "ERR x"), "OK"]),
    ("null", b"_\r\n", None),
    ("true", b"#t\r\n", True),
    ("false", b"#f\r\n", False),
    ("double", b",3.14\r\n", 3.14),
    ("double-exp", b",1.5e300\r\n", 1.5e300),
    ("double-inf", b",inf\r\n", math.inf),
    ("double-neg-inf", b",-inf\r\n", -math.inf),
    ("double-nan", b",nan\r\n", "nan"),
    ("bignum", b"(3492890328409238509324850943850943825024385\r\n",
     3492890328409238509324850943850943825024385),
    ("bulk-error", b"!21\r\nSYNTAX invalid syntax\r\n",
     ("error", "SYNTAX", "SYNTAX invalid syntax")),
    ("verbatim", b"=15\r\ntxt:Some string\r\n", "Some string"),
    ("verbatim-markdown", b"=8\r\nmkd:a\r\nb\r\n", "a\r\nb"),
    ("map", b"%2\r\n+first\r\n:1\r\n$6\r\nsecond\r\n#f\r\n", {"first": 1, b"second": False}),
    ("map-empty", b"%0\r\n", {}),
    ("map-aggregate-key", b"%1\r\n*2\r\n:1\r\n:2\r\n+v\r\n", {(1, 2): "v"}),
    ("set", b"~3\r\n+a\r\n+b\r\n:1\r\n", ["a", "b", 1]),
    ("set-empty", b"~0\r\n", []),
    ("push", b">2\r\n+message\r\n$2\r\nhi\r\n", ("push", ["message", b"hi"])),
    ("attribute", b"|1\r\n+ttl\r\n:3600\r\n:5\r\n", 5),
    ("attribute-empty", b"|0\r\n+x\r\n", "x"),
    ("attribute-in-array", b"*2\r\n:1\r\n|1\r\n+key\r\n+popularity\r\n:2\r\n", [1, 2]),
    ("attribute-nested", b"|1\r\n+a\r\n|1\r\n+b\r\n:1\r\n:2\r\n+z\r\n", "z"),
    ("ints-run", b"*10\r\n" + b"".join(b":%d\r\n" % i for i in range(10)), list(range(10))),
    ("ints-run-mixed",
     b"*10\r\n" + b"".join(b":%d\r\n" % i for i in range(8)) + b"$1\r\n:\r\n:9\r\n",
     [*range(8), b":", 9]),
    ("ints-run-nested", b"*2\r\n*9\r\n" + b":1\r\n" * 9 + b"~9\r\n" + b":-2\r\n" * 9,
     [[1] * 9, [-2] * 9]),
]


@pytest.mark.parametrize(("name", "wire", "expected"), CASES, ids=[c[0] for c in CASES])
def test_parse_each_type(name: str, wire: bytes, expected: object) -> None:
    assert [normalize(r) for r in parse_all(wire)] == [expected]


@pytest.mark.parametrize(("name", "wire", "expected"), CASES, ids=[c[0] for c in CASES])
def test_parse_one_byte_at_a_time(name: str, wire: bytes, expected: object) -> None:
    assert [normalize(r) for r in parse_all(wire, step=1)] == [expected]


def test_parse_split_at_every_boundary() -> None:
    wire = b"".join(case[1] for case in CASES)
    expected = [case[2] for case in CASES]
    for cut in range(len(wire) + 1):
        parser = ReplyParser()
        out: list[object] = []
        for piece in (wire[:cut], wire[cut:]):
            parser.feed(piece)
            while (reply := parser.next_reply()) is not NEED_DATA:
                out.append(normalize(reply))
        assert out == expected, cut


def test_all_cases_back_to_back_byte_by_byte() -> None:
    wire = b"".join(case[1] for case in CASES)
    assert [normalize(r) for r in parse_all(wire, step=1)] == [case[2] for case in CASES]


def test_reply_error_fields() -> None:
    (error,) = parse_all(b"-WRONGTYPE Operation against a key\r\n")
    assert isinstance(error, ReplyError) and isinstance(error, Exception)
    assert error.code == "WRONGTYPE"
    assert error.message == str(error) == "WRONGTYPE Operation against a key"
    (bare,) = parse_all(b"-\r\n")
    assert isinstance(bare, ReplyError) and bare.code == ""


def test_push_is_a_list() -> None:
    (push,) = parse_all(b">1\r\n:1\r\n")
    assert type(push) is Push and push == [1]


def test_need_data_until_complete_and_buffered_count() -> None:
    parser = ReplyParser()
    assert parser.next_reply() is NEED_DATA
    parser.feed(b"$10\r\n01234")
    assert parser.next_reply() is NEED_DATA
    assert parser.buffered() == 10
    parser.feed(b"56789\r")
    assert parser.next_reply() is NEED_DATA
    parser.feed(b"\n+next")
    assert parser.next_reply() == b"0123456789"
    assert parser.next_reply() is NEED_DATA
    parser.feed(b"\r\n")
    assert parser.next_reply() == "next"
    assert repr(NEED_DATA) == "NEED_DATA"


def test_large_integer_array_in_network_sized_chunks() -> None:
    ids = [7_000_000_000_000_000_000 + i * 4096 for i in range(100_000)]
    wire = b"*100000\r\n" + b"".join(b":%d\r\n" % i for i in ids) + b"+after\r\n"
    assert parse_all(wire, step=65536) == [ids, "after"]
    assert parse_all(wire, step=1000) == [ids, "after"]


def test_large_bulk_in_chunks() -> None:
    payload = bytes(range(256)) * 4096
    wire = b"$%d\r\n%b\r\n" % (len(payload), payload)
    assert parse_all(wire, step=4096) == [payload]


# -- malformed input and limits --------------------------------------------------------

MALFORMED: list[tuple[str, bytes]] = [
    ("unknown-type", b"?what\r\n"),
    ("bare-crlf", b"\r\n"),
    ("integer-text", b":abc\r\n"),
    ("integer-empty", b":\r\n"),
    ("integer-float", b":1.5\r\n"),
    ("bulk-length-text", b"$x\r\nabc\r\n"),
    ("bulk-length-negative", b"$-2\r\n"),
    ("bulk-no-crlf", b"$3\r\nabcde\r\n"),
    ("array-length-text", b"*two\r\n"),
    ("array-length-negative", b"*-5\r\n"),
    ("map-null", b"%-1\r\n"),
    ("set-length-negative", b"~-1\r\n"),
    ("bad-boolean", b"#x\r\n"),
    ("bad-double", b",pi\r\n"),
    ("bad-bignum", b"(12a\r\n"),
    ("null-payload", b"_x\r\n"),
    ("verbatim-no-prefix", b"=3\r\nabc\r\n"),
    ("verbatim-bad-prefix", b"=6\r\ntxtabc\r\n"),
    ("bulk-error-null", b"!-1\r\n"),
    ("bad-element", b"*2\r\n:1\r\n@\r\n"),
    ("ints-run-garbage", b"*9\r\n" + b":1\r\n" * 7 + b":1x\r\n:1\r\n"),
    ("ints-run-empty-line", b"*9\r\n" + b":1\r\n" * 7 + b"\r\n:1\r\n"),
]


@pytest.mark.parametrize(("name", "wire"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_input_raises(name: str, wire: bytes) -> None:
    for step in (None, 1):
        with pytest.raises(ProtocolError):
            parse_all(wire, step=step)


def test_parser_stays_broken_after_protocol_error() -> None:
    parser = ReplyParser()
    parser.feed(b"?\r\n")
    with pytest.raises(ProtocolError):
        parser.next_reply()
    with pytest.raises(ProtocolError):
        parser.next_reply()
    with pytest.raises(ProtocolError):
        parser.feed(b"+OK\r\n")
    assert issubclass(ProtocolError, ValueError)


def test_limit_bulk_size() -> None:
    assert parse_all(b"$4\r\nabcd\r\n", max_bulk_bytes=4) == [b"abcd"]
    with pytest.raises(ProtocolError, match="bulk length"):
        parse_all(b"$5\r\n", max_bulk_bytes=4)
    with pytest.raises(ProtocolError, match="bulk length"):  # before the payload arrives
        parse_all(b"$536870913\r\n")


def test_limit_elements() -> None:
    assert parse_all(b"*2\r\n:1\r\n:2\r\n", max_elements=2) == [[1, 2]]
    with pytest.raises(ProtocolError, match="elements"):
        parse_all(b"*3\r\n", max_elements=2)
    with pytest.raises(ProtocolError, match="elements"):
        parse_all(b"%3000000000\r\n")
    with pytest.raises(ProtocolError, match="elements"):
        parse_all(b"*1048577\r\n")


def test_limit_depth() -> None:
    assert parse_all(b"*1\r\n" * 3 + b":1\r\n", max_depth=3) == [[[[1]]]]
    with pytest.raises(ProtocolError, match="nested"):
        parse_all(b"*1\r\n" * 4 + b":1\r\n", max_depth=3)


def test_limit_line_length_complete_and_incomplete() -> None:
    assert parse_all(b"+" + b"x" * 16 + b"\r\n", max_line_bytes=16) == ["x" * 16]
    with pytest.raises(ProtocolError, match="line"):
        parse_all(b"+" + b"x" * 17 + b"\r\n", max_line_bytes=16)
    parser = ReplyParser(max_line_bytes=16)
    parser.feed(b"+" + b"x" * 10)
    assert parser.next_reply() is NEED_DATA
    parser.feed(b"x" * 10)  # still no CRLF, and already over the limit
    with pytest.raises(ProtocolError, match="line"):
        parser.next_reply()


def test_limit_buffer() -> None:
    parser = ReplyParser(max_buffer_bytes=10)
    parser.feed(b"$20\r\n")
    assert parser.next_reply() is NEED_DATA
    with pytest.raises(ProtocolError, match="buffer"):
        parser.feed(b"0123456789")


# -- random nested replies -------------------------------------------------------------

Wire = tuple[bytes, object]  # (encoding, normalized expected value)

_line_text = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=20)
_int64 = st.integers(-(2**63), 2**63 - 1)


def _bulk(kind: bytes, data: bytes) -> bytes:
    return b"%b%d\r\n%b\r\n" % (kind, len(data), data)


def _error(text: str) -> object:
    return ("error", text.split(" ", 1)[0] if text else "", text)


@st.composite
def scalars(draw: st.DrawFn) -> Wire:
    """One non-aggregate reply of any RESP2/RESP3 type, encoded here."""
    kind = draw(st.sampled_from("int bulk simple error bulkerror verbatim null bool double big"))
    if kind == "int":
        i = draw(_int64)
        return b":%d\r\n" % i, i
    if kind == "bulk":
        b = draw(st.binary(max_size=40))
        return _bulk(b"$", b), b
    if kind == "simple":
        text = draw(_line_text)
        return b"+" + text.encode() + b"\r\n", text
    if kind == "error":
        text = draw(_line_text)
        return b"-" + text.encode() + b"\r\n", _error(text)
    if kind == "bulkerror":
        text = draw(st.text(max_size=20))
        return _bulk(b"!", text.encode()), _error(text)
    if kind == "verbatim":
        text = draw(st.text(max_size=20))
        return _bulk(b"=", b"txt:" + text.encode()), text
    if kind == "null":
        return draw(st.sampled_from([b"_\r\n", b"$-1\r\n", b"*-1\r\n"])), None
    if kind == "bool":
        flag = draw(st.booleans())
        return (b"#t\r\n" if flag else b"#f\r\n"), flag
    if kind == "double":
        f = draw(st.floats(allow_nan=False))
        return b",%b\r\n" % repr(f).encode(), f
    big = draw(st.integers(min_value=2**64))
    return b"(%d\r\n" % big, big


@st.composite
def map_keys(draw: st.DrawFn) -> Wire:
    """A scalar usable as a dict key."""
    kind = draw(st.sampled_from(["int", "bulk", "simple"]))
    if kind == "int":
        i = draw(_int64)
        return b":%d\r\n" % i, i
    if kind == "bulk":
        b = draw(st.binary(max_size=10))
        return _bulk(b"$", b), b
    text = draw(_line_text)
    return b"+" + text.encode() + b"\r\n", text


@st.composite
def replies(draw: st.DrawFn, depth: int = 3) -> Wire:
    """A reply, aggregates nested up to `depth` deep, with its expected decoding."""
    kinds = ["scalar"] * 3 + (["array", "set", "push", "map", "attr", "ints"] if depth else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "scalar":
        return draw(scalars())
    if kind == "ints":  # long enough for the integer-run decoder
        ints = draw(st.lists(_int64, min_size=8, max_size=40))
        return b"*%d\r\n" % len(ints) + b"".join(b":%d\r\n" % i for i in ints), ints
    child = replies(depth - 1)
    if kind in ("map", "attr"):
        size = 5 if kind == "map" else 2
        pairs = draw(st.lists(st.tuples(map_keys(), child), max_size=size,
                              unique_by=lambda kv: kv[0][1]))
        body = b"".join(k[0] + v[0] for k, v in pairs)
        if kind == "map":
            return b"%%%d\r\n" % len(pairs) + body, {k[1]: v[1] for k, v in pairs}
        wire, value = draw(child)  # the attribute annotates this reply, and is dropped
        return b"|%d\r\n" % len(pairs) + body + wire, value
    items = draw(st.lists(child, max_size=6))
    wire = b"".join(w for w, _ in items)
    values = [v for _, v in items]
    if kind == "array":
        return b"*%d\r\n" % len(items) + wire, values
    if kind == "set":
        return b"~%d\r\n" % len(items) + wire, values
    return b">%d\r\n" % len(items) + wire, ("push", values)


@settings(max_examples=300, deadline=None)
@given(st.lists(replies(), min_size=1, max_size=4), st.data())
def test_round_trip_random_replies(items: list[Wire], data: st.DataObject) -> None:
    wire = b"".join(w for w, _ in items)
    expected = [v for _, v in items]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    parser = ReplyParser()
    out: list[object] = []
    for start, stop in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        parser.feed(wire[start:stop])
        while (reply := parser.next_reply()) is not NEED_DATA:
            out.append(normalize(reply))
    assert out == expected
    assert parser.buffered() == 0


# -- the request encoder ---------------------------------------------------------------


def test_encode_command() -> None:
    assert encode_command("SET", b"k\r\n", 12, -1.5) == (
        b"*4\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$2\r\n12\r\n$4\r\n-1.5\r\n"
    )
    assert encode_command("ECHO", "\u00e9", bytearray(b"x"), memoryview(b"yz")) == (
        b"*4\r\n$4\r\nECHO\r\n$2\r\n\xc3\xa9\r\n$1\r\nx\r\n$2\r\nyz\r\n"
    )
    assert encode_command("NEXT", 2**63 - 1) == (
        b"*2\r\n$4\r\nNEXT\r\n$19\r\n9223372036854775807\r\n"
    )
    with pytest.raises(TypeError):
        encode_command("SET", "k", True)
    with pytest.raises(TypeError):
        encode_command("SET", "k", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        encode_command()


@given(st.lists(st.one_of(st.binary(), st.text(), st.integers(), st.floats()), min_size=1))
def test_encode_command_is_a_multibulk_of_bulks(args: list[object]) -> None:
    # A request is shaped like an array reply of bulks: parse it with the reply parser.
    (decoded,) = parse_all(encode_command(*args))  # type: ignore[arg-type]
    assert isinstance(decoded, list) and len(decoded) == len(args)
    for arg, got in zip(args, decoded, strict=True):
        if isinstance(arg, bytes):
            assert got == arg
        elif isinstance(arg, str):
            assert got == arg.encode()
        elif isinstance(arg, int):
            assert int(got) == arg
        else:
            assert repr(arg).encode() == got


# -- real round trips with redis-server ------------------------------------------------

REDIS = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(REDIS is None, reason="redis-server is not installed")
PASSWORD = "s3cret-pw"


def _start_redis(
    tmp: Path, free_port: Callable[..., int], wait_for_port: Callable[..., None], *extra: str
) -> Iterator[int]:
    assert REDIS is not None
    port = free_port()
    proc = subprocess.Popen(
        [REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp), "--enable-debug-command", "yes", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", port, proc=proc)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def redis_port(
    tmp_path_factory: pytest.TempPathFactory,
    free_port: Callable[..., int],
    wait_for_port: Callable[..., None],
) -> Iterator[int]:
    """A redis-server without a password for this module; its port."""
    yield from _start_redis(tmp_path_factory.mktemp("redis"), free_port, wait_for_port)


@pytest.fixture(scope="module")
def redis_auth_port(
    tmp_path_factory: pytest.TempPathFactory,
    free_port: Callable[..., int],
    wait_for_port: Callable[..., None],
) -> Iterator[int]:
    """A redis-server started with --requirepass PASSWORD; its port."""
    yield from _start_redis(
        tmp_path_factory.mktemp("redis-auth"), free_port, wait_for_port, "--requirepass", PASSWORD
    )


@needs_redis
@pytest.mark.parametrize("protocol", [2, 3])
def test_redis_set_get_incr(redis_port: int, protocol: int) -> None:
    with RespConnection.connect("127.0.0.1", redis_port, timeout=5, protocol=protocol) as conn:
        key = f"k{protocol}"
        assert conn.call("SET", key, "v\u00e9") == "OK"
        assert conn.call("GET", key) == "v\u00e9".encode()
        assert conn.call("GET", "missing") is None
        assert conn.call("DEL", f"n{protocol}") in (0, 1)
        assert [conn.call("INCR", f"n{protocol}") for _ in range(3)] == [1, 2, 3]
        assert conn.call("INCRBY", f"n{protocol}", 2**40) == 2**40 + 3
        big = bytes(range(256)) * 8192  # 2 MiB: many reads
        assert conn.call("SET", "big", big) == "OK"
        assert conn.call("GET", "big") == big
    assert conn.closed


@needs_redis
def test_redis_pipeline_with_errors_in_place(redis_port: int) -> None:
    with RespConnection.connect("127.0.0.1", redis_port, timeout=5) as conn:
        conn.call("DEL", "p", "h")
        commands: list[tuple[object, ...]] = [("INCR", "p") for _ in range(1000)]
        commands += [("HSET", "h", "f", "v"), ("INCR", "h"), ("NOSUCHCMD",), ("GET", "p")]
        replies = conn.pipeline(commands)  # type: ignore[arg-type]
        assert replies[:1000] == list(range(1, 1001))
        assert replies[1000] == 1
        assert isinstance(replies[1001], ReplyError) and replies[1001].code == "WRONGTYPE"
        assert isinstance(replies[1002], ReplyError) and replies[1002].code == "ERR"
        assert replies[1003] == b"1000"
        assert conn.pipeline([]) == []
        assert conn.call("PING") == "PONG"  # still in step


@needs_redis
def test_redis_error_replies_raise_and_keep_connection(redis_port: int) -> None:
    with RespConnection.connect("127.0.0.1", redis_port, timeout=5) as conn:
        with pytest.raises(ReplyError) as caught:
            conn.call("NOSUCHCMD", "x")
        assert caught.value.code == "ERR" and "unknown command" in str(caught.value)
        conn.call("SET", "str", "x")
        with pytest.raises(ReplyError) as caught:
            conn.call("LPUSH", "str", "y")
        assert caught.value.code == "WRONGTYPE"
        assert conn.call("PING") == "PONG"


@needs_redis
def test_redis_integer_array(redis_port: int) -> None:
    with RespConnection.connect("127.0.0.1", redis_port, timeout=5) as conn:
        conn.call("DEL", "s")
        conn.call("SADD", "s", *range(0, 40_000, 2))
        flags = conn.call("SMISMEMBER", "s", *range(20_000))
        assert flags == [1 - i % 2 for i in range(20_000)]


@needs_redis
def test_redis_hello3_and_resp3_types(redis_port: int) -> None:
    with RespConnection.connect("127.0.0.1", redis_port, timeout=5, protocol=3) as conn:
        hello = conn.hello
        assert isinstance(hello, dict)
        assert hello[b"server"] == b"redis" and hello[b"proto"] == 3
        conn.call("DEL", "h")
        conn.call("HSET", "h", "a", "1", "b", "2")
        assert conn.call("HGETALL", "h") == {b"a": b"1", b"b": b"2"}
        pushes: list[Push] = []
        conn.on_push = pushes.append
        debug = {t: conn.call("DEBUG", "PROTOCOL", t) for t in (
            "double", "bignum", "null", "set", "map", "attrib", "push", "verbatim", "true",
            "false",
        )}
        assert debug["double"] == 3.141
        assert debug["bignum"] == 1234567999999999999999999999999999999
        assert debug["null"] is None
        assert debug["set"] == [0, 1, 2]
        assert debug["map"] == {0: False, 1: True, 2: False}
        assert debug["attrib"] == b"Some real reply following the attribute"
        assert debug["push"] == b"Some real reply following the push reply"
        assert pushes == [[b"server-cpu-usage", 42]] and type(pushes[0]) is Push
        assert debug["verbatim"] == "This is a verbatim\nstring"
        assert debug["true"] is True and debug["false"] is False
    with RespConnection.connect("127.0.0.1", redis_port, timeout=5, protocol=2) as conn:
        assert conn.call("HGETALL", "h") == [b"a", b"1", b"b", b"2"]


@needs_redis
def test_redis_auth(redis_auth_port: int) -> None:
    with RespConnection.connect("127.0.0.1", redis_auth_port, timeout=5) as conn:
        with pytest.raises(ReplyError) as caught:
            conn.call("GET", "x")
        assert caught.value.code == "NOAUTH"
    with pytest.raises(ReplyError) as caught:
        RespConnection.connect("127.0.0.1", redis_auth_port, timeout=5, password="wrong")
    assert caught.value.code == "WRONGPASS"
    for protocol in (2, 3):
        with RespConnection.connect(
            "127.0.0.1", redis_auth_port, timeout=5, password=PASSWORD, protocol=protocol
        ) as conn:
            assert conn.call("SET", "a", protocol) == "OK"
            assert conn.call("GET", "a") == str(protocol).encode()


@needs_redis
def test_redis_timeout_closes_connection(redis_port: int) -> None:
    conn = RespConnection.connect("127.0.0.1", redis_port, timeout=0.2)
    with pytest.raises(RespTimeoutError):
        conn.call("BLPOP", "never-filled", 2)
    assert conn.closed
    with pytest.raises(RespConnectionError):
        conn.call("PING")
    assert issubclass(RespTimeoutError, TimeoutError)
    assert issubclass(RespTimeoutError, ConnectionError)


@needs_redis
def test_redis_server_closing_the_connection(redis_port: int) -> None:
    conn = RespConnection.connect("127.0.0.1", redis_port, timeout=5)
    conn.call("CLIENT", "SETNAME", "victim")
    with RespConnection.connect("127.0.0.1", redis_port, timeout=5) as killer:
        assert killer.call("CLIENT", "KILL", "USER", "default", "SKIPME", "yes") >= 1
    with pytest.raises(RespConnectionError):
        conn.call("PING")
    assert conn.closed


def test_connect_refused(free_port: Callable[..., int]) -> None:
    with pytest.raises(RespConnectionError):
        RespConnection.connect("127.0.0.1", free_port(), timeout=1)
    with pytest.raises(ValueError):
        RespConnection.connect("127.0.0.1", 1, timeout=1, protocol=4)


# -- the asyncio connection, under asyncio's loop and uvloop ---------------------------

LOOPS = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@needs_redis
@pytest.mark.parametrize("loop", list(LOOPS))
def test_async_round_trips(redis_port: int, loop: str) -> None:
    async def main() -> None:
        conn = await AsyncRespConnection.connect("127.0.0.1", redis_port, timeout=5, protocol=3)
        async with conn:
            assert isinstance(conn.hello, dict) and conn.hello[b"proto"] == 3
            assert await conn.call("SET", "ak", 5) == "OK"
            assert await conn.call("INCR", "ak") == 6
            with pytest.raises(ReplyError) as caught:
                await conn.call("INCR", "nope", "extra")
            assert caught.value.code == "ERR"
            replies = await conn.pipeline([("INCR", "ak"), ("LPUSH", "ak", "x"), ("GET", "ak")])
            assert replies[0] == 7 and replies[2] == b"7"
            assert isinstance(replies[1], ReplyError) and replies[1].code == "WRONGTYPE"
            # Concurrent calls on one connection are serialised and stay in step.
            results = await asyncio.gather(*(conn.call("ECHO", str(i)) for i in range(200)))
            assert results == [str(i).encode() for i in range(200)]
            big = b"z" * (3 * 1024 * 1024)
            await conn.call("SET", "abig", big)
            assert await conn.call("GET", "abig") == big
        assert conn.closed

    LOOPS[loop](main())


@needs_redis
@pytest.mark.parametrize("loop", list(LOOPS))
def test_async_auth_timeout_and_refused(
    redis_port: int, redis_auth_port: int, free_port: Callable[..., int], loop: str
) -> None:
    async def main() -> None:
        async with await AsyncRespConnection.connect(
            "127.0.0.1", redis_auth_port, timeout=5, password=PASSWORD
        ) as conn:
            assert await conn.call("PING") == "PONG"
        with pytest.raises(ReplyError) as caught:
            await AsyncRespConnection.connect(
                "127.0.0.1", redis_auth_port, timeout=5, password="bad"
            )
        assert caught.value.code == "WRONGPASS"
        conn = await AsyncRespConnection.connect("127.0.0.1", redis_port, timeout=0.2)
        with pytest.raises(RespTimeoutError):
            await conn.call("BLPOP", "never-filled-async", 2)
        assert conn.closed
        with pytest.raises(RespConnectionError):
            await conn.call("PING")
        with pytest.raises(RespConnectionError):
            await AsyncRespConnection.connect("127.0.0.1", free_port(), timeout=1)

    LOOPS[loop](main())


@needs_redis
def test_async_cancellation_closes_connection(redis_port: int) -> None:
    async def main() -> None:
        conn = await AsyncRespConnection.connect("127.0.0.1", redis_port, timeout=5)
        task = asyncio.create_task(conn.call("BLPOP", "never-filled-cancel", 2))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert conn.closed  # the BLPOP reply could otherwise answer the next call

    asyncio.run(main())
