"""A stand-in for shardstore's engine and command layer in the daemon's tests, to the
contract of issue 12's phase 1 (shardstore/engine, shardstore/commands.py), kept small:
a dict engine and SET GET DEL MGET MSET INCR DBSIZE FLUSHALL. Values are stored as they
come (no type tag); expiry is SET's PX only."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from core.command_table import Command, key_at, keys_from
from core.resp import OK, CommandError

_STORES: dict[Path, dict[str, Any]] = {}


class DictEngine:
    """The Engine contract in memory, kept per directory for the life of the process."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    @classmethod
    def open(cls, directory: Path, **options: Any) -> DictEngine:
        return cls(_STORES.setdefault(directory, {"data": {}, "applied": 0}))

    @classmethod
    def load(cls, directory: Path, pieces: Iterable[bytes], applied_index: int,
             **options: Any) -> DictEngine:
        data = {}
        for piece in pieces:
            key_len = int.from_bytes(piece[:4], "big")
            key = piece[4:4 + key_len]
            expire = int.from_bytes(piece[4 + key_len:12 + key_len], "big")
            data[key] = (piece[12 + key_len:], expire)
        _STORES[directory] = {"data": data, "applied": applied_index}
        return cls(_STORES[directory])

    @property
    def applied_index(self) -> int:
        return int(self.state["applied"])

    def get(self, key: bytes) -> tuple[bytes, int] | None:
        return self.state["data"].get(key)

    def write(self, batch: Sequence[tuple[bytes, bytes | None, int]],
              applied_index: int | None = None) -> None:
        for key, value, expire in batch:
            if value is None:
                self.state["data"].pop(key, None)
            else:
                self.state["data"][key] = (value, expire)
        if applied_index is not None:
            self.state["applied"] = applied_index

    def scan(self, start: bytes = b"", end: bytes | None = None,
             limit: int | None = None) -> list[tuple[bytes, bytes, int]]:
        keys = [k for k in sorted(self.state["data"]) if k >= start and (end is None or k < end)]
        return [(k, *self.state["data"][k]) for k in keys[:limit]]

    def count(self) -> int:
        return len(self.state["data"])

    def keys_after(self, cursor: bytes, limit: int) -> list[bytes]:
        keys = sorted(self.state["data"])
        return keys[bisect.bisect_right(keys, cursor):][:limit]

    def dump(self) -> Iterator[bytes]:
        items = sorted(self.state["data"].items())
        for key, (value, expire) in items:
            yield len(key).to_bytes(4, "big") + key + expire.to_bytes(8, "big") + value

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass

    @property
    def stats(self) -> dict[str, int]:
        return {"keys": self.count()}


def _live(kv: Any, key: bytes, now_ms: int) -> bytes | None:
    found = kv.get(key)
    if found is None or (found[1] and found[1] <= now_ms):
        return None
    return found[0]


def _set(kv: Any, now_ms: int, args: list[bytes]) -> list[tuple[bytes, bytes | None, int]]:
    expire = now_ms + int(args[4]) if len(args) == 5 and args[3].upper() == b"PX" else 0
    return [(args[1], args[2], expire)]


def execute_write(kv: Any, now_ms: int, args: list[bytes], applied_index: int) -> Any:
    name = args[0].upper()
    batch: list[tuple[bytes, bytes | None, int]] = []
    reply: Any = OK
    if name == b"SET":
        batch = _set(kv, now_ms, args)
    elif name == b"MSET":
        batch = [(args[i], args[i + 1], 0) for i in range(1, len(args), 2)]
    elif name == b"DEL":
        live = [k for k in args[1:] if _live(kv, k, now_ms) is not None]
        batch, reply = [(k, None, 0) for k in live], len(live)
    elif name == b"INCR":
        value = int(_live(kv, args[1], now_ms) or b"0") + 1
        batch, reply = [(args[1], str(value).encode(), 0)], value
    elif name == b"FLUSHALL":
        batch = [(k, None, 0) for k in kv.keys_after(b"", 1 << 30)]
    else:
        reply = CommandError("ERR unknown write")
    kv.write(batch, applied_index)
    return reply


def execute_read(kv: Any, now_ms: int, args: list[bytes], **options: Any) -> Any:
    name = args[0].upper()
    if name == b"GET":
        return _live(kv, args[1], now_ms)
    if name == b"MGET":
        return [_live(kv, k, now_ms) for k in args[1:]]
    if name == b"DBSIZE":
        return kv.count()
    return CommandError("ERR unknown read")


def _unbound(session: Any, args: list[bytes]) -> Any:
    raise CommandError("ERR not bound")


def _row(name: str, arity: int, flags: str, *specs: Any) -> Command:
    return Command(name, _unbound, arity, frozenset(flags.split()), key_specs=specs)


COMMANDS = [
    _row("SET", -3, "write denyoom", key_at(1, "RW")),
    _row("GET", 2, "readonly fast", key_at(1, "RO")),
    _row("DEL", -2, "write", keys_from(1, "RM")),
    _row("MGET", -2, "readonly fast", keys_from(1, "RO")),
    _row("MSET", -3, "write denyoom", keys_from(1, "OW", step=2)),
    _row("INCR", 2, "write denyoom fast", key_at(1, "RW")),
    _row("DBSIZE", 1, "readonly fast"),
    _row("FLUSHALL", -1, "write"),
    _row("PING", -1, "fast"),
]
