"""Which memcached server holds a key: the ketama ring of libmemcached and uhashring.

Placement is key for key the one libmemcached (KETAMA_WEIGHTED) and uhashring compute, so our
clients can share a pool with libmemcached-based clients (pylibmc, PHP's memcached) or with
pymemcache + uhashring. The rules, and the two corners where those references disagree, are
in native/ketama_pure.py. (twemproxy hashes a server's configured name, by default
"host:port" even on 11211, so it agrees on pools without port 11211 or with names set so.)

Strategy: the ring is the ordered list of servers with their weights. Every change rebuilds
the continuum from scratch (40 md5 per server and a sort: well under a millisecond for 20
servers), since in weighted ketama each server's share depends on the whole pool anyway. A
lookup is one call into native.ketama's Continuum (md5 and binary search in C when built) and
an index into the address tuple. Rebuilds swap one reference, so a lookup running in another
thread sees either the old or the new ring, never half of one.

`Router` adds each server's health to a ring: where a key goes *now*, when a down server is
due for a probe, and whether its keys fail fast or go to the ring without it. It is sans-I/O:
the client reports each call's outcome and passes the clock in. In remap mode it also keeps
which keys were written away from their home while it was down (`wrote`, `take_moved`), so
those copies can be deleted when the home is back: left there, they would be read, older
than the home's, the next time the home goes down.

Servers are written "host:port" ("[v6addr]:port" for IPv6), port 11211 when left out, or as a
tuple (host, port) or (host, port, weight). Keys are bytes, or str (hashed as UTF-8).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

from native.ketama import DEFAULT_PORT, Continuum, build, server_name

MAX_MOVED_KEYS = 10_000  # remapped writes remembered per down server; past it: flush instead

ServerSpec: TypeAlias = str | tuple[str, int] | tuple[str, int, int]
Key: TypeAlias = bytes | str

__all__ = [
    "DEFAULT_PORT",
    "Health",
    "Key",
    "Ring",
    "Router",
    "ServerSpec",
    "format_address",
    "parse_server",
]


def parse_server(spec: ServerSpec) -> tuple[str, int, int]:
    """(host, port, weight) of a server spec: "host[:port]", "[v6][:port]", or a tuple."""
    if isinstance(spec, tuple):
        if len(spec) == 2:
            host, port, weight = spec[0], spec[1], 1
        elif len(spec) == 3:
            host, port, weight = spec  # type: ignore[misc]
        else:
            raise ValueError(f"server tuple must be (host, port[, weight]): {spec!r}")
    elif isinstance(spec, str):
        host, port = _split_host_port(spec)
        weight = 1
    else:
        raise TypeError(f"server must be a str or a tuple, not {type(spec).__name__}")
    if not isinstance(host, str) or not host or any(c.isspace() for c in host):
        raise ValueError(f"bad host in server {spec!r}")
    for name, value, low, high in (("port", port, 1, 65535), ("weight", weight, 1, 1 << 31)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"bad {name} in server {spec!r}: {value!r}")
    return host, port, weight


def _split_host_port(spec: str) -> tuple[str, int]:
    if spec.startswith("["):  # [v6addr] or [v6addr]:port
        host, sep, rest = spec[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad server address {spec!r}")
        port_text = rest[1:] if rest else ""
    elif spec.count(":") == 1:
        host, _, port_text = spec.partition(":")
    else:  # "host", or a bare IPv6 address (no port then)
        host, port_text = spec, ""
    if port_text and not port_text.isdigit():
        raise ValueError(f"bad port in server address {spec!r}")
    return host, int(port_text) if port_text else DEFAULT_PORT


def format_address(host: str, port: int) -> str:
    """The canonical "host:port" of a server ("[v6addr]:port" for IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Ring:
    """A ketama ring over memcached servers.

    `get_server(key)` is the key's server address; `get_servers(key, n)` its first n distinct
    successors (the home server first). Adding a server moves about 1/(N+1) of the keys, all
    to the new server; removing it puts them back. Not for concurrent mutation: guard add and
    remove with a lock if several threads change the same ring (lookups need none).
    """

    def __init__(self, servers: Iterable[ServerSpec] = ()) -> None:
        self._order: list[tuple[str, int]] = []  # (address, weight) in list order
        self._names: dict[str, str] = {}  # address -> ketama name
        # (continuum, addresses): owner i of the continuum is addresses[i]. One reference, so
        # a rebuild publishes both at once and readers take it once per lookup.
        self._state: tuple[Continuum, tuple[str, ...]] = (Continuum([], []), ())
        for spec in servers:
            self._insert(spec, None)
        self._rebuild()

    # -- membership -----------------------------------------------------------------------

    def _insert(self, spec: ServerSpec, weight: int | None) -> None:
        host, port, spec_weight = parse_server(spec)
        if weight is not None:
            host, port, weight = parse_server((host, port, weight))
        address = format_address(host, port)
        if address in self._names:
            raise ValueError(f"server {address} is already in the ring")
        self._names[address] = server_name(host, port)
        self._order.append((address, spec_weight if weight is None else weight))

    def _rebuild(self) -> None:
        addresses = tuple(address for address, _ in self._order)
        names = [self._names[address] for address in addresses]
        points, owners = build(names, [weight for _, weight in self._order])
        self._state = (Continuum(points, owners), addresses)

    def add(self, server: ServerSpec, weight: int | None = None) -> None:
        """Add a server at the end of the list; weight defaults to the spec's, else 1."""
        self._insert(server, weight)
        self._rebuild()

    def remove(self, server: ServerSpec) -> None:
        """Remove a server (any spec form naming it); KeyError if it is not in the ring."""
        host, port, _ = parse_server(server)
        address = format_address(host, port)
        if address not in self._names:
            raise KeyError(address)
        del self._names[address]
        self._order = [entry for entry in self._order if entry[0] != address]
        self._rebuild()

    def without(self, servers: Iterable[str]) -> Ring:
        """A new ring with the same servers, in the same order, minus `servers` (addresses)."""
        gone = set(servers)
        ring = Ring()
        for address, weight in self._order:
            if address not in gone:
                ring._names[address] = self._names[address]
                ring._order.append((address, weight))
        ring._rebuild()
        return ring

    @property
    def servers(self) -> tuple[str, ...]:
        """Server addresses ("host:port") in list order."""
        return self._state[1]

    def weight(self, server: str) -> int:
        """The weight of a server address."""
        for address, weight in self._order:
            if address == server:
                return weight
        raise KeyError(server)

    def name(self, server: str) -> str:
        """The string ketama hashes for a server address ("host", or "host:port")."""
        return self._names[server]

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, server: object) -> bool:
        return server in self._names

    def __repr__(self) -> str:
        return f"Ring({[(a, w) for a, w in self._order]!r})"

    # -- lookups --------------------------------------------------------------------------

    def get_server(self, key: Key) -> str:
        """The address of the server that holds `key`. LookupError if the ring is empty."""
        continuum, addresses = self._state
        if type(key) is not bytes:
            key = _key_bytes(key)
        return addresses[continuum.lookup(key)]

    def get_servers(self, key: Key, n: int) -> list[str]:
        """The first min(n, len(ring)) distinct servers from key's point, in ring order."""
        continuum, addresses = self._state
        return [addresses[i] for i in continuum.successors(_key_bytes(key), n)]

    def group(self, keys: Sequence[Key]) -> dict[str, list[int]]:
        """Positions in `keys` grouped by server address, in key order within each server."""
        continuum, addresses = self._state
        groups: dict[str, list[int]] = {}
        owners = continuum.lookup_many([_key_bytes(k) for k in keys])
        for position, owner in enumerate(owners):
            groups.setdefault(addresses[owner], []).append(position)
        return groups


# -- routing with health -------------------------------------------------------------------


@dataclass(slots=True)
class Health:
    """One server's state. Invariant: down implies failures >= threshold; next_probe is when
    a down server may next be probed."""

    failures: int = 0
    down: bool = False
    backoff: float = 0.0
    next_probe: float = 0.0


class Router:
    """A ring plus each server's health: where a key goes now. Sans-I/O, thread-safe.

    The caller reports outcomes: `answered(server)` for a call's reply (an error reply is an
    answer), `failed(server)` for a connect error, timeout or broken reply, `succeeded(server)`
    for an answered probe: only a probe brings a down server back. At
    `failure_threshold` consecutive failures the server is down; `due_probes()` then hands it
    out for a probe `retry_backoff[0]` seconds later, the delay doubling after each failed
    probe up to `retry_backoff[1]`. `on_down` says where a down server's keys go: "fail"
    (nowhere: `route` returns None) or "remap" (to the ring rebuilt without the down servers,
    until they come back). `clock()` is monotonic seconds.
    """

    def __init__(
        self,
        servers: Iterable[ServerSpec],
        failure_threshold: int,
        retry_backoff: tuple[float, float],
        on_down: Literal["fail", "remap"],
        clock: Callable[[], float],
    ) -> None:
        if on_down not in ("fail", "remap"):
            raise ValueError('on_down must be "fail" or "remap"')
        if failure_threshold < 1 or not 0 < retry_backoff[0] <= retry_backoff[1]:
            raise ValueError("need failure_threshold >= 1, 0 < retry_backoff[0] <= [1]")
        self.ring = Ring(servers)
        self.live = self.ring  # "remap": the ring without the down servers
        self.health = {server: Health() for server in self.ring.servers}
        self.threshold, self.backoff, self.on_down = failure_threshold, retry_backoff, on_down
        self.clock = clock
        self._down: set[str] = set()
        self._lock = threading.Lock()
        # remap: down home -> {key: the server its write went to}; past MAX_MOVED_KEYS the
        # servers written to are only named in _flooded (they get flushed instead)
        self._moved: dict[str, dict[bytes, str]] = {}
        self._flooded: dict[str, set[str]] = {}

    @property
    def down(self) -> frozenset[str]:
        """The servers marked down now."""
        return frozenset(self._down)

    @property
    def any_down(self) -> bool:
        """Whether a server is marked down now (cheaper than `down` on a hot path)."""
        return bool(self._down)

    def route(self, key: bytes) -> str | None:
        """The server to ask for `key` now; None if the call must fail fast (its server is
        down and on_down is "fail", or every server is down)."""
        if self.on_down == "remap":
            return self.live.get_server(key) if len(self.live) else None
        server = self.ring.get_server(key)
        return None if server in self._down else server

    def due_probes(self) -> list[str]:
        """Down servers whose probe is due; each is claimed until its result is reported."""
        if not self._down:
            return []
        now = self.clock()
        with self._lock:
            due = [s for s in self._down if self.health[s].next_probe <= now]
            for server in due:
                self.health[server].next_probe = now + self.backoff[1]
        return due

    def answered(self, server: str) -> None:
        """A call got a reply (error replies included): the failure count starts again. A
        down server stays down: the reply is late, to a call sent before it was marked down,
        and only its probe brings it back (the probe may flush it first; see the callers)."""
        health = self.health[server]
        if health.failures and not health.down:
            with self._lock:
                if not health.down:
                    health.failures = 0

    def succeeded(self, server: str) -> None:
        """A probe was answered: the server is up again."""
        health = self.health[server]
        if health.failures or health.down:
            with self._lock:
                was_down, health.failures, health.down = health.down, 0, False
                if was_down:
                    self._down.discard(server)
                    self._rebuild()

    def failed(self, server: str) -> None:
        """A call or a probe failed: count it, mark down at the threshold, back off probes."""
        now, health = self.clock(), self.health[server]
        with self._lock:
            health.failures += 1
            if health.down:
                health.backoff = min(health.backoff * 2, self.backoff[1])
            elif health.failures >= self.threshold:
                health.down, health.backoff = True, self.backoff[0]
                self._down.add(server)
                self._rebuild()
            health.next_probe = now + health.backoff

    def wrote(self, key: bytes, server: str, replicas: int = 1) -> None:
        """A write of `key` went to `server` (whatever its outcome: a timed-out write may have
        been applied). Remembered when remapping sent it away from the key's `replicas`
        ring successors because one of them is down."""
        if self.on_down != "remap" or not self._down:
            return
        normal = self.ring.get_servers(key, replicas)
        home = next((s for s in normal if s in self._down), None)
        if home is None or server in normal:
            return
        with self._lock:
            moved = self._moved.setdefault(home, {})
            if len(moved) < MAX_MOVED_KEYS or key in moved:
                moved[key] = server  # a later write elsewhere replaces an earlier one
            else:
                self._flooded.setdefault(home, set()).add(server)

    def take_moved(self, home: str) -> tuple[dict[str, list[bytes]], set[str]]:
        """What to clean as `home` returns: {server: keys written there in its place} to
        delete, and the servers that got more than MAX_MOVED_KEYS of them, to flush."""
        with self._lock:
            moved = self._moved.pop(home, {})
            flooded = self._flooded.pop(home, set())
        keys: dict[str, list[bytes]] = {}
        for key, server in moved.items():
            if server not in flooded:
                keys.setdefault(server, []).append(key)
        return keys, flooded

    def _rebuild(self) -> None:
        if self.on_down == "remap":
            self.live = self.ring.without(self._down)


def _key_bytes(key: Key) -> bytes:
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode()
    raise TypeError(f"key must be bytes or str, not {type(key).__name__}")
