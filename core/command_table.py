"""A RESP daemon's command table as data: one `Command` row per command and subcommand.

A row says everything clients and the dispatcher need: arity (Redis's convention: N exactly
N words with the name, -N at least N), flags in Redis's words, key specs in Redis 7's shape
(where the search for keys begins, how the keys are found from there), subcommand rows, ACL
categories, tips and the one-line summary, `since` and `group` that COMMAND DOCS shows.

From the key specs come, as Redis derives them: the legacy (first key, last key, step) that
COMMAND reports and cluster clients route by, the `movablekeys` flag when no fixed range can
say where the keys are, `get_keys` (COMMAND GETKEYS) and `request_slot` (the Redis Cluster
slot of a request's keys, CRC16 from native.crc16). From the flags come the implicit
ACL categories. Rows are checked when built: an unknown flag or category is a ValueError,
so a typo in a daemon's table fails at start, not in a client.

`CommandTable` holds the rows by name and resolves a request to its row (container, then
subcommand); the dispatcher in core.resp_server checks arity once, here, for every command.
The reply shapes of COMMAND live in core.command_info.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from core.stats import LatencyHistogram
from native.crc16 import key_slot

# Command flags in the order Redis replies with them (COMMAND INFO), movablekeys last.
FLAG_ORDER = (
    "write", "readonly", "denyoom", "module", "admin", "pubsub", "noscript", "blocking",
    "loading", "stale", "skip_monitor", "skip_slowlog", "asking", "fast", "no_auth",
    "may_replicate", "sentinel", "only_sentinel", "no_mandatory_keys", "protected",
    "module_getkeys", "module_no_cluster", "no_multi", "allow_busy", "movablekeys",
)
MOVABLE_KEYS = "movablekeys"
NO_AUTH = "no_auth"
# Older spellings a row may use, and the word replies use.
FLAG_ALIASES = {"noauth": NO_AUTH}
# ACL categories in Redis's order (replies list them in this order).
ACL_ORDER = (
    "keyspace", "read", "write", "set", "sortedset", "list", "hash", "string", "bitmap",
    "hyperloglog", "geo", "stream", "pubsub", "admin", "fast", "slow", "blocking",
    "dangerous", "connection", "transaction", "scripting",
)
# Categories a flag implies (Redis's setImplicitACLCategories); no "fast" implies "slow".
IMPLICIT_ACL = {
    "write": ("write",),
    "readonly": ("read",),
    "admin": ("admin", "dangerous"),
    "pubsub": ("pubsub",),
    "fast": ("fast",),
    "blocking": ("blocking",),
}
KEY_SPEC_FLAGS = (
    "RO", "RW", "OW", "RM", "access", "update", "insert", "delete", "not_key", "incomplete",
    "variable_flags",
)
SUBCOMMAND_SEPARATOR = "|"
ERR_CROSSSLOT = "CROSSSLOT Keys in request don't hash to the same slot"
# max_args of a row with a negative arity and no max_arity.
UNBOUNDED_ARGS = 1 << 62

Handler = Callable[[Any, list[bytes]], Any]


# -- key specs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BeginIndex:
    """The key search begins at argument `index` (the command name is argument 0)."""

    index: int


@dataclass(frozen=True)
class BeginKeyword:
    """The key search begins after `keyword`, looked for from argument `startfrom` on
    (a negative `startfrom` counts from the end and searches backwards)."""

    keyword: str
    startfrom: int


@dataclass(frozen=True)
class FindRange:
    """Keys from the begin position to `lastkey` (relative to it; -1 is the last argument),
    every `keystep` arguments. `limit` > 1 with a negative lastkey: only 1/limit of the rest."""

    lastkey: int = 0
    keystep: int = 1
    limit: int = 0


@dataclass(frozen=True)
class FindKeynum:
    """The argument at begin + `keynumidx` says how many keys follow, the first at
    begin + `firstkey`, then every `keystep` arguments."""

    keynumidx: int
    firstkey: int
    keystep: int = 1


@dataclass(frozen=True)
class KeySpec:
    """Where one group of a command's keys sits, in Redis 7's terms, and how it is used."""

    begin: BeginIndex | BeginKeyword
    find: FindRange | FindKeynum = FindRange()
    flags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [f for f in self.flags if f not in KEY_SPEC_FLAGS]
        if unknown:
            raise ValueError(f"unknown key spec flags {unknown}")

    @property
    def is_range(self) -> bool:
        """True for the one kind a (first, last, step) triple can describe."""
        return isinstance(self.begin, BeginIndex) and isinstance(self.find, FindRange)


def key_at(index: int, *flags: str) -> KeySpec:
    """One key at argument `index` (GET key: key_at(1, "RO", "access"))."""
    return KeySpec(BeginIndex(index), FindRange(0, 1, 0), flags)


def keys_from(index: int, *flags: str, lastkey: int = -1, step: int = 1) -> KeySpec:
    """Keys from argument `index` to the end (or `lastkey`), every `step` arguments."""
    return KeySpec(BeginIndex(index), FindRange(lastkey, step, 0), flags)


# -- rows --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One row of a command table: a command, or a subcommand of a container command.

    handler(session, args) gets every argument, the name first, and returns a reply value,
    or a coroutine when it must wait (idgen waiting out a clock step); None only for a
    container whose every call names a subcommand. The dispatcher has checked arity and
    authentication. batch: optional; answers k consecutive argument-less calls in one go,
    returning the k replies concatenated (or a coroutine giving them), so a pipeline of the
    same command (`redis-benchmark -P 16 NEXT`) costs one call instead of k.
    max_arity: the most words a call may have (PING: 2), beyond what Redis's arity says;
    min_args/max_args are the bounds the dispatcher checks.
    flags: Redis's words ("noauth" is read as "no_auth"). acl: categories beyond the
    ones the flags imply, without the "@". since/group: empty means the daemon's version
    and name in COMMAND DOCS. Subcommand rows are named by their own word ("GET"); replies
    name them "config|get".
    """

    name: str
    handler: Handler | None
    arity: int
    flags: frozenset[str] = frozenset()
    summary: str = ""
    batch: Callable[[Any, int], Any] | None = None
    key_specs: tuple[KeySpec, ...] = ()
    subcommands: tuple[Command, ...] = ()
    acl: tuple[str, ...] = ()
    tips: tuple[str, ...] = ()
    since: str = ""
    group: str = ""
    complexity: str = ""
    max_arity: int | None = None
    latency: LatencyHistogram = field(default_factory=LatencyHistogram, compare=False)
    # Derived from the fields above when the row is built.
    min_args: int = field(init=False, compare=False, default=0)
    max_args: int = field(init=False, compare=False, default=0)
    first_key: int = field(init=False, compare=False, default=0)
    last_key: int = field(init=False, compare=False, default=0)
    key_step: int = field(init=False, compare=False, default=0)
    reply_flags: tuple[str, ...] = field(init=False, compare=False, default=())
    acl_categories: tuple[str, ...] = field(init=False, compare=False, default=())
    no_auth: bool = field(init=False, compare=False, default=False)
    by_name: dict[bytes, Command] = field(init=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.handler is None and (not self.subcommands or self.arity > -2):
            raise ValueError(f"{self.name}: only a container whose calls always name a "
                             "subcommand (arity -2 or less) may have no handler")
        flags = frozenset(FLAG_ALIASES.get(f, f) for f in self.flags)
        unknown = sorted(flags - set(FLAG_ORDER))
        if unknown:
            raise ValueError(f"{self.name}: unknown flags {unknown}")
        first, last, step, movable = legacy_range(self.key_specs)
        if movable:
            flags |= {MOVABLE_KEYS}
        derived = {
            "flags": flags,
            "min_args": abs(self.arity),
            "max_args": self.arity if self.arity > 0 else self.max_arity or UNBOUNDED_ARGS,
            "first_key": first,
            "last_key": last,
            "key_step": step,
            "reply_flags": tuple(f for f in FLAG_ORDER if f in flags),
            "acl_categories": _acl_categories(self.name, flags, self.acl),
            "no_auth": NO_AUTH in flags,
            "by_name": {sub.name.upper().encode(): sub for sub in self.subcommands},
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)


def legacy_range(specs: Iterable[KeySpec]) -> tuple[int, int, int, bool]:
    """(first, last, step, movablekeys) as Redis derives them from key specs.

    One index+range spec gives its own triple; several give one range when they are
    contiguous steps of one. A spec no triple can describe (a keyword begin, a key count)
    or a gap sets movablekeys: clients must then ask COMMAND GETKEYS.
    """
    specs = tuple(specs)
    if not specs:
        return 0, 0, 0, False
    if len(specs) == 1 and specs[0].is_range:
        begin, find = specs[0].begin, specs[0].find
        assert isinstance(begin, BeginIndex) and isinstance(find, FindRange)
        last = find.lastkey if find.lastkey < 0 else begin.index + find.lastkey
        return begin.index, last, find.keystep, False
    first, last, previous, movable = None, 0, 0, False
    for spec in specs:
        begin, find = spec.begin, spec.find
        if not isinstance(begin, BeginIndex) or not isinstance(find, FindRange):
            movable = True
            continue
        if find.keystep != 1 or (previous and previous != begin.index - 1):
            movable = True
            continue
        first = begin.index if first is None else min(first, begin.index)
        absolute = find.lastkey if find.lastkey < 0 else begin.index + find.lastkey
        last = _unsigned_max(last, absolute)
        previous = last
    if first is None:
        return 0, 0, 0, True
    return first, last, 1, movable


def _unsigned_max(a: int, b: int) -> int:
    # Redis compares last keys as unsigned 32-bit values: a negative one (counted from the
    # end) beats any positive one, and -1 beats -2.
    return max(a, b, key=lambda v: v % (1 << 32))


def _acl_categories(name: str, flags: frozenset[str], explicit: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [c for c in explicit if c not in ACL_ORDER]
    if unknown:
        raise ValueError(f"{name}: unknown ACL categories {unknown}")
    chosen = set(explicit)
    for flag in flags:
        chosen.update(IMPLICIT_ACL.get(flag, ()))
    if "fast" not in flags:
        chosen.add("slow")
    return tuple(c for c in ACL_ORDER if c in chosen)


# -- keys of a request -------------------------------------------------------------------


class KeysError(ValueError):
    """The request's arguments do not hold the keys its key specs promise."""


class CrossSlotError(ValueError):
    """The request's keys hash to more than one cluster slot (Redis's CROSSSLOT)."""


def get_keys(command: Command, args: list[bytes]) -> list[bytes]:
    """The keys of request `args` (name first) by `command`'s key specs, in spec order.

    Raises KeysError when a spec points past the arguments or at a bad key count.
    """
    return [key for key, _ in keys_and_specs(command, args)]


def request_slot(command: Command, args: list[bytes]) -> int | None:
    """The Redis Cluster slot every key of the request hashes to (hash tags honoured), or
    None when it names no key. Raises CrossSlotError when its keys span slots, KeysError as
    get_keys does. A sharded daemon routes (or answers MOVED) by it."""
    slots = {key_slot(key) for key in get_keys(command, args)}
    if len(slots) > 1:
        raise CrossSlotError(ERR_CROSSSLOT)
    return slots.pop() if slots else None


def keys_and_specs(command: Command, args: list[bytes]) -> list[tuple[bytes, KeySpec]]:
    """Each key of request `args` with the key spec that found it (COMMAND GETKEYSANDFLAGS
    shows the spec's flags). Raises KeysError as get_keys does."""
    keys: list[tuple[bytes, KeySpec]] = []
    for spec in command.key_specs:
        begin = _begin_position(spec.begin, args)
        if begin is None:
            continue
        first, last, step = _key_span(spec.find, begin, args)
        if first > last:
            continue
        if last >= len(args) or first < 1:
            if "incomplete" in spec.flags:
                continue
            raise KeysError(f"key spec of {command.name} points past the arguments")
        keys.extend((key, spec) for key in args[first : last + 1 : step])
    return keys


def _begin_position(begin: BeginIndex | BeginKeyword, args: list[bytes]) -> int | None:
    if isinstance(begin, BeginIndex):
        return begin.index
    keyword = begin.keyword.upper().encode()
    start = begin.startfrom if begin.startfrom >= 0 else len(args) + begin.startfrom
    order = range(start, len(args)) if begin.startfrom >= 0 else range(start, 0, -1)
    for index in order:
        if 0 < index < len(args) and args[index].upper() == keyword:
            return index + 1
    return None


def _key_span(find: FindRange | FindKeynum, begin: int, args: list[bytes]) -> tuple[int, int, int]:
    if isinstance(find, FindRange):
        if find.lastkey >= 0:
            last = begin + find.lastkey
        elif find.limit > 1:
            last = begin + (len(args) - 1 - begin) // find.limit + find.lastkey + 1
        else:
            last = len(args) + find.lastkey
        return begin, last, find.keystep
    at = begin + find.keynumidx
    if at >= len(args) or not args[at].isdigit():
        raise KeysError("the key count is missing or not a number")
    count = int(args[at])
    first = begin + find.firstkey
    return first, first + (count - 1) * find.keystep, find.keystep


# -- the table ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Resolved:
    """What a request names: its row, and the name errors and replies use ('config|get')."""

    command: Command
    full_name: str


class CommandTable:
    """A daemon's rows by upper-case name; later rows replace earlier ones of the same name."""

    def __init__(self, rows: Iterable[Command]) -> None:
        self.rows: dict[bytes, Command] = {}
        for row in rows:
            self.rows[row.name.upper().encode()] = row

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Command]:
        return iter(self.rows.values())

    def get(self, name: bytes) -> Command | None:
        """The top-level row called `name` (any case), or None."""
        return self.rows.get(name) or self.rows.get(name.upper())

    def find(self, full_name: bytes) -> Resolved | None:
        """A row by its reply name, 'get' or 'config|get' (any case), or None."""
        parent, _, sub = full_name.partition(SUBCOMMAND_SEPARATOR.encode())
        command = self.get(parent)
        if command is None or not sub:
            return None if command is None else Resolved(command, command.name.lower())
        row = command.by_name.get(sub.upper())
        return None if row is None else Resolved(row, full_name_of(command, row))

    def walk(self) -> Iterator[Resolved]:
        """Every row, each container followed by its subcommands."""
        for command in self.rows.values():
            yield Resolved(command, command.name.lower())
            for sub in command.subcommands:
                yield Resolved(sub, full_name_of(command, sub))


def full_name_of(parent: Command, sub: Command) -> str:
    """A subcommand's name in replies and errors: 'config|get'."""
    return f"{parent.name}{SUBCOMMAND_SEPARATOR}{sub.name}".lower()
