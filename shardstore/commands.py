"""The shardstore command layer, sans-I/O: Redis 7's string, hash and keyspace commands
over any `KV` (the engine, or `DictKV` in tests), deterministic given `now_ms`.

The daemon decides by `is_write(name)` (Redis's "write" flag) whether a request goes
through Raft. The leader stamps `now_ms` into the entry and every replica calls
`execute_write(kv, now_ms, args, applied_index)` with it, so all compute the same effect;
a read is `execute_read(kv, now_ms, args)` on whichever node serves it. Either returns the
reply as a core.resp value (bytes, int, None, list, dict, Simple, or a CommandError with
Redis's exact text: errors are returned, not raised). A write calls `kv.write(batch,
applied_index)` exactly once, an empty batch for a no-op or a refused write, so the
store's applied index always advances with the log.

Rows: `SPECS` holds each command's Redis facts (arity, flags, key specs, ACL categories,
tips) and its sans-I/O function; `build_rows(handler_for)` makes core.command_table rows
with the daemon's handlers (COMMAND INFO then equals Redis's, and cluster routing finds the
keys); `COMMANDS` are rows whose handlers are the sans-I/O functions themselves, called as
`fn(view, args)` (a shardstore.kvview.View), for callers that dispatch by row.

Expiry: expired keys are invisible at once (lazy); `expire_sweep` finds expired keys and
`sweep_request(keys)` is the write the daemon proposes to delete them through Raft. It is
an internal request, not in the table: applied, it deletes each key only if the key is
still expired at the entry's now_ms (a key set again meanwhile survives).

The two commands of the hot path have shortcuts with the same effect and reply: a plain
`SET key value` (no options) is written without reading the old record (it replaces any
value of any type and drops its expiry), and GET's read runner reads the record directly,
without a View.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from core.command_table import Command, Handler, KeySpec, key_at, keys_from
from core.resp import OK, CommandError
from shardstore import cmd_hashes as h
from shardstore import cmd_keys as k
from shardstore import cmd_strings as s
from shardstore.kvview import KV, DictKV, View, walk_keys
from shardstore.scan_cursor import ScanCursors
from shardstore.values import (
    ERR_ARITY,
    ERR_NOT_A_READ,
    ERR_NOT_A_WRITE,
    ERR_UNKNOWN_COMMAND,
    ERR_WRONGTYPE,
    TAG_STRING,
)

__all__ = [
    "COMMANDS", "KV", "SPECS", "SWEEP_COMMAND", "CommandSpec", "DictKV", "ScanCursors",
    "build_rows", "execute_read", "execute_write", "expire_sweep", "is_write",
    "read_runner", "sweep_request",
]

CommandFn = Callable[[View, list[bytes]], object]
SWEEP_COMMAND = b"SHARDSTORE.SWEEP-EXPIRED"
# Keys read per KV call while sweeping.
SWEEP_CHUNK_KEYS = 256
# How much of a request an unknown-command error quotes (Redis's bound: 128 bytes).
UNKNOWN_SHOWN_BYTES = 128
PLAIN_SET_WORDS = 3  # SET key value, with no option


@dataclass(frozen=True)
class CommandSpec:
    """One command's Redis facts and its sans-I/O function."""

    name: str
    fn: CommandFn
    arity: int
    flags: tuple[str, ...]
    acl: tuple[str, ...] = ()
    key_specs: tuple[KeySpec, ...] = ()
    tips: tuple[str, ...] = ()
    group: str = ""

    @property
    def is_write(self) -> bool:
        """Whether the command changes the store (goes through Raft)."""
        return "write" in self.flags

    def row(self, handler: Handler) -> Command:
        """A core.command_table row with `handler` bound."""
        return Command(self.name, handler, self.arity, frozenset(self.flags),
                       key_specs=self.key_specs, acl=self.acl, tips=self.tips,
                       group=self.group)


def _one(*flags: str) -> tuple[KeySpec, ...]:
    return (key_at(1, *flags),)


def _all(*flags: str, step: int = 1) -> tuple[KeySpec, ...]:
    return (keys_from(1, *flags, step=step),)


_W, _WD, _WF, _WDF = ("write",), ("write", "denyoom"), ("write", "fast"), (
    "write", "denyoom", "fast")
_R, _RF = ("readonly",), ("readonly", "fast")
_STR, _HASH, _KEYS = ("string",), ("hash",), ("keyspace",)
_MULTI_SUM = ("request_policy:multi_shard", "response_policy:agg_sum")
_RW_UPDATE = _one("RW", "access", "update")

_SPEC_LIST = (
    CommandSpec("set", s.cmd_set, -3, _WD, _STR,
                _one("RW", "access", "update", "variable_flags"), group="string"),
    CommandSpec("get", s.cmd_get, 2, _RF, _STR, _one("RO", "access"), group="string"),
    CommandSpec("getdel", s.cmd_getdel, 2, _WF, _STR, _one("RW", "access", "delete"),
                group="string"),
    CommandSpec("incr", s.cmd_incr, 2, _WDF, _STR, _RW_UPDATE, group="string"),
    CommandSpec("incrby", s.cmd_incrby, 3, _WDF, _STR, _RW_UPDATE, group="string"),
    CommandSpec("decr", s.cmd_decr, 2, _WDF, _STR, _RW_UPDATE, group="string"),
    CommandSpec("decrby", s.cmd_decrby, 3, _WDF, _STR, _RW_UPDATE, group="string"),
    CommandSpec("append", s.cmd_append, 3, _WDF, _STR, _one("RW", "insert"), group="string"),
    CommandSpec("strlen", s.cmd_strlen, 2, _RF, _STR, _one("RO"), group="string"),
    CommandSpec("mget", s.cmd_mget, -2, _RF, _STR, _all("RO", "access"),
                ("request_policy:multi_shard",), group="string"),
    CommandSpec("mset", s.cmd_mset, -3, _WD, _STR, _all("OW", "update", step=2),
                ("request_policy:multi_shard", "response_policy:all_succeeded"),
                group="string"),
    CommandSpec("del", k.cmd_del, -2, _W, _KEYS, _all("RM", "delete"), _MULTI_SUM,
                group="generic"),
    CommandSpec("unlink", k.cmd_unlink, -2, _WF, _KEYS, _all("RM", "delete"), _MULTI_SUM,
                group="generic"),
    CommandSpec("exists", k.cmd_exists, -2, _RF, _KEYS, _all("RO"), _MULTI_SUM,
                group="generic"),
    CommandSpec("expire", k.cmd_expire, -3, _WF, _KEYS, _one("RW", "update"),
                group="generic"),
    CommandSpec("pexpire", k.cmd_pexpire, -3, _WF, _KEYS, _one("RW", "update"),
                group="generic"),
    CommandSpec("ttl", k.cmd_ttl, 2, _RF, _KEYS, _one("RO", "access"),
                ("nondeterministic_output",), group="generic"),
    CommandSpec("pttl", k.cmd_pttl, 2, _RF, _KEYS, _one("RO", "access"),
                ("nondeterministic_output",), group="generic"),
    CommandSpec("persist", k.cmd_persist, 2, _WF, _KEYS, _one("RW", "update"),
                group="generic"),
    CommandSpec("type", k.cmd_type, 2, _RF, _KEYS, _one("RO"), group="generic"),
    CommandSpec("dbsize", k.cmd_dbsize, 1, _RF, _KEYS, (),
                ("request_policy:all_shards", "response_policy:agg_sum"), group="server"),
    CommandSpec("flushall", k.cmd_flushall, -1, _W, ("keyspace", "dangerous"), (),
                ("request_policy:all_shards", "response_policy:all_succeeded"),
                group="server"),
    CommandSpec("scan", k.cmd_scan, -2, _R, _KEYS, (),
                ("nondeterministic_output", "request_policy:special"), group="generic"),
    CommandSpec("hset", h.cmd_hset, -4, _WDF, _HASH, _one("RW", "update"), group="hash"),
    CommandSpec("hget", h.cmd_hget, 3, _RF, _HASH, _one("RO", "access"), group="hash"),
    CommandSpec("hmget", h.cmd_hmget, -3, _RF, _HASH, _one("RO", "access"), group="hash"),
    CommandSpec("hdel", h.cmd_hdel, -3, _WF, _HASH, _one("RW", "delete"), group="hash"),
    CommandSpec("hgetall", h.cmd_hgetall, 2, _R, _HASH, _one("RO", "access"),
                ("nondeterministic_output_order",), group="hash"),
    CommandSpec("hincrby", h.cmd_hincrby, 4, _WDF, _HASH, _RW_UPDATE, group="hash"),
    CommandSpec("hlen", h.cmd_hlen, 2, _RF, _HASH, _one("RO"), group="hash"),
)

SPECS: dict[bytes, CommandSpec] = {spec.name.upper().encode(): spec for spec in _SPEC_LIST}


def build_rows(handler_for: Callable[[CommandSpec], Handler]) -> list[Command]:
    """Command rows for every command, each with the handler `handler_for(spec)` gives."""
    return [spec.row(handler_for(spec)) for spec in _SPEC_LIST]


COMMANDS: list[Command] = build_rows(lambda spec: spec.fn)


def is_write(name: bytes) -> bool:
    """Whether command `name` (any case) writes; False for a name not in the table."""
    spec = SPECS.get(name.upper())
    return spec is not None and spec.is_write


def _resolve(args: list[bytes]) -> CommandSpec:
    spec = SPECS.get(args[0].upper()) if args else None
    if spec is None:
        name = args[0][:UNKNOWN_SHOWN_BYTES] if args else b""
        raise CommandError(ERR_UNKNOWN_COMMAND.format(_text(name), _text(_quoted(args[1:]))))
    words = len(args)
    if (spec.arity >= 0 and words != spec.arity) or words < -spec.arity:
        raise CommandError(ERR_ARITY.format(spec.name))
    return spec


def _quoted(args: list[bytes]) -> bytes:
    # Redis quotes arguments while fewer than 128 bytes have been written, each cut to fit.
    shown = b""
    for arg in args:
        if len(shown) >= UNKNOWN_SHOWN_BYTES:
            break
        shown += b"'" + arg[: UNKNOWN_SHOWN_BYTES - len(shown)] + b"' "
    return shown


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def execute_read(kv: KV, now_ms: int, args: list[bytes], *,
                 cursors: ScanCursors | None = None) -> object:
    """The reply of read command `args` (name first) at `now_ms`; nothing is written.
    `cursors`: the node's SCAN cursor table (see shardstore.scan_cursor), optional."""
    view = View(kv, now_ms, writable=False)
    try:
        spec = _resolve(args)
        if spec.is_write:
            raise CommandError(ERR_NOT_A_READ.format(spec.name))
        if spec.name == "scan":
            return k.scan(view, args, cursors)
        return spec.fn(view, args)
    except CommandError as error:
        return error


def read_runner(name: str) -> Callable[[KV, int, list[bytes]], object] | None:
    """For a caller whose dispatcher has checked the arity already: `run(kv, now_ms, args)`
    answers read command `name` exactly as `execute_read` does, without looking the
    command up again; None for a write, SCAN or a name not in the table."""
    spec = SPECS.get(name.upper().encode())
    if spec is None or spec.is_write or spec.name == "scan":
        return None
    if spec.name == "get":
        return _get
    fn = spec.fn

    def run(kv: KV, now_ms: int, args: list[bytes]) -> object:
        try:
            return fn(View(kv, now_ms, writable=False), args)
        except CommandError as error:
            return error

    return run


def _get(kv: KV, now_ms: int, args: list[bytes]) -> object:
    """GET's read runner: cmd_strings.cmd_get's reply, read without a View."""
    record = kv.get(args[1])
    if record is None:
        return None
    stored, expire_at_ms = record
    if expire_at_ms != 0 and expire_at_ms <= now_ms:
        return None
    if stored[:1] != TAG_STRING:
        return CommandError(ERR_WRONGTYPE)
    return stored[1:]


def execute_write(kv: KV, now_ms: int, args: list[bytes], applied_index: int) -> object:
    """Apply write command `args` (name first, or a sweep_request) at the leader-stamped
    `now_ms`; calls kv.write(batch, applied_index) exactly once, even when the command
    fails or changes nothing, and returns the reply."""
    if len(args) == PLAIN_SET_WORDS and args[0].upper() == b"SET":
        kv.write([(args[1], TAG_STRING + args[2], 0)], applied_index)  # as cmd_set would
        return OK
    view = View(kv, now_ms, writable=True)
    try:
        reply = _run_write(view, args)
    except CommandError as error:
        view.pending.clear()
        reply = error
    kv.write(view.batch(), applied_index)
    return reply


def _run_write(view: View, args: list[bytes]) -> object:
    if args and args[0].upper() == SWEEP_COMMAND:
        return _apply_sweep(view, args[1:])
    spec = _resolve(args)
    if not spec.is_write:
        raise CommandError(ERR_NOT_A_WRITE.format(spec.name))
    return spec.fn(view, args)


def sweep_request(keys: list[bytes]) -> list[bytes]:
    """The write request that deletes `keys` if they are still expired when applied."""
    return [SWEEP_COMMAND, *keys]


def _apply_sweep(view: View, keys: list[bytes]) -> int:
    removed = 0
    for key in keys:
        record = view.kv.get(key)
        if record is not None and view.expired(record[1]):
            view.delete(key)
            removed += 1
    return removed


def expire_sweep(kv: KV, now_ms: int, limit: int, *, after: bytes | None = None,
                 budget: int | None = None) -> list[bytes]:
    """Up to `limit` keys expired at `now_ms`, in key order after `after` (None = from the
    start). `budget`, if given, caps how many keys are examined, so a sweep of a large
    store can proceed in slices (resume after the last key examined)."""
    found: list[bytes] = []
    cursor, examined = after, 0
    while len(found) < limit and (budget is None or examined < budget):
        chunk = SWEEP_CHUNK_KEYS if budget is None else min(SWEEP_CHUNK_KEYS, budget - examined)
        keys = walk_keys(kv, cursor, chunk)
        if not keys:
            break
        for key in keys:
            record = kv.get(key)
            if record is not None and record[1] and record[1] <= now_ms:
                found.append(key)
                if len(found) == limit:
                    break
        examined += len(keys)
        cursor = keys[-1]
    return found
