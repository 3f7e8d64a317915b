"""What shardstore's two clients share: errors, settings, the slot map, key routing, replies.

Strategy: the slot map lives in the client's `Failover` (`Failover.slots`, slot -> node
index), the one structure core/failover.py's `Request` consults to route a request and
updates on `-MOVED`. `SlotRouter` fills it from `CLUSTER SLOTS` (every slot's master), says
which slot a command's key is in (CRC16 with hash tags, native/crc16.py), and notices a map
gone stale: a request for a slot that another node than the mapped one answered (the mapped
master died, a follower forwarded the write) asks for a fresh `CLUSTER SLOTS` before the next
request, at most once per `REFRESH_MIN_S`. The clients in shardstore/client.py do the I/O.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from core.failover import Address, ErrorRules, Failover, GiveUp, RetryPolicy, parse_address
from core.failover_io import Raises
from core.resp_client import ReplyError
from native.crc16 import key_slot

__all__ = [
    "CrossSlotError",
    "Node",
    "Settings",
    "ShardstoreError",
    "ShardstoreUnavailable",
    "SlotRouter",
    "hash_pairs",
    "hset_args",
    "is_ok",
    "mset_args",
    "scan_args",
    "scan_page",
    "set_args",
    "slot_of",
    "usage_error",
]

DEFAULT_TIMEOUT_S: Final = 5.0  # one attempt on one node
DEFAULT_DEADLINE_S: Final = 30.0  # one call, over every retry (TRYAGAIN, failover)
PAUSE_INITIAL_S: Final = 0.05  # between rounds: an election takes a few hundred ms
PAUSE_MAX_S: Final = 1.0
NODE_BACKOFF_INITIAL_S: Final = 0.5
NODE_BACKOFF_MAX_S: Final = 5.0
REFRESH_MIN_S: Final = 1.0  # a stale map is fetched again at most this often
SLOT_COUNT: Final = 16384
LOG_LABEL: Final = "shardstore node"
CODE_CROSSSLOT: Final = "CROSSSLOT"
CODE_CLUSTERDOWN: Final = "CLUSTERDOWN"
ERR_NO_NODE: Final = "no shardstore node given"
ERR_UNAVAILABLE: Final = "no shardstore node answered within {:g} s ({})"
ERR_BAD_SLOTS: Final = "CLUSTER SLOTS reply not understood: {!r}"
ERR_SET_TWICE: Final = "{} and {} exclude each other"
# Commands that carry no key: sent to any node. Every other command's key is its argument 1.
KEYLESS: Final = frozenset({
    "PING", "ECHO", "DBSIZE", "FLUSHALL", "SCAN", "INFO", "CONFIG", "COMMAND", "HELLO", "AUTH",
    "CLIENT", "SELECT", "WAIT", "CLUSTER", "READONLY", "READWRITE", "ASKING", "QUIT", "TIME",
})

Node = Address | str


class ShardstoreError(Exception):
    """The cluster refused the request; the message is its error reply, `code` its first
    word (`ERR`, `WRONGTYPE`, ...)."""

    def __init__(self, message: str, code: str = "ERR") -> None:
        super().__init__(message)
        self.code = code


class CrossSlotError(ShardstoreError):
    """The keys of one multi-key command lie in several slots (use a `{hash tag}`)."""


class ShardstoreUnavailable(ShardstoreError):
    """No node answered within the deadline; `errors` maps each node that failed
    ("host:port") to its last failure."""

    def __init__(self, message: str, errors: dict[str, BaseException] | None = None) -> None:
        super().__init__(message, "UNAVAILABLE")
        self.errors = dict(errors or {})


def usage_error(error: ReplyError) -> ShardstoreError:
    """The caller's error for an error reply that no other node would answer otherwise."""
    kind = CrossSlotError if error.code == CODE_CROSSSLOT else ShardstoreError
    return kind(str(error), error.code)


class Settings:
    """The seed nodes, credentials and retry limits both clients are built from."""

    def __init__(self, nodes: Sequence[Node], password: str | None, timeout_s: float,
                 deadline_s: float, rng: random.Random | None) -> None:
        if not nodes:
            raise ValueError(ERR_NO_NODE)
        self.nodes = [parse_address(n) if isinstance(n, str) else (n[0], int(n[1]))
                      for n in nodes]
        self.password = password
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self.policy = RetryPolicy(deadline_s=deadline_s, pause_initial_s=PAUSE_INITIAL_S,
                                  pause_max_s=PAUSE_MAX_S,
                                  node_backoff_initial_s=NODE_BACKOFF_INITIAL_S,
                                  node_backoff_max_s=NODE_BACKOFF_MAX_S)
        self.rules = ErrorRules(not_now_codes=ErrorRules().not_now_codes | {CODE_CLUSTERDOWN})
        self.rng = rng or random.Random()
        self.raises = Raises(usage=usage_error, unavailable=self.unavailable)

    def failover(self) -> Failover[Any]:
        """A fresh failover state over the seed nodes."""
        return Failover(self.nodes, self.rng, policy=self.policy, rules=self.rules,
                        label=LOG_LABEL)

    def unavailable(self, give_up: GiveUp) -> ShardstoreUnavailable:
        return ShardstoreUnavailable(ERR_UNAVAILABLE.format(self.deadline_s, give_up.detail),
                                     give_up.errors)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _key_bytes(key: object) -> bytes:
    if isinstance(key, bytes):
        return key
    return str(key).encode()


def slot_of(args: Sequence[object]) -> int | None:
    """The slot of a command's key (argument 1), or None for a keyless command."""
    if len(args) < 2 or _text(args[0]).upper() in KEYLESS:
        return None
    return key_slot(_key_bytes(args[1]))


class SlotRouter:
    """The slot map of one client, kept in its `Failover` (see the module header)."""

    def __init__(self, failover: Failover[Any], clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.failover = failover
        self.clock = clock
        self.masters: list[Address] = []  # each master's address, in CLUSTER SLOTS order
        self.stale = True  # fetch CLUSTER SLOTS before the next key command
        self._loaded_at = float("-inf")

    def wants_refresh(self) -> bool:
        """True when the map should be fetched before the next request."""
        return self.stale and self.clock() - self._loaded_at >= REFRESH_MIN_S

    def load(self, reply: object) -> None:
        """Take a `CLUSTER SLOTS` reply as the map: each slot to its master."""
        if not isinstance(reply, list):
            raise ShardstoreError(ERR_BAD_SLOTS.format(reply))
        slots: dict[int, int] = {}
        masters: list[Address] = []
        for entry in reply:
            try:
                first, last, master = int(entry[0]), int(entry[1]), entry[2]
                address = (_text(master[0]), int(master[1]))
            except (TypeError, ValueError, IndexError):
                raise ShardstoreError(ERR_BAD_SLOTS.format(entry)) from None
            index = self.failover.index_of(address)
            if address not in masters:
                masters.append(address)
            slots.update(dict.fromkeys(range(first, last + 1), index))
        self.failover.slots.clear()
        self.failover.slots.update(slots)
        self.masters = masters
        self.stale = False
        self._loaded_at = self.clock()

    def settled(self, slot: int | None) -> None:
        """After a request for `slot` was answered: if another node than the mapped one
        answered, the map is stale."""
        if slot is None:
            return
        if self.failover.slots.get(slot) != self.failover.preferred:
            self.stale = True

    def failed(self) -> None:
        """After a request gave up: fetch the map again before the next."""
        self.stale = True


def is_ok(reply: object) -> bool:
    """True for a `+OK` reply, False for nil (a SET NX/XX that did not happen)."""
    return reply is not None and _text(reply) == "OK"


def set_args(key: object, value: object, ex: int | None, px: int | None, nx: bool,
             xx: bool) -> tuple[object, ...]:
    """The words of `SET key value [EX s | PX ms] [NX | XX]`."""
    if ex is not None and px is not None:
        raise ValueError(ERR_SET_TWICE.format("ex", "px"))
    if nx and xx:
        raise ValueError(ERR_SET_TWICE.format("nx", "xx"))
    words: list[object] = ["SET", key, value]
    if ex is not None:
        words += ["EX", ex]
    if px is not None:
        words += ["PX", px]
    if nx:
        words.append("NX")
    if xx:
        words.append("XX")
    return tuple(words)


def mset_args(mapping: Mapping[Any, Any]) -> tuple[object, ...]:
    """The words of `MSET k v [k v ...]`."""
    words: list[object] = ["MSET"]
    for key, value in mapping.items():
        words += [key, value]
    return tuple(words)


def hset_args(key: object, mapping: Mapping[Any, Any]) -> tuple[object, ...]:
    """The words of `HSET key field value [field value ...]`."""
    words: list[object] = ["HSET", key]
    for field, value in mapping.items():
        words += [field, value]
    return tuple(words)


def hash_pairs(reply: object) -> dict[bytes, bytes]:
    """HGETALL's reply (a flat list in RESP2, a map in RESP3) as a dict."""
    if isinstance(reply, dict):
        return dict(reply)
    assert isinstance(reply, list)
    return dict(zip(reply[::2], reply[1::2], strict=True))


def scan_args(cursor: int, match: str | None, count: int | None,
              type_: str | None) -> tuple[object, ...]:
    """The words of `SCAN cursor [MATCH pattern] [COUNT n] [TYPE type]`."""
    words: list[object] = ["SCAN", cursor]
    for name, value in (("MATCH", match), ("COUNT", count), ("TYPE", type_)):
        if value is not None:
            words += [name, value]
    return tuple(words)


def scan_page(reply: object) -> tuple[int, list[bytes]]:
    """SCAN's reply as (next cursor, keys)."""
    assert isinstance(reply, list) and len(reply) == 2
    cursor, keys = reply
    return int(cursor), list(keys)
