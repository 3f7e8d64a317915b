"""Tests of the RESP request parser: native._resp against native.resp_pure, its reference.

One table of cases (input, parser options, expected commands, error text, bytes left
buffered) runs against both twins, fed whole and one byte at a time. Hypothesis then proves
the twins equal: valid command lists in either encoding round-trip through any split into
reads, and random garbage (alone or mixed with valid commands, with limits and
`authenticated` changed between reads) gives both the same commands, error and buffer.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from native import FORCE_PURE_ENV, resp_pure
from native.resp_pure import (
    ERR_BUFFER_LIMIT,
    ERR_BULK_COUNT_TOO_BIG,
    ERR_EXPECTED_DOLLAR,
    ERR_INLINE_TOO_BIG,
    ERR_INVALID_BULK,
    ERR_INVALID_MBULK,
    ERR_MBULK_COUNT_TOO_BIG,
    ERR_UNAUTH_BULK,
    ERR_UNAUTH_MBULK,
    ERR_UNBALANCED_QUOTES,
    MAX_BUFFER_BYTES,
    MAX_BULK_BYTES,
    MAX_ELEMENTS,
    MAX_INLINE_BYTES,
    UNAUTH_MAX_BULK_BYTES,
    UNAUTH_MAX_ELEMENTS,
    ProtocolError,
)


def _import_native() -> ModuleType | None:
    try:
        return importlib.import_module("native._resp")
    except ImportError:
        return None


NATIVE = _import_native()
needs_native = pytest.mark.skipif(NATIVE is None, reason="native._resp is not built (make native)")
IMPLS = [
    pytest.param(resp_pure, id="pure"),
    pytest.param(NATIVE, id="native", marks=needs_native),
]

Commands = list[list[bytes]]


@dataclass
class Case:
    name: str
    data: bytes
    commands: Commands
    error: str | None = None
    buffered: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    bytewise: bool = True  # fed one byte at a time, the outcome is the same


def mbulk(*args: bytes) -> bytes:
    """Multibulk encoding, written independently of the parsers under test."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


NEXT = mbulk(b"NEXT")
INLINE4 = {"max_inline": 4}
ELEMENTS2 = {"max_elements": 2}
BUFFER10 = {"max_buffer": 10}
PING = [b"PING"]

CASES = [
    # multibulk
    Case("multibulk", b"*2\r\n$4\r\nNEXT\r\n$2\r\n10\r\n", [[b"NEXT", b"10"]]),
    Case("binary payload", mbulk(b"SET", b"a\r\n\x00\xffb"), [[b"SET", b"a\r\n\x00\xffb"]]),
    Case("empty bulk", b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n", [[b"ECHO", b""]]),
    Case("leading zeros, CRLF after bulk unchecked", b"*01\r\n$004\r\nPINGxx", [PING]),
    Case("pipeline", NEXT * 3, [[b"NEXT"]] * 3),
    Case(
        "mixed pipeline",
        mbulk(b"PING") + b"ECHO hi\r\n" + mbulk(b"GET", b"k"),
        [PING, [b"ECHO", b"hi"], [b"GET", b"k"]],
    ),
    # skipped input
    Case("empty lines skipped", b"\r\n\n \t \r\nPING\r\n\r\n", [PING]),
    Case("*0 and negative counts skipped", b"*0\r\n*-1\r\n*-5\r\n" + mbulk(b"PING"), [PING]),
    # inline
    Case("inline", b"NEXT 10\r\n", [[b"NEXT", b"10"]]),
    Case("inline LF and whitespace", b"  SET\tk \x0bv\x0c \n", [[b"SET", b"k", b"v"]]),
    Case("inline bare CR separates", b"A\rB\r\n", [[b"A", b"B"]]),
    Case("inline backslash literal unquoted", b"SET k a\\nb\r\n", [[b"SET", b"k", b"a\\nb"]]),
    Case("line starting with $ is inline", b"$4\r\n", [[b"$4"]]),
    # quoting
    Case(
        "double quotes and escapes",
        b'SET k "a\\x41\\x4a\\n\\r\\t\\b\\a\\"\\\\\\q z"\r\n',
        [[b"SET", b"k", b'aAJ\n\r\t\x08\x07"\\q z']],
    ),
    Case("bad hex escapes", b'"\\xg1" "\\x4"\r\n', [[b"xg1", b"x4"]]),
    Case("single quotes", b"SET k 'it\\'s \"x\" \\n'\r\n", [[b"SET", b"k", b"it's \"x\" \\n"]]),
    Case("empty quoted args", b"SET \"\" ''\r\n", [[b"SET", b"", b""]]),
    Case("quotes join an argument", b"ab\"c d\" x'y z' \r\n", [[b"abc d", b"xy z"]]),
    Case(
        "long quoted inline argument", b'SET k "' + b"x" * 300 + b'\\x41" ' + b"y" * 300 + b"\r\n",
        [[b"SET", b"k", b"x" * 300 + b"A", b"y" * 300]],
    ),
    Case("closing quote then tab", b'GET "k"\tx\r\n', [[b"GET", b"k", b"x"]]),
    Case("unbalanced double quote", b'SET k "abc\r\n', [], ERR_UNBALANCED_QUOTES),
    Case("unbalanced single quote", b"SET k 'abc\r\n", [], ERR_UNBALANCED_QUOTES),
    Case("escaped closing quote", b'SET "abc\\"\r\n', [], ERR_UNBALANCED_QUOTES),
    Case("double quote then non-space", b'SET "k"v\r\n', [], ERR_UNBALANCED_QUOTES),
    Case("single quote then non-space", b"SET 'k'v\r\n", [], ERR_UNBALANCED_QUOTES),
    # incomplete input waits
    Case("incomplete count", b"*2", [], buffered=2),
    Case("incomplete bulk", b"*2\r\n$4\r\nNEXT\r\n$2\r\n1", [], buffered=19),
    Case("bulk without its CRLF yet", b"*1\r\n$4\r\nNEXT", [], buffered=12),
    Case("incomplete inline", b"NEXT 1", [], buffered=6),
    Case("complete then incomplete", b"PING\r\n*1\r\n$4\r\nNE", [PING], buffered=10),
    # inline and header length limit
    Case("inline at max_inline", b"1234567\r\n", [[b"1234567"]], options={"max_inline": 8}),
    Case("too big inline", b"12345678\r\n", [], ERR_INLINE_TOO_BIG, options={"max_inline": 8}),
    Case("too big inline, no LF", b"123456789", [], ERR_INLINE_TOO_BIG, options={"max_inline": 8}),
    Case("too big inline, default", b"A" * (MAX_INLINE_BYTES + 1), [], ERR_INLINE_TOO_BIG),
    Case(
        "count lines at max_inline", b"*1\r\n$1\r\na\r\n", [[b"a"]], options={"max_inline": 1},
        bytewise=False,  # see CHUNKINGS
    ),
    Case("too big mbulk count", b"*12345\r\n", [], ERR_MBULK_COUNT_TOO_BIG, options=INLINE4),
    Case("too big mbulk count, no CRLF", b"*12345", [], ERR_MBULK_COUNT_TOO_BIG, options=INLINE4),
    Case("too big bulk count", b"*1\r\n$12345\r\n", [], ERR_BULK_COUNT_TOO_BIG, options=INLINE4),
    # multibulk count
    Case("mbulk count not a number", b"*abc\r\n", [], ERR_INVALID_MBULK),
    Case("mbulk count with +", b"*+1\r\n", [], ERR_INVALID_MBULK),
    Case("mbulk count empty", b"*\r\n", [], ERR_INVALID_MBULK),
    Case("mbulk count bare -", b"*-\r\n", [], ERR_INVALID_MBULK),
    Case("mbulk count with space", b"*1 \r\n", [], ERR_INVALID_MBULK),
    Case("mbulk count 19 digits", b"*1234567890123456789\r\n", [], ERR_INVALID_MBULK),
    Case("mbulk count over max_elements", b"*3\r\n", [], ERR_INVALID_MBULK, options=ELEMENTS2),
    Case("mbulk count at max_elements", mbulk(b"a", b"b"), [[b"a", b"b"]], options=ELEMENTS2),
    # elements
    Case("expected $", b"*1\r\n:4\r\n", [], ERR_EXPECTED_DOLLAR.format(":")),
    Case("expected $, got CR", b"*1\r\n\r\n", [], ERR_EXPECTED_DOLLAR.format("\r")),
    Case("expected $, non-ASCII", b"*2\r\n$1\r\na\r\n\xe9", [], ERR_EXPECTED_DOLLAR.format("\xe9")),
    Case("bulk length -1", b"*1\r\n$-1\r\n", [], ERR_INVALID_BULK),
    Case("bulk length not a number", b"*1\r\n$x\r\n", [], ERR_INVALID_BULK),
    Case("bulk length empty", b"*1\r\n$\r\n", [], ERR_INVALID_BULK),
    Case("bulk length 19 digits", b"*1\r\n$1234567890123456789\r\n", [], ERR_INVALID_BULK),
    Case("bulk over max_bulk", b"*1\r\n$4\r\n", [], ERR_INVALID_BULK, options={"max_bulk": 3}),
    Case("bulk at max_bulk", mbulk(b"abc"), [[b"abc"]], options={"max_bulk": 3}),
    # unauthenticated clients
    Case(
        "unauth elements over limit", b"*11\r\n", [], ERR_UNAUTH_MBULK,
        options={"authenticated": False},
    ),
    Case(
        "unauth elements at limit", mbulk(*[b"a"] * UNAUTH_MAX_ELEMENTS),
        [[b"a"] * UNAUTH_MAX_ELEMENTS], options={"authenticated": False},
    ),
    Case(
        "unauth bulk over limit", b"*1\r\n$%d\r\n" % (UNAUTH_MAX_BULK_BYTES + 1), [],
        ERR_UNAUTH_BULK, options={"authenticated": False},
    ),
    Case(
        "unauth bulk at limit", b"*1\r\n$%d\r\n" % UNAUTH_MAX_BULK_BYTES, [], buffered=12,
        options={"authenticated": False},
    ),
    Case(
        "invalid count checked before unauth", b"*%d\r\n" % (MAX_ELEMENTS + 1), [],
        ERR_INVALID_MBULK, options={"authenticated": False},
    ),
    Case(
        "unauth does not limit inline", b"A B C D E F G H I J K L\r\n",
        [[bytes([c]) for c in b"ABCDEFGHIJKL"]], options={"authenticated": False},
    ),
    # buffer limit
    Case("buffer at limit", b"*1\r\n$100\r\n", [], buffered=10, options=BUFFER10),
    Case("buffer over limit", b"*1\r\n$100\r\nabc", [], ERR_BUFFER_LIMIT, options=BUFFER10),
    Case(
        "commands before buffer limit", b"PING\r\n*1\r\n$100\r\nabc", [PING], ERR_BUFFER_LIMIT,
        options=BUFFER10,
    ),
    # commands completed before an error are returned
    Case(
        "commands before error", b"PING\r\nECHO a\r\n*1\r\nx\r\n", [PING, [b"ECHO", b"a"]],
        ERR_EXPECTED_DOLLAR.format("x"),
    ),
]


def error_text(parser: Any) -> str | None:
    if parser.error is None:
        return None
    assert isinstance(parser.error, ProtocolError)
    return str(parser.error)


def feed_all(parser: Any, chunks: list[bytes]) -> Commands:
    commands: Commands = []
    for chunk in chunks:
        commands.extend(parser.feed(chunk))
    return commands


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
@pytest.mark.parametrize("split", ["whole", "bytewise"])
def test_case(impl: ModuleType, case: Case, split: str) -> None:
    parser = impl.RequestParser(**case.options)
    if split == "whole":
        chunks = [case.data]
    elif case.bytewise:
        chunks = [case.data[i : i + 1] for i in range(len(case.data))]
    else:
        pytest.skip("outcome depends on the cut (see CHUNKINGS)")
    assert feed_all(parser, chunks) == case.commands
    assert error_text(parser) == case.error
    assert parser.buffered == case.buffered


@pytest.mark.parametrize("impl", IMPLS)
def test_nothing_accepted_after_error(impl: ModuleType) -> None:
    parser = impl.RequestParser()
    assert parser.feed(b"PING\r\n*x\r\nPING\r\n") == [PING]
    error = parser.error
    assert str(error) == ERR_INVALID_MBULK
    assert parser.feed(b"PING\r\n") == []
    assert parser.feed(mbulk(b"PING")) == []
    assert parser.error is error
    assert parser.buffered == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_attributes(impl: ModuleType) -> None:
    parser = impl.RequestParser()
    assert (parser.max_inline, parser.max_bulk, parser.max_elements, parser.max_buffer) == (
        MAX_INLINE_BYTES, MAX_BULK_BYTES, MAX_ELEMENTS, MAX_BUFFER_BYTES,
    )
    assert parser.authenticated is True
    assert parser.error is None
    assert parser.buffered == 0
    parser = impl.RequestParser(
        max_inline=1, max_bulk=2, max_elements=3, max_buffer=4, authenticated=False
    )
    assert (parser.max_inline, parser.max_bulk, parser.max_elements, parser.max_buffer) == (
        1, 2, 3, 4,
    )
    assert parser.authenticated is False
    parser.max_inline, parser.max_bulk, parser.max_elements, parser.max_buffer = 5, 6, 7, 8
    parser.authenticated = True
    assert (parser.max_inline, parser.max_bulk, parser.max_elements, parser.max_buffer) == (
        5, 6, 7, 8,
    )
    assert parser.authenticated is True


@pytest.mark.parametrize("impl", IMPLS)
def test_auth_lifts_limits(impl: ModuleType) -> None:
    parser = impl.RequestParser(authenticated=False)
    assert parser.feed(mbulk(b"AUTH", b"secret")) == [[b"AUTH", b"secret"]]
    parser.authenticated = True
    big = [b"MSET"] + [b"k"] * 20
    assert parser.feed(mbulk(*big)) == [big]
    assert parser.feed(mbulk(b"SET", b"k", b"v" * 20000)) == [[b"SET", b"k", b"v" * 20000]]
    assert parser.error is None


BIG = b"v" * (UNAUTH_MAX_BULK_BYTES + 1)
MANY = [b"k"] * (UNAUTH_MAX_ELEMENTS + 1)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    ("command", "change", "error"),
    [
        # The reference checks the whole incomplete command again against the new values.
        ([b"SET", BIG, b"v"], {"authenticated": False}, ERR_UNAUTH_BULK),
        (MANY, {"authenticated": False}, ERR_UNAUTH_MBULK),
        ([b"SET", b"key:1", b"v"], {"authenticated": False}, None),
        ([b"SET", b"key:1", b"v"], {"max_elements": 2}, ERR_INVALID_MBULK),
        ([b"SET", b"key:1", b"v"], {"max_bulk": 4}, ERR_INVALID_BULK),
        ([b"SET", b"key:1", b"v"], {"max_inline": 0}, ERR_MBULK_COUNT_TOO_BIG),
        ([b"SET", b"key:1", b"v"], {"max_buffer": 4}, None),  # only a leftover is limited
        ([b"SET", b"key:1", b"v"], {}, None),
    ],
)
def test_limits_changed_mid_command(
    impl: ModuleType, command: list[bytes], change: dict[str, Any], error: str | None
) -> None:
    parser = impl.RequestParser()
    data = mbulk(*command)
    cut = len(data) - len(mbulk(command[-1])) + 4  # before the last element
    assert parser.feed(data[:cut]) == []
    for name, value in change.items():
        setattr(parser, name, value)
    commands = parser.feed(data[cut:])
    assert error_text(parser) == error
    assert commands == ([] if error else [command])


@pytest.mark.parametrize("impl", IMPLS)
def test_unusual_limit_values(impl: ModuleType) -> None:
    parser = impl.RequestParser(max_bulk=3.5, max_elements=10**30)
    assert parser.max_bulk == 3.5 and parser.max_elements == 10**30
    assert parser.feed(mbulk(b"abc")) == [[b"abc"]]
    assert parser.feed(mbulk(b"abcd")) == []
    assert str(parser.error) == ERR_INVALID_BULK
    parser = impl.RequestParser(max_buffer=-1)  # any leftover at all is too much
    assert parser.feed(b"PING\r\n") == [PING]
    assert parser.feed(b"P") == []
    assert str(parser.error) == ERR_BUFFER_LIMIT
    parser = impl.RequestParser(max_inline=float("nan"))  # never exceeded
    long_arg = b"A" * (MAX_INLINE_BYTES + 10)
    assert parser.feed(long_arg + b"\r\n") == [[long_arg]]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_feed_accepts_buffers(impl: ModuleType, kind: type) -> None:
    parser = impl.RequestParser()
    data = mbulk(b"GET", b"k") + b"PING\r\n"
    assert parser.feed(kind(data[:5])) == []
    assert parser.feed(kind(data[5:])) == [[b"GET", b"k"], PING]
    assert parser.feed(kind(data)) == [[b"GET", b"k"], PING]
    assert parser.buffered == 0


@needs_native
def test_native_shares_the_reference_names() -> None:
    assert NATIVE is not None
    assert NATIVE.ProtocolError is ProtocolError
    assert NATIVE.ERR_INVALID_BULK is ERR_INVALID_BULK


def test_facade(monkeypatch: pytest.MonkeyPatch) -> None:
    resp = importlib.import_module("native.resp")
    pure = NATIVE is None or os.environ.get(FORCE_PURE_ENV, "") not in ("", "0")
    assert resp.IMPLEMENTATION == ("pure" if pure else "native")
    assert resp.RequestParser is (resp_pure if pure else NATIVE).RequestParser
    assert resp.ProtocolError is ProtocolError
    assert resp.split_inline is resp_pure.split_inline
    assert all(hasattr(resp, name) for name in resp.__all__)
    try:
        monkeypatch.setenv(FORCE_PURE_ENV, "1")
        importlib.reload(resp)
        assert resp.IMPLEMENTATION == "pure"
        assert resp.RequestParser is resp_pure.RequestParser
    finally:
        monkeypatch.undo()
        importlib.reload(resp)


# Reads whose outcome depends on where they are cut: both twins must agree, whatever it is.
CHUNKINGS = [
    # A count line exactly max_inline long whose CR ends a read: while the LF is missing the
    # reference counts the CR, so the line is too big; whole, it is taken.
    ({"max_inline": 4}, [b"*1234\r", b"\n"]),
    ({"max_inline": 4}, [b"*1234\r\n"]),
    ({"max_inline": 3}, [b"*1\r\n$123\r", b"\nabc\r\n"]),
    # A pipeline longer than max_buffer passes whole but not in pieces.
    ({"max_buffer": 8}, [NEXT * 4]),
    ({"max_buffer": 8}, [(NEXT * 4)[:30], (NEXT * 4)[30:]]),
]


@needs_native
@pytest.mark.parametrize(("options", "chunks"), CHUNKINGS)
def test_twins_agree_on_chunking(options: dict[str, Any], chunks: list[bytes]) -> None:
    pure, native = resp_pure.RequestParser(**options), NATIVE.RequestParser(**options)
    for chunk in chunks:
        assert native.feed(chunk) == pure.feed(chunk)
        assert error_text(native) == error_text(pure)
        assert native.buffered == pure.buffered


# ---- hypothesis: valid commands round-trip ------------------------------------------------

SPACES = b" \t\n\r\v\f"


def inline_plain_ok(arg: bytes) -> bool:
    return bool(arg) and not arg.startswith(b"*") and not any(c in SPACES + b"\"'" for c in arg)


def inline_double(arg: bytes, upper: bool) -> bytes:
    out = bytearray(b'"')
    for c in arg:
        if c in (34, 92):
            out += b"\\" + bytes([c])
        elif 32 <= c < 127:
            out.append(c)
        else:
            out += (b"\\x%02X" if upper else b"\\x%02x") % c
    return bytes(out + b'"')


def inline_single_ok(arg: bytes) -> bool:
    return b"\n" not in arg and not arg.endswith(b"\\")


@st.composite
def encoded_command(draw: st.DrawFn, command: list[bytes]) -> bytes:
    """`command` as multibulk or inline (each argument plain, double or single quoted)."""
    if draw(st.booleans()):
        return mbulk(*command)
    parts = []
    for arg in command:
        forms = ["double"]
        if inline_plain_ok(arg):
            forms.append("plain")
        if inline_single_ok(arg):
            forms.append("single")
        form = draw(st.sampled_from(forms))
        if form == "plain":
            parts.append(arg)
        elif form == "single":
            parts.append(b"'" + arg.replace(b"'", b"\\'") + b"'")
        else:
            parts.append(inline_double(arg, draw(st.booleans())))
    separators = draw(
        st.lists(st.sampled_from([b" ", b"\t", b"  ", b" \t"]), min_size=len(parts) - 1,
                 max_size=len(parts) - 1)
    )
    line = parts[0] + b"".join(sep + part for sep, part in zip(separators, parts[1:], strict=True))
    lead = draw(st.sampled_from([b"", b" "]))
    trail = draw(st.sampled_from([b"", b" ", b"\t"]))
    return lead + line + trail + draw(st.sampled_from([b"\r\n", b"\n"]))


commands_st = st.lists(st.lists(st.binary(max_size=20), min_size=1, max_size=6), max_size=12)
NOISE = [b"\r\n", b"\n", b" \t\r\n", b"*0\r\n", b"*-1\r\n"]


def split_points(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=10))))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@needs_native
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), commands=commands_st)
def test_valid_commands_round_trip(data: st.DataObject, commands: Commands) -> None:
    stream = b"".join(
        data.draw(st.sampled_from([b"", *NOISE])) + data.draw(encoded_command(command))
        for command in commands
    )
    chunks = split_points(data.draw, stream)
    pure, native = resp_pure.RequestParser(), NATIVE.RequestParser()
    got_pure, got_native = feed_all(pure, chunks), feed_all(native, chunks)
    assert got_native == got_pure == commands
    assert pure.error is None and native.error is None
    assert pure.buffered == native.buffered == 0


# ---- hypothesis: garbage gives both twins the same outcome -----------------------------

TOKENS = [
    b"*", b"$", b"\r\n", b"\r", b"\n", b"-", b"0", b"1", b"2", b"3", b"9", b"10", b"11",
    b"18", b"16384", b"16385", b"99999999999999999999", b" ", b"\t", b'"', b"'", b"\\",
    b"\\x", b"4f", b"A", b"PING", b"\x00", b"\xff",
]
garbage_st = st.lists(
    st.one_of(st.sampled_from(TOKENS), st.binary(max_size=4)), max_size=40
).map(b"".join)
valid_st = commands_st.flatmap(
    lambda commands: st.tuples(*[encoded_command(c) for c in commands]).map(b"".join)
)
stream_st = st.lists(st.one_of(garbage_st, valid_st), min_size=1, max_size=5).map(b"".join)
options_st = st.fixed_dictionaries(
    {},
    optional={
        "max_inline": st.integers(-1, 40),
        "max_bulk": st.integers(-1, 40),
        "max_elements": st.integers(-1, 12),
        "max_buffer": st.integers(-1, 120),
        "authenticated": st.booleans(),
    },
)
change_st = st.one_of(
    st.none(),
    st.tuples(
        st.sampled_from(["max_inline", "max_bulk", "max_elements", "max_buffer"]),
        st.integers(-1, 100),
    ),
    st.tuples(st.just("authenticated"), st.booleans()),
)


@needs_native
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), stream=stream_st, options=options_st)
def test_garbage_same_outcome(data: st.DataObject, stream: bytes, options: dict[str, Any]) -> None:
    pure, native = resp_pure.RequestParser(**options), NATIVE.RequestParser(**options)
    for chunk in split_points(data.draw, stream):
        change = data.draw(change_st)
        if change is not None:
            setattr(pure, *change)
            setattr(native, *change)
        kind = data.draw(st.sampled_from([bytes, bytearray, memoryview]))
        assert native.feed(kind(chunk)) == pure.feed(kind(chunk))
        assert error_text(native) == error_text(pure)
        assert native.buffered == pure.buffered


@given(st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=300))
def test_encode_int_array_twins_agree(values: list[int]) -> None:
    expected = b"*%d\r\n" % len(values) + b"".join(b":%d\r\n" % v for v in values)
    assert resp_pure.encode_int_array(values) == expected
    if NATIVE is not None:
        assert NATIVE.encode_int_array(values) == expected


@pytest.mark.parametrize("impl", IMPLS)
def test_unauth_limit_after_other_commands_stops_before_it(impl: ModuleType) -> None:
    # Redis runs each command before parsing the next: an AUTH first may lift the limits.
    big = mbulk(*[b"a"] * (UNAUTH_MAX_ELEMENTS + 1))
    parser = impl.RequestParser(authenticated=False)
    assert parser.feed(b"AUTH pw\r\n" + big) == [[b"AUTH", b"pw"]]
    assert parser.error is None and parser.buffered == len(big)
    parser.authenticated = True
    assert parser.feed(b"") == [[b"a"] * (UNAUTH_MAX_ELEMENTS + 1)]
    # Without AUTH the stopped command fails on the next feed, as the first one would.
    parser = impl.RequestParser(authenticated=False)
    assert parser.feed(b"PING\r\n" + big) == [[b"PING"]]
    assert parser.feed(b"") == [] and str(parser.error) == ERR_UNAUTH_MBULK
