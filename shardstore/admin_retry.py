"""`shardstore admin` rides out transient errors: a client that retries one idempotent step.

Strategy: the moves run inside the cluster (the configuration group drives them), so an
admin command that loses its node or meets a group without a leader has nothing to undo:
it only has to ask again. `RetryingClient.execute_command` sends a command to the node it
holds; on a transient error (connection refused or reset, a timeout, `-TRYAGAIN`,
`-CLUSTERDOWN`, `-LOADING`, `-UNKNOWN` outcome) it drops that node, picks the next one of
`--node` that answers a PING, and tries again with exponential backoff until `timeout_s`
has passed since the last success; then `AdminDeadline`. Any other error (bad arguments, a
refused move) is raised at once. While it waits it says so on the progress stream
("waiting for a leader: <error>"). A step whose outcome may be lost with its reply must be
made idempotent by its caller: `begin_move`, `cancel_once`, `add_once` and `remove_once`
look for what an earlier try may have done before doing it again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import redis
from redis.backoff import NoBackoff
from redis.exceptions import ClusterDownError, TryAgainError
from redis.retry import Retry

from core import client_cli
from shardstore.admin_check import field_of
from shardstore.keysets import format_slots

__all__ = ["DEFAULT_TIMEOUT_S", "AdminDeadline", "RetryingClient", "add_once", "begin_move",
           "cancel_once",
           "is_transient", "no_retry", "remove_once"]

DEFAULT_TIMEOUT_S = 120.0  # how long admin waits out transient errors before giving up
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 2.0
SOCKET_TIMEOUT_S = 30.0  # a command's reply (a configuration write waits for its leader)
PROBE_S = 1.0  # a PING's reply when (re)choosing a node
TRANSIENT_PREFIXES = ("TRYAGAIN", "CLUSTERDOWN", "LOADING", "UNKNOWN", "MASTERDOWN")
ERR_DEADLINE = ("gave up after {:g} s of transient errors (the moves already begun go on "
                "inside the cluster; `shardstore admin check` shows them): {}")
WAITING = "waiting for a leader: {} (node {}, {:.0f} s left)"
RESUMED = "the cluster answers again after {:.1f} s\n"


class AdminDeadline(Exception):
    """Transient errors lasted longer than the deadline; the message says the last one."""


def no_retry() -> Retry:
    """redis-py's retry policy that does not retry: RetryingClient retries, over nodes."""
    return Retry(NoBackoff(), 0)


def is_transient(exc: BaseException) -> bool:
    """True for an error that asking again (maybe another node) may clear."""
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, ConnectionError,
                        TimeoutError, TryAgainError, ClusterDownError)):
        return True  # BusyLoadingError (-LOADING) is a ConnectionError
    if isinstance(exc, redis.ResponseError):
        return error_code(exc) in TRANSIENT_PREFIXES
    return False


def error_code(exc: BaseException) -> str:
    """The error reply's first word (redis-py keeps it apart for the codes it knows)."""
    code = getattr(exc, "status_code", None)
    return str(code) if code else (str(exc).split(" ", 1)[0].upper() if str(exc) else "")


def describe(exc: BaseException) -> str:
    """One line naming `exc` as its reply read (the code redis-py strips put back)."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    code = getattr(exc, "status_code", None)
    return f"{code} {text}" if code and not text.startswith(str(code)) else text


class RetryingClient:
    """execute_command over the nodes `nodes` (HOST:PORT), retried as the header says."""

    def __init__(self, nodes: Sequence[str], password: str | None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, stream: TextIO | None = None,
                 connect: Callable[[str], redis.Redis] | None = None) -> None:
        if not nodes:
            raise ValueError("no node to ask")
        self.nodes = list(nodes)
        self.password = password
        self.timeout_s = timeout_s
        self.stream = stream
        self._connect = connect or self._default_connect
        self._turn = 0
        self._client: redis.Redis | None = None
        self.retries = 0  # how many transient errors were ridden out (for tests)

    def _default_connect(self, node: str) -> redis.Redis:
        host, _, port = node.rpartition(":")
        return redis.Redis(host=host or "127.0.0.1", port=int(port), password=self.password,
                           socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=PROBE_S,
                           retry=no_retry())

    @property
    def node(self) -> str:
        """The node asked now."""
        return self.nodes[self._turn % len(self.nodes)]

    @property
    def connection_pool(self) -> Any:
        """The pool of the node asked now (admin check copies its password from it)."""
        return self._current().connection_pool

    def _current(self) -> redis.Redis:
        if self._client is None:
            self._client = self._connect(self.node)
        return self._client

    def _drop(self) -> None:
        """Forget the node asked now and move on to the next of the list."""
        if self._client is not None:
            with contextlib.suppress(redis.RedisError):  # a broken link closes as it can
                self._client.close()
        self._client = None
        self._turn += 1

    def execute_command(self, *args: Any) -> Any:
        """The reply of `args` from some node; see the module header."""
        return self.step(lambda client: client.execute_command(*args))

    def step(self, action: Callable[[redis.Redis], Any]) -> Any:
        """`action(client)` retried (it must be idempotent) until it returns, raises a
        permanent error, or transient errors last timeout_s (AdminDeadline)."""
        started = time.monotonic()
        deadline = started + self.timeout_s
        pause = BACKOFF_FIRST_S
        waited = False
        while True:
            try:
                result = action(self._current())
            except (redis.RedisError, OSError) as exc:
                if not is_transient(exc):
                    raise
                self._wait(exc, deadline, pause)
                waited = True
                pause = min(BACKOFF_MAX_S, pause * 2)
                continue
            if waited:
                self._say(RESUMED.format(time.monotonic() - started), final=True)
            return result

    def _wait(self, exc: BaseException, deadline: float, pause: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AdminDeadline(ERR_DEADLINE.format(self.timeout_s, describe(exc))) from None
        self.retries += 1
        self._say(WAITING.format(describe(exc), self.node, left))
        self._drop()
        time.sleep(min(pause, left))
        self._choose(deadline)

    def _choose(self, deadline: float) -> None:
        """Move to the first node, from the next one on, that answers a PING (none within
        one probe round: stay on the next one, the step's retry will tell)."""
        for _ in range(len(self.nodes)):
            host, _, port = self.node.rpartition(":")
            if time.monotonic() >= deadline or client_cli.ping((host, int(port)), PROBE_S):
                return
            self._turn += 1

    def _say(self, text: str, final: bool = False) -> None:
        out = self.stream
        if out is None:
            return
        if out.isatty():
            out.write("\r" + text.rstrip("\n") + ("\n" if final else ""))
        else:
            out.write(text if text.endswith("\n") else text + "\n")
        out.flush()

    def close(self) -> None:
        """Close the connection held now."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> RetryingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def begin_move(client: Any, source: int, target: int, slots: list[int]) -> int | None:
    """Begin the move of `slots` from shard `source` to `target`, idempotently: the id of
    the move of exactly these slots under way (begun by an earlier try whose reply was
    lost), else None when the target owns them all already, else a new move's id."""
    keys = f"slots {format_slots(slots)}".encode()

    def attempt(node: redis.Redis) -> int | None:
        for move in node.execute_command("SHARDSTORE.MOVES"):
            state = field_of(move, "state")
            if (field_of(move, "keys") in (keys, keys.decode())
                    and int(field_of(move, "source")) == source
                    and int(field_of(move, "target")) == target
                    and state not in (b"done", "done", b"cancel", "cancel")):
                return int(field_of(move, "id"))
        owned = {s for first, last, sid in node.execute_command("SHARDSTORE.SLOTS")
                 if int(sid) == target for s in range(int(first), int(last) + 1)}
        if set(slots) <= owned:
            return None
        return int(node.execute_command("SHARDSTORE.MOVE", source, target, "SLOTS",
                                        format_slots(slots)))

    return _run(client, attempt)


def _run(client: Any, attempt: Callable[[redis.Redis], Any]) -> Any:
    if isinstance(client, RetryingClient):
        return client.step(attempt)
    return attempt(client)


def cancel_once(client: Any, move_id: int) -> None:
    """SHARDSTORE.MOVE CANCEL `move_id`, idempotently: not sent again when an earlier try
    (whose reply was lost) already turned the move to rolling back or rolled it back."""
    def attempt(node: redis.Redis) -> None:
        for move in node.execute_command("SHARDSTORE.MOVES"):
            if int(field_of(move, "id")) != move_id:
                continue
            state = field_of(move, "state")
            if state in (b"cancel", "cancel") or int(field_of(move, "cancelled") or 0):
                return
        node.execute_command("SHARDSTORE.MOVE", "CANCEL", move_id)

    _run(client, attempt)


def add_once(client: Any, keyspace: str, node_id: int) -> int:
    """KEYSPACE.ADDNODE; the new shard's id. On a retry (an earlier try's reply lost) it is
    not sent again when the node serves `keyspace` already: the keyspace's newest shard
    (the one that try made) is the answer. On the first try such a node is refused."""
    tries = 0

    def attempt(node: redis.Redis) -> int:
        nonlocal tries
        tries += 1
        if tries > 1:
            for space in node.execute_command("KEYSPACE.LIST"):
                if (_name(field_of(space, "name")) == keyspace
                        and node_id in [int(n) for n in field_of(space, "nodes")]):
                    return max(int(s) for s in field_of(space, "shards"))
        return int(node.execute_command("KEYSPACE.ADDNODE", keyspace, node_id))

    return int(_run(client, attempt))


def _name(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def remove_once(client: Any, keyspace: str, node_id: int) -> None:
    """KEYSPACE.REMOVENODE, idempotently: not sent again once the node has left."""
    def attempt(node: redis.Redis) -> None:
        for space in node.execute_command("KEYSPACE.LIST"):
            members = [int(n) for n in field_of(space, "nodes")]
            if _name(field_of(space, "name")) == keyspace and node_id not in members:
                return
        node.execute_command("KEYSPACE.REMOVENODE", keyspace, node_id)

    _run(client, attempt)
