"""RESP reply encoding for servers, RESP2 and RESP3 from one set of Python values.

Handlers return plain values and the connection encodes them for the client's protocol:

    int -> integer          bytes / str -> bulk string     None -> null
    list / tuple -> array   dict -> map (RESP2: flat array) bool -> boolean (RESP2: 0/1)
    float -> double (RESP2: bulk)   Simple -> +status       Verbatim -> = (RESP2: bulk)
    RespSet -> set `~` (RESP2: array)
    Raw -> written as it is (pre-encoded, e.g. native.resp.encode_int_array)
    CommandError (raised or returned) -> -error

Request parsing lives in `native.resp` (Cython with a pure twin); the client side of the
protocol is `core.resp_client`.
"""

from __future__ import annotations

from typing import Any

from native.resp import ProtocolError, RequestParser

__all__ = [
    "CommandError",
    "ProtocolError",
    "RequestParser",
    "Raw",
    "RespSet",
    "Simple",
    "Verbatim",
    "OK",
    "encode",
    "encode_error",
]


class Simple(str):
    """A status reply (`+OK`); must not contain CR or LF."""


class Raw(bytes):
    """A reply already encoded as RESP that reads the same in RESP2 and RESP3
    (`native.resp.encode_int_array`); written as it is."""


class Verbatim(str):
    """Human-readable text (INFO): RESP3 verbatim string `=...txt:`, RESP2 bulk string."""


class RespSet(list):  # type: ignore[type-arg]
    """An unordered collection of distinct replies: RESP3 set `~`, RESP2 array (COMMAND INFO's
    flags and categories, as Redis sends them)."""


class CommandError(Exception):
    """A command failed; the reply is `-<message>`. The message starts with an error code
    in capitals (ERR, NOAUTH, WRONGPASS, CLOCK, ...), as Redis clients expect."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


OK = Simple("OK")
NULL2 = b"$-1\r\n"
NULL3 = b"_\r\n"


def encode_error(message: str) -> bytes:
    """`-message\\r\\n`, with any CR/LF in the message flattened so the stream stays framed."""
    clean = message.replace("\r", " ").replace("\n", " ")
    return b"-" + clean.encode("utf-8", "replace") + b"\r\n"


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


def encode(value: Any, protocol: int = 2) -> bytes:
    """Encode one reply value for RESP `protocol` (2 or 3)."""
    out: list[bytes] = []
    _encode_into(value, protocol, out)
    return b"".join(out)


def _encode_into(value: Any, protocol: int, out: list[bytes]) -> None:
    kind = type(value)
    if kind is int:
        out.append(b":%d\r\n" % value)
    elif kind is bytes:
        out.append(_bulk(value))
    elif kind is Simple:
        out.append(b"+%s\r\n" % value.encode())
    elif kind is str:
        out.append(_bulk(value.encode()))
    elif value is None:
        out.append(NULL3 if protocol == 3 else NULL2)
    elif kind is list or kind is tuple:
        out.append(b"*%d\r\n" % len(value))
        for item in value:
            _encode_into(item, protocol, out)
    elif kind is dict:
        if protocol == 3:
            out.append(b"%%%d\r\n" % len(value))
        else:
            out.append(b"*%d\r\n" % (2 * len(value)))
        for key, item in value.items():
            _encode_into(key, protocol, out)
            _encode_into(item, protocol, out)
    else:
        _encode_rare(value, protocol, out)


def _encode_rare(value: Any, protocol: int, out: list[bytes]) -> None:
    if isinstance(value, bool):
        if protocol == 3:
            out.append(b"#t\r\n" if value else b"#f\r\n")
        else:
            out.append(b":1\r\n" if value else b":0\r\n")
    elif isinstance(value, float):
        text = repr(value).encode()
        out.append(b",%s\r\n" % text if protocol == 3 else _bulk(text))
    elif isinstance(value, Verbatim):
        text = value.encode()
        if protocol == 3:
            out.append(b"=%d\r\ntxt:%s\r\n" % (len(text) + 4, text))
        else:
            out.append(_bulk(text))
    elif isinstance(value, Raw):
        out.append(value)
    elif isinstance(value, RespSet):
        out.append(b"~%d\r\n" % len(value) if protocol == 3 else b"*%d\r\n" % len(value))
        for item in value:
            _encode_into(item, protocol, out)
    elif isinstance(value, CommandError):
        out.append(encode_error(value.message))
    elif isinstance(value, int):
        out.append(b":%d\r\n" % value)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as a RESP reply")
