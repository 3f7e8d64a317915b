"""What the blocking and asyncio clients share: the pool's state and every decision.

`PoolCore` holds the `kvcache.ring.Router` (ring plus each server's health), the idle
connections per server and the timeout, and makes every decision that does not wait on I/O:
where a key goes now, how a multi-get splits per server, which servers a per-server command
asks, what a probe sends and what its outcome does, how a failed call counts, and how the
per-server answers merge. kvcache/client_sync.py and client_async.py only carry these out
on their sockets, so the two clients can not drift apart.

Probes: a down server is probed with `version` on a fresh connection. With on_down="remap"
the probe then sends `flush_all` before the server takes its keys back: while it was down
its keys were written (or deleted) on its ring successors, so anything it still holds (it
was hung by SIGSTOP, or cut off, rather than restarted) may be older than what clients last
wrote. Dropping it costs hits, never correctness; "fail" mode never moves a key, so it keeps
the server's data. Once it is back, the copies this client wrote in its place are deleted
where they went (the Router remembers them; past its bound those servers are flushed), so
they can not be read, older than the home's, the next time it goes down.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, Literal, Protocol

from kvcache.client_codec import (
    NONE,
    VALUES,
    VERSION,
    CacheError,
    Command,
    Item,
    NetworkError,
    ProtocolError,
    ServerDown,
    cmd_delete_batch,
    cmd_flush,
    cmd_retrieve,
    encode_key,
)
from kvcache.ring import Key, Router, ServerSpec

READ_BYTES: Final = 65536
MAX_IDLE_PER_SERVER: Final = 8

# What makes a call a failure: OSError (TimeoutError and ConnectionError included) and the
# ValueError of a reply that breaks the protocol. An error reply (ReplyError) is an answer.
FAILURES: Final = (OSError, ValueError)

Servers = Iterable[ServerSpec]
OnDown = Literal["fail", "remap"]


class Closable(Protocol):
    def close(self) -> None: ...


def close(conn: Closable | None) -> None:
    if conn is not None:
        conn.close()


def failure(server: str, exc: BaseException) -> NetworkError:
    """The NetworkError a call to `server` raises for the failure `exc`."""
    kind = ProtocolError if isinstance(exc, ValueError) else NetworkError
    message = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
    return kind(server, message)


class PoolCore:
    """The router, idle connections per server, the timeout; see the module docstring."""

    def __init__(
        self,
        servers: Servers,
        timeout: float,
        failure_threshold: int,
        retry_backoff: tuple[float, float],
        on_down: OnDown,
        clock: Callable[[], float],
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        self.router = Router(servers, failure_threshold, retry_backoff, on_down, clock)
        self.timeout = timeout
        self._idle: dict[str, list[Any]] = {s: [] for s in self.router.ring.servers}
        # A probe of a remapped server must also drop what it holds (module docstring).
        flush = [cmd_flush(0, False)] if on_down == "remap" else []
        self.probe_commands: tuple[Command, ...] = (VERSION, *flush)

    @property
    def servers(self) -> tuple[str, ...]:
        """Every server address ("host:port"), in the order given."""
        return self.router.ring.servers

    @property
    def down_servers(self) -> frozenset[str]:
        """The servers marked down now."""
        return self.router.down

    # -- routing and planning --

    def _route(self, key: bytes) -> str:
        server = self.router.route(key)
        if server is None:
            raise ServerDown(self.router.ring.get_server(key), "marked down")
        return server

    def _route_call(self, command: Command) -> str:
        """Where a keyed command goes now; a write sent away from its home is remembered."""
        assert command.key is not None
        server = self._route(command.key)
        if command.reply != VALUES:  # store, delete, incr/decr, touch
            self.router.wrote(command.key, server)
        return server

    def _plan_many(
        self, keys: Iterable[Key], cas: bool
    ) -> tuple[dict[bytes, list[Key]], dict[str, Command], list[CacheError]]:
        """get_many's requests, one per server, and ServerDown for keys that must fail fast."""
        wanted: dict[bytes, list[Key]] = {}
        for key in keys:
            wanted.setdefault(encode_key(key), []).append(key)
        groups: dict[str, list[bytes]] = {}
        errors: list[CacheError] = []
        for wire in wanted:
            try:
                groups.setdefault(self._route(wire), []).append(wire)
            except ServerDown as exc:
                errors.append(exc)
        return wanted, {s: cmd_retrieve(ks, cas) for s, ks in groups.items()}, errors

    def _plan_all(self, command: Command) -> tuple[dict[str, Command], list[CacheError]]:
        """A per-server command: the servers to ask, and ServerDown for the down ones."""
        down = self.router.down
        errors: list[CacheError] = [ServerDown(s, "marked down") for s in down]
        return {s: command for s in self.servers if s not in down}, errors

    # -- connections and health --

    def _take(self, server: str) -> Any:
        try:
            return self._idle[server].pop()
        except IndexError:
            return None

    def _give(self, server: str, conn: Any, command: Command) -> None:
        """A call ended with an answer (an error reply included): pool the connection."""
        idle = self._idle[server]
        if len(idle) < MAX_IDLE_PER_SERVER:
            idle.append(conn)
        else:
            close(conn)
        if command.reply != NONE:  # a noreply call can not tell success
            self.router.answered(server)  # a down server is left to its probe

    def _broken(self, server: str, conn: Closable | None, exc: BaseException) -> NetworkError:
        """Close `conn` (and the idle ones: they likely broke too); count the failure.
        A failed call is never retried on another server (a timed-out write may have been
        applied)."""
        for other in [conn, *self._drain(server)]:
            close(other)
        self.router.failed(server)
        return failure(server, exc)

    def _drain(self, server: str) -> list[Any]:
        idle, self._idle[server] = self._idle[server], []
        return idle

    def _probed(self, server: str, answered: bool) -> dict[str, Command]:
        """A probe's outcome. Idle connections from before the outage are dropped. Returns
        the clean-up to send once `server` is back: per server, a batch of deletes of the
        copies written there in its place, or a flush (too many to name; module docstring)."""
        if not answered:
            self.router.failed(server)
            return {}
        for old in self._drain(server):
            close(old)
        self.router.succeeded(server)
        keys, flooded = self.router.take_moved(server)
        down = self.router.down  # a down server is flushed on its own return anyway
        cleanup = {s: cmd_flush(0, False) for s in flooded if s not in down}
        cleanup.update((s, cmd_delete_batch(ks)) for s, ks in keys.items()
                       if s not in down and s not in flooded)  # fmt: skip
        return cleanup


def collect(
    servers: Sequence[str], outcomes: Sequence[Any]
) -> tuple[dict[str, Any], list[CacheError]]:
    """Per-server outcomes (a result or a CacheError) split into results and errors; any
    other exception (a bug, a cancellation) is raised."""
    results: dict[str, Any] = {}
    errors: list[CacheError] = []
    for server, outcome in zip(servers, outcomes, strict=True):
        if isinstance(outcome, CacheError):
            errors.append(outcome)
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            results[server] = outcome
    return results, errors


def merge(
    wanted: dict[bytes, list[Key]], results: dict[str, Any], errors: list[CacheError]
) -> dict[Key, Item]:
    """get_many's answer: {key as asked: Item}. If a server failed, its error is raised with
    the other servers' hits in `error.partial`."""
    found = {
        key: item for items in results.values() for w, item in items.items() for key in wanted[w]
    }
    if errors:
        first = errors[0]
        if isinstance(first, NetworkError):
            first.partial = found
        raise first
    return found


def first_error(errors: list[CacheError]) -> None:
    """flush_all's rule: every server was tried; raise the first error, if any."""
    if errors:
        raise errors[0]
