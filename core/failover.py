"""Client-side failover, written once for every RESP daemon's client; no I/O, no clock.

Strategy (each client module's header points here rather than restating it):
- Nodes. A client holds a list of node addresses and a preferred node: the one that answered
  last, or the one a leader hint named. A request tries nodes in rounds: from the preferred
  node on, skipping nodes marked down; when every node is marked down, only the one whose
  mark ends first is probed.
- Outcomes. What one attempt's error means is decided by `ErrorRules.verdict`:
  - a connection failure, a timeout, a reply that breaks the protocol, a refused connection
    set-up, or an error code the daemon names as its own trouble: the node is marked down
    (for a backoff that doubles per failure, up to a cap; an answer clears it), its
    connection is dropped, and the next node is tried;
  - `-TRYAGAIN` or `-LOADING`: the node is up but cannot serve now; the next node is tried.
    If the reply ends with ` leader=HOST:PORT` (`leader_hint_suffix`, the format core's
    RESP-on-Raft service appends), that address is tried next, added to the list if new,
    and becomes the preferred node;
  - `-MOVED <slot> HOST:PORT`: the slot's node is remembered (`Failover.slots`, which a
    caller consults through `begin(slot=...)`) and the request goes there at once;
    `-ASK <slot> HOST:PORT`: one attempt goes there, preceded by `ASKING`, and the slot map is
    left alone. At most `RetryPolicy.max_redirects` redirects per request are followed;
  - any other `-ERR ...`: the caller's mistake. The node answered, so it stays preferred;
    no other node is tried and the client raises its usage error.
- Rounds. After a round without an answer the request pauses (exponential backoff with
  jitter from an injected random source) and goes round again until its deadline; then it
  gives up with one error listing each node's last failure. A policy without a deadline
  makes one round and gives up at once (idgen: a caller with prefetch retries on its own).
- Attempts. The deadline bounds the whole request, not only the pauses between attempts:
  each attempt (connect, AUTH, ASKING, the command together) gets what the request has left,
  at least `RetryPolicy.min_attempt_s` (`Request.attempt_seconds`), on top of each
  connection's own timeout. So a request whose nodes all hang (stopped, or cut off by a
  partition) ends within its deadline plus one minimum attempt, instead of waiting out the
  connection timeout per node and per step. core/failover_io.py applies the bound through
  core/attempt_deadline.py.

Time enters only as the `now` arguments (monotonic seconds) and randomness as the `rng`
given to `Failover`; connections are opaque values with a `closed` property that the core
keeps one slot of per node. The I/O loop every client runs around `Request`:

    request = failover.begin(now)
    while True:
        step = request.next(now)
        GiveUp -> raise the client's unavailable error from step.errors
        Pause  -> sleep step.seconds
        Attempt -> within request.attempt_seconds(now): connect if failover.live(step.index)
                   is None (keep it), send ASKING first if step.asking, send the command;
                   then check the reply;
                   request.answered(step) and return, or on an attempt error
                   failure = request.failed(step, error, now): close failure.close;
                   USAGE -> raise the client's usage error
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final, Generic, Protocol, TypeVar

from core.resp_client import ProtocolError, ReplyError

__all__ = [
    "ATTEMPT_ERRORS",
    "Attempt",
    "ErrorRules",
    "Failover",
    "Failure",
    "GiveUp",
    "Link",
    "MIN_ATTEMPT_S",
    "NodeState",
    "Pause",
    "RandomSource",
    "Refused",
    "Request",
    "RetryPolicy",
    "Verdict",
    "describe_errors",
    "leader_hint_suffix",
    "parse_address",
]

LEADER_HINT_PREFIX: Final = "leader="  # last word of a TRYAGAIN reply naming the leader
CODE_TRYAGAIN: Final = "TRYAGAIN"
CODE_LOADING: Final = "LOADING"
CODE_MOVED: Final = "MOVED"
CODE_ASK: Final = "ASK"
NOT_NOW_CODES: Final = frozenset({CODE_TRYAGAIN, CODE_LOADING})
MAX_REDIRECTS: Final = 5  # MOVED/ASK/leader hints followed within one request
DEFAULT_DEADLINE_S: Final = 30.0
PAUSE_INITIAL_S: Final = 0.05  # between rounds: doubles per round, jittered, capped
PAUSE_MAX_S: Final = 1.0
MIN_ATTEMPT_S: Final = 0.5  # an attempt begun near (or past) the deadline still gets this
NODE_BACKOFF_INITIAL_S: Final = 1.0  # a failed node is skipped this long, doubling per failure
NODE_BACKOFF_MAX_S: Final = 30.0
JITTER: Final = 0.5  # a pause is its base times a uniform factor in [1 - JITTER, 1]
ERR_BAD_ADDRESS: Final = "address must be HOST:PORT, not {!r}"

Address = tuple[str, int]


class Refused(Exception):
    """A node refused the connection set-up (an error reply to AUTH or HELLO): the node's
    failure, not the caller's mistake that the same reply to a request would be."""


# What ends one attempt on a node. Anything else (a bug, a cancellation) passes through the
# client's loop and leaves the failover state alone.
ATTEMPT_ERRORS: Final = (ReplyError, OSError, ProtocolError, Refused)


class Verdict(Enum):
    """What an attempt's error means (see the module header)."""

    USAGE = "usage"  # the caller's mistake: raise, no failover
    NODE_DOWN = "node down"  # mark the node down, drop its connection, next node
    NOT_NOW = "not now"  # the node cannot serve now: next node (or the hinted leader)
    MOVED = "moved"  # the slot lives elsewhere: remember it, go there
    ASK = "ask"  # one attempt elsewhere, preceded by ASKING


class RandomSource(Protocol):
    """What the core needs of a random generator (`random.Random` has it)."""

    def random(self) -> float: ...


class Link(Protocol):
    """What the core needs of a connection: whether it is still usable."""

    @property
    def closed(self) -> bool: ...


L = TypeVar("L", bound=Link)


def parse_address(text: str) -> Address:
    """`HOST:PORT` (IPv6 as `[::1]:PORT`) as (host, port); ValueError otherwise."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(ERR_BAD_ADDRESS.format(text))
    return host.removeprefix("[").removesuffix("]"), int(port_text)


def leader_hint_suffix(host: str, port: int) -> str:
    """The words a server appends to a TRYAGAIN reply to name the leader's client address."""
    shown = f"[{host}]" if ":" in host else host
    return f" {LEADER_HINT_PREFIX}{shown}:{port}"


def describe_errors(errors: dict[str, BaseException]) -> str:
    """`name: error; name: error`, in the order given."""
    return "; ".join(f"{name}: {error}" for name, error in errors.items())


@dataclass(frozen=True)
class ErrorRules:
    """How a daemon's error replies are read. `down_codes` and `down_prefixes` (of the whole
    message) name replies that are the node's trouble: it is marked down like an unreachable
    one. `not_now_codes` name replies after which another node may serve."""

    not_now_codes: frozenset[str] = NOT_NOW_CODES
    down_codes: frozenset[str] = frozenset()
    down_prefixes: tuple[str, ...] = ()

    def verdict(self, error: BaseException) -> tuple[Verdict, Address | None, int | None]:
        """(verdict, address to go to or None, slot or None) for one attempt error."""
        if not isinstance(error, ReplyError):
            return Verdict.NODE_DOWN, None, None
        code, words = error.code, error.message.split()
        if code in (CODE_MOVED, CODE_ASK) and len(words) == 3 and words[1].isdigit():
            try:
                address = parse_address(words[2])
            except ValueError:
                return Verdict.USAGE, None, None
            kind = Verdict.MOVED if code == CODE_MOVED else Verdict.ASK
            return kind, address, int(words[1])
        if code in self.not_now_codes:
            return Verdict.NOT_NOW, _leader_hint(words), None
        if code in self.down_codes or error.message.startswith(self.down_prefixes):
            return Verdict.NODE_DOWN, None, None
        return Verdict.USAGE, None, None


def _leader_hint(words: list[str]) -> Address | None:
    if len(words) < 2 or not words[-1].startswith(LEADER_HINT_PREFIX):
        return None
    try:
        return parse_address(words[-1].removeprefix(LEADER_HINT_PREFIX))
    except ValueError:
        return None


@dataclass(frozen=True)
class RetryPolicy:
    """Limits of one request. `deadline_s` None: one round, then give up (and each attempt
    is bounded by its connection's timeouts only)."""

    deadline_s: float | None = DEFAULT_DEADLINE_S
    pause_initial_s: float = PAUSE_INITIAL_S
    pause_max_s: float = PAUSE_MAX_S
    node_backoff_initial_s: float = NODE_BACKOFF_INITIAL_S
    node_backoff_max_s: float = NODE_BACKOFF_MAX_S
    max_redirects: int = MAX_REDIRECTS
    min_attempt_s: float = MIN_ATTEMPT_S

    def pause(self, round_: int, rng: RandomSource) -> float:
        """The pause after round `round_` (1, 2, ...): doubling, capped, jittered."""
        base = min(self.pause_max_s, self.pause_initial_s * 2 ** min(round_ - 1, 32))
        return base * (1 - JITTER * rng.random())


@dataclass
class NodeState:
    """One node and its health. Invariant: `backoff` is 0 exactly while it is not marked
    down by a failure since its last answer."""

    host: str
    port: int
    down_until: float = 0.0  # monotonic seconds; the node is skipped before then
    backoff: float = 0.0  # length of the last down period; 0 while healthy
    last_error: BaseException | None = None

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Attempt:
    """Try node `index` now (`asking`: send ASKING before the command)."""

    index: int
    asking: bool = False


@dataclass(frozen=True)
class Pause:
    """Wait `seconds`, then ask `Request.next` again."""

    seconds: float


@dataclass(frozen=True)
class GiveUp:
    """No node answered in time: `errors` maps each node that failed to its last failure."""

    errors: dict[str, BaseException]
    redirects: int = 0
    expired: bool = False  # the request's deadline passed (False: one round found nobody)

    @property
    def detail(self) -> str:
        return describe_errors(self.errors)


@dataclass(frozen=True)
class Failure(Generic[L]):
    """What a failed attempt means, and the connection to close (None: keep it / none)."""

    verdict: Verdict
    close: L | None = None


class Failover(Generic[L]):
    """The failover state one client keeps across requests: nodes, their health, the
    preferred node, the slot map (MOVED) and one connection slot per node."""

    def __init__(
        self,
        addresses: Sequence[Address],
        rng: RandomSource,
        *,
        policy: RetryPolicy | None = None,
        rules: ErrorRules | None = None,
        log: logging.Logger | None = None,
        label: str = "node",
    ) -> None:
        if not addresses:
            raise ValueError("at least one node is needed")
        self.nodes = [NodeState(host, port) for host, port in addresses]
        self.rng = rng
        self.policy = policy or RetryPolicy()
        self.rules = rules or ErrorRules()
        self.log = log or logging.getLogger("core.failover")
        self.label = label  # "idgen server": how log lines name a node
        self.preferred = 0
        self.slots: dict[int, int] = {}  # slot -> node index, from MOVED replies
        self._conns: list[L | None] = [None] * len(self.nodes)

    def begin(self, now: float, slot: int | None = None) -> Request[L]:
        """A new request starting at `now`; `slot` routes it to the slot's known node."""
        return Request(self, now, slot)

    def index_of(self, address: Address) -> int:
        """The index of `address`, appended to the list if it is new."""
        for index, node in enumerate(self.nodes):
            if (node.host, node.port) == address:
                return index
        self.nodes.append(NodeState(*address))
        self._conns.append(None)
        return len(self.nodes) - 1

    def order(self, now: float) -> list[int]:
        """Nodes to try, from the preferred one on, skipping those marked down; if all are
        down, only the one whose mark ends first (a probe)."""
        count = len(self.nodes)
        rotation = [(self.preferred + i) % count for i in range(count)]
        ready = [i for i in rotation if self.nodes[i].down_until <= now]
        if ready:
            return ready
        return [min(rotation, key=lambda i: self.nodes[i].down_until)]

    def answered(self, index: int) -> None:
        """Node `index` answered: it becomes the preferred one and its mark is cleared."""
        self.preferred = index
        node = self.nodes[index]
        if node.backoff:
            self.log.info("%s %s is answering again", self.label, node.name)
            node.backoff = 0.0
            node.down_until = 0.0

    def mark_down(self, index: int, error: BaseException, now: float) -> L | None:
        """Node `index` failed with `error`: skip it for a backoff; its connection (or None)
        comes back out of its slot, for the caller to close."""
        node = self.nodes[index]
        was_up = not node.backoff
        policy = self.policy
        node.backoff = min(max(node.backoff * 2, policy.node_backoff_initial_s),
                           policy.node_backoff_max_s)
        node.down_until = now + node.backoff
        node.last_error = error
        self.log.log(logging.WARNING if was_up else logging.DEBUG,
                     "%s %s marked down for %.0f s: %s", self.label, node.name, node.backoff,
                     error)
        return self.detach(index)

    def retry_in(self, now: float) -> float:
        """Seconds until the first marked-down node may be tried again (0: one is up)."""
        return max(0.0, min(node.down_until for node in self.nodes) - now)

    def errors(self) -> dict[str, BaseException]:
        """Each node's last failure, for nodes that have one, in list order."""
        return {n.name: n.last_error for n in self.nodes if n.last_error is not None}

    def address(self, index: int) -> Address:
        node = self.nodes[index]
        return node.host, node.port

    def live(self, index: int) -> L | None:
        """The open connection to node `index`, or None: connect first."""
        conn = self._conns[index]
        return None if conn is None or conn.closed else conn

    def keep(self, index: int, conn: L) -> None:
        """Hold a new connection to node `index` for the next requests."""
        self._conns[index] = conn

    def detach(self, index: int) -> L | None:
        """Take node `index`'s connection (or None) out of its slot, for the caller to close."""
        conn, self._conns[index] = self._conns[index], None
        return conn

    def detach_all(self) -> list[L]:
        """Every held connection, out of its slot (closing a client)."""
        return [conn for i in range(len(self._conns)) if (conn := self.detach(i)) is not None]


class Request(Generic[L]):
    """One request's way through the nodes: rounds, redirects, pauses, its deadline.
    Feed it each attempt's outcome; it updates the `Failover` it came from."""

    def __init__(self, failover: Failover[L], now: float, slot: int | None = None) -> None:
        self.failover = failover
        deadline_s = failover.policy.deadline_s
        self.deadline = None if deadline_s is None else now + deadline_s
        self.slot = slot
        self.rounds = 0  # rounds begun
        self.attempts = 0  # attempts handed out
        self.redirects = 0
        self._queue: list[int] | None = None  # None: begin a round at the next `next`
        self._tried: set[int] = set()  # nodes tried in the current round
        self._redirect: Attempt | None = None  # where a hint or redirect sends us next

    def next(self, now: float) -> Attempt | Pause | GiveUp:
        """What to do now: try a node, pause, or give up."""
        if self._redirect is not None:
            step, self._redirect = self._redirect, None
            return self._hand_out(step)
        if self.attempts and self.deadline is not None and now >= self.deadline:
            return self._give_up(now)
        if self._queue is None:
            self._begin_round(now)
        assert self._queue is not None
        while self._queue:
            index = self._queue.pop(0)
            if index not in self._tried:
                return self._hand_out(Attempt(index))
        if self.deadline is None or now >= self.deadline:
            return self._give_up(now)
        self._queue = None
        pause = self.failover.policy.pause(self.rounds, self.failover.rng)
        return Pause(min(pause, self.deadline - now))

    def attempt_seconds(self, now: float) -> float | None:
        """How long an attempt begun at `now` may take in total: what the request has left,
        at least `min_attempt_s`; None without a deadline (connection timeouts only)."""
        if self.deadline is None:
            return None
        return max(self.failover.policy.min_attempt_s, self.deadline - now)

    def answered(self, attempt: Attempt) -> None:
        """The attempt's node answered and its reply passed the caller's check."""
        self.failover.answered(attempt.index)

    def failed(self, attempt: Attempt, error: BaseException, now: float) -> Failure[L]:
        """The attempt ended with `error`, one of ATTEMPT_ERRORS: what that means, and the
        connection to close if the node is marked down."""
        failover = self.failover
        verdict, address, slot = failover.rules.verdict(error)
        index = attempt.index
        if verdict is Verdict.USAGE:
            failover.answered(index)
            return Failure(verdict)
        if verdict is Verdict.NODE_DOWN:
            return Failure(verdict, failover.mark_down(index, error, now))
        failover.nodes[index].last_error = error
        if address is None:
            return Failure(verdict)
        target = failover.index_of(address)
        if verdict is Verdict.MOVED and slot is not None:
            failover.slots[slot] = target
        if verdict is Verdict.NOT_NOW:
            failover.preferred = target
            if target not in self._tried:
                self._redirect = Attempt(target)
        elif self.redirects < failover.policy.max_redirects:
            self.redirects += 1
            self._redirect = Attempt(target, asking=verdict is Verdict.ASK)
        return Failure(verdict)

    def _begin_round(self, now: float) -> None:
        self.rounds += 1
        self._tried.clear()
        order = self.failover.order(now)
        routed = self.failover.slots.get(self.slot) if self.slot is not None else None
        if routed is not None:
            order = [routed, *(i for i in order if i != routed)]
        self._queue = order

    def _hand_out(self, step: Attempt) -> Attempt:
        self.attempts += 1
        self._tried.add(step.index)
        return step

    def _give_up(self, now: float) -> GiveUp:
        expired = self.deadline is not None and now >= self.deadline
        return GiveUp(self.failover.errors(), self.redirects, expired)
