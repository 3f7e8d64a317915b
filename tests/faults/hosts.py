"""A harness of hosts on one machine: network namespaces joined by a bridge, with faults.

Strategy: `Harness(n, workdir)` builds one namespace per host plus one for a bridge, joined by
veth pairs created inside those namespaces (the bridge end `v<i>` in the bridge's namespace,
the host end `eth0` in the host's), so nothing is added to the machine's own network. Host i
(1-based) is `n<i>` at SUBNET.<i>/24; every harness may use the same addresses, since each
has a bridge of its own. Names carry the owning pid and a serial (`netns.name_prefix`), so
parallel runs never clash and a later run deletes what a crashed one left
(`netns.remove_stale`). Nodes (`node.Node`, wrapping `tests.procs.Daemon`) are started from a
thread that has entered the host's namespace, so the process and everything it forks live
there; the test process reaches a host the same way: `socket(host)`, `connect(...)`,
`in_host(host)` for a block, `executor(host)` for blocking clients, `loop(host)` for asyncio.

Faults are calls usable at any moment: `isolate`, `split`, `bridge`, `one_way`,
`random_loss`, `heal` edit one `nft.FaultPlan` and re-derive each host's nftables table
(idempotent; faults add up until `heal()`). Latency, jitter, pauses and cuts of single links
come from `relay(...)`; wall-clock jumps from `clock(host)` (libfaketime); process faults from
`Node.kill/pause/resume/restart`. `close()` (also on `with` exit, atexit and SIGTERM) kills
every process and deletes every namespace, even after a failed test.
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import socket
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType, TracebackType

import pytest

from tests.faults import clock, netns, nft
from tests.faults.node import Host, HostRef, Node
from tests.faults.relay import LoopThread, Relay, RelayHandle
from tests.procs import Daemon

SUBNET = "10.77.0"
PREFIX_LEN = 24
BRIDGE_LINK = "br0"
LISTEN_BACKLOG = 128
KILL_WAIT_S = 10.0
MAX_HOSTS = 250

_serials = iter(range(1, 1 << 30))
_open_harnesses: set[Harness] = set()
_unavailable: dict[str, str | None] = {}


def skip_unless_available(clock_faults: bool = False) -> None:
    """pytest.skip with the one exact missing thing when the harness cannot run here."""
    if "netns" not in _unavailable:
        _unavailable["netns"] = netns.unavailable_reason()
    reason = _unavailable["netns"]
    if reason is None and clock_faults:
        reason = clock.unavailable_reason()
    if reason is not None:
        pytest.skip(f"fault harness unavailable: {reason}")


class Harness:
    """N hosts in namespaces behind one bridge, their nodes, and the faults between them."""

    def __init__(self, n_hosts: int, workdir: Path, subnet: str = SUBNET, seed: int = 0) -> None:
        if not 1 <= n_hosts <= MAX_HOSTS:
            raise ValueError(f"n_hosts must lie in [1, {MAX_HOSTS}], got {n_hosts}")
        self.prefix = netns.name_prefix(next(_serials))
        self.workdir = workdir
        self.seed = seed
        self.bridge_netns = f"{self.prefix}br"
        self.hosts = [
            Host(f"n{i}", i, f"{subnet}.{i}", f"{self.prefix}n{i}") for i in range(1, n_hosts + 1)
        ]
        self.nodes: list[Node] = []
        self.plan = nft.FaultPlan()
        self._created: list[str] = []
        self._applied: dict[str, str] = {}
        self._clocks: dict[str, clock.ClockFile] = {}
        self._relays: list[RelayHandle] = []
        self._loop: LoopThread | None = None
        self._host_loops: list[LoopThread] = []
        self._executors: list[ThreadPoolExecutor] = []

    # -- life cycle ------------------------------------------------------------------------

    def open(self) -> Harness:
        """Build the namespaces, bridge and links (after deleting stale ones of dead runs)."""
        netns.remove_stale()
        self.workdir.mkdir(parents=True, exist_ok=True)
        _open_harnesses.add(self)
        _trap_sigterm()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _build(self) -> None:
        netns.add(self.bridge_netns)
        self._created.append(self.bridge_netns)
        script = [f"link add {BRIDGE_LINK} type bridge", f"link set {BRIDGE_LINK} up"]
        for host in self.hosts:
            netns.add(host.netns)
            self._created.append(host.netns)
            script += [
                f"link add v{host.index} type veth peer name {nft.INNER_LINK} netns {host.netns}",
                f"link set v{host.index} master {BRIDGE_LINK}",
                f"link set v{host.index} up",
            ]
        _ip_batch(self.bridge_netns, script)
        for host in self.hosts:
            _ip_batch(
                host.netns,
                [
                    f"addr add {host.address}/{PREFIX_LEN} dev {nft.INNER_LINK}",
                    f"link set {nft.INNER_LINK} up",
                ],
            )
            self._apply(host)

    def close(self) -> None:
        """Stop relays, kill every node, delete every namespace. Idempotent; never raises.

        A second SIGTERM arriving meanwhile is ignored until the cleanup is over.
        """
        with _sigterm_ignored():
            self._close()
        _open_harnesses.discard(self)
        if not _open_harnesses:
            _untrap_sigterm()

    def _close(self) -> None:
        for handle in self._relays:
            with contextlib.suppress(Exception):
                handle.close()
        self._relays.clear()
        for loop in [self._loop, *self._host_loops]:
            if loop is not None:
                with contextlib.suppress(Exception):
                    loop.stop()
        self._loop = None
        self._host_loops.clear()
        for executor in self._executors:
            executor.shutdown(wait=False, cancel_futures=True)
        self._executors.clear()
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.kill()
        for name in reversed(self._created):
            with contextlib.suppress(Exception):
                netns.delete(name)
        self._created.clear()
        self._applied.clear()

    def __enter__(self) -> Harness:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- hosts and processes -----------------------------------------------------------------

    def host(self, ref: HostRef) -> Host:
        """The host named `ref` (or `ref` itself)."""
        if isinstance(ref, Host):
            return ref
        for host in self.hosts:
            if host.name == ref:
                return host
        raise KeyError(f"no host {ref!r}; hosts are {[h.name for h in self.hosts]}")

    @contextlib.contextmanager
    def in_host(self, ref: HostRef) -> Iterator[Host]:
        """This thread inside the host's namespace for the block (see `netns.in_netns`)."""
        host = self.host(ref)
        with netns.in_netns(host.netns):
            yield host

    def socket(self, ref: HostRef, kind: int = socket.SOCK_STREAM) -> socket.socket:
        """A new IPv4 socket living in the host's network namespace."""
        with self.in_host(ref):
            return socket.socket(socket.AF_INET, kind)

    def connect(self, ref: HostRef, address: tuple[str, int], timeout: float) -> socket.socket:
        """A TCP connection from the host to `address` (raises OSError/TimeoutError on failure)."""
        sock = self.socket(ref)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        return sock

    def executor(self, ref: HostRef, workers: int = 1) -> ThreadPoolExecutor:
        """Worker threads living in the host's namespace: blocking clients (redis-py, ...)
        submitted there open their sockets on that host. Shut down by `close()`."""
        host = self.host(ref)
        executor = ThreadPoolExecutor(
            workers, f"{self.prefix}{host.name}", initializer=netns.enter, initargs=(host.netns,)
        )
        self._executors.append(executor)
        return executor

    def loop(self, ref: HostRef) -> LoopThread:
        """An asyncio loop in a thread living in the host's namespace: every socket its
        coroutines open is on that host (`loop.run(coro)`). Stopped by `close()`."""
        host = self.host(ref)
        loop = LoopThread(initializer=lambda: netns.enter(host.netns))
        self._host_loops.append(loop)
        return loop

    def spawn(
        self,
        ref: HostRef,
        argv: list[str],
        port: int | None = None,
        name: str | None = None,
        faked_clock: bool = False,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        start: bool = True,
    ) -> Node:
        """A node running `python -m <argv>` on the host, logging to `<workdir>/<name>.log`.

        With `port`, starting waits until host:port accepts connections. With `faked_clock`,
        the process runs on the host's clock file (`clock(host)`). `env` adds variables;
        `cwd` defaults to the repository root.
        """
        host = self.host(ref)
        name = name or f"{host.name}-{len(self.nodes)}"
        full_env = dict(env or {})
        if faked_clock:
            full_env.update(self.clock(host).env())
        log_path = self.workdir / f"{name}.log"
        daemon = Daemon(argv, host.address, port or 0, log_path, full_env, cwd)
        node = Node(host, daemon, port)
        self.nodes.append(node)
        return node.start() if start else node

    def clock(self, ref: HostRef) -> clock.ClockFile:
        """The host's wall-clock offset file (created at offset 0 on first use)."""
        host = self.host(ref)
        if host.name not in self._clocks:
            path = self.workdir / f"clock-{host.name}.faketime"
            self._clocks[host.name] = clock.ClockFile(path)
        return self._clocks[host.name]

    # -- network faults --------------------------------------------------------------------

    def isolate(self, ref: HostRef) -> None:
        """Cut the host off from every other host, both ways."""
        target = self.host(ref).name
        for other in self.hosts:
            self.plan.cut(target, other.name)
            self.plan.cut(other.name, target)
        self._sync()

    def split(self, *groups: Sequence[HostRef]) -> None:
        """Partition: hosts in different groups cannot reach each other (unlisted: untouched)."""
        names = [[self.host(ref).name for ref in group] for group in groups]
        flat = [n for group in names for n in group]
        if len(flat) != len(set(flat)):
            raise ValueError(f"a host appears in two groups: {names}")
        for i, group in enumerate(names):
            for other in names[i + 1 :]:
                self._cut_between(group, other)
        self._sync()

    def bridge(
        self, hub: HostRef, left: HostRef | Sequence[HostRef], right: HostRef | Sequence[HostRef]
    ) -> None:
        """`hub` sees both sides; the hosts of `left` and `right` do not see each other."""
        sides = [[self.host(r).name for r in _as_list(side)] for side in (left, right)]
        if self.host(hub).name in sides[0] + sides[1]:
            raise ValueError("the hub cannot be on a side of its own bridge")
        self._cut_between(sides[0], sides[1])
        self._sync()

    def one_way(self, src: HostRef, dst: HostRef) -> None:
        """Drop packets from `src` to `dst`; `dst` to `src` still passes (see nft's header)."""
        self.plan.cut(self.host(src).name, self.host(dst).name)
        self._sync()

    def random_loss(self, target: HostRef | tuple[HostRef, HostRef], probability: float) -> None:
        """Drop packets at random: to and from a host, or both ways on a link (a pair).

        Probability 0 removes the loss; 1 drops everything. Calling again replaces it.
        """
        if isinstance(target, tuple):
            a, b = (self.host(r).name for r in target)
            self.plan.lose(a, b, probability)
            self.plan.lose(b, a, probability)
        else:
            name = self.host(target).name
            self.plan.lose(nft.ANY, name, probability)
            for other in self.hosts:
                self.plan.lose(name, other.name, probability)
        self._sync()

    def heal(self) -> None:
        """Remove every network fault (relays keep their own shaping)."""
        self.plan.clear()
        self._sync()

    def _cut_between(self, side_a: Iterable[str], side_b: Iterable[str]) -> None:
        side_b = list(side_b)
        for a in side_a:
            for b in side_b:
                self.plan.cut(a, b)
                self.plan.cut(b, a)

    def _sync(self) -> None:
        for host in self.hosts:
            self._apply(host)

    def _apply(self, host: Host) -> None:
        addresses = {h.name: h.address for h in self.hosts}
        script = nft.ruleset(nft.input_rules(self.plan, host.name, addresses))
        if self._applied.get(host.name) != script:
            nft.apply(host.netns, script)
            self._applied[host.name] = script

    def rules(self, ref: HostRef) -> str:
        """The nftables ruleset in force on a host now (for failure messages)."""
        return nft.listing(self.host(ref).netns)

    # -- relays ----------------------------------------------------------------------------

    def relay(self, src: HostRef, dst: HostRef, port: int, seed: int | None = None) -> RelayHandle:
        """A relay on `src` to `dst`:`port`; point `src`'s peer address at `handle.address`.

        The relay listens on `src`'s address and dials from `src`'s namespace, so the network
        faults between `src` and `dst` still apply to what it relays.
        """
        src_host, dst_host = self.host(src), self.host(dst)
        listen = self.socket(src_host)
        listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listen.bind((src_host.address, 0))
        listen.listen(LISTEN_BACKLOG)
        listen.setblocking(False)
        relay = Relay(
            listen,
            (dst_host.address, port),
            connect_socket=lambda: self.socket(src_host),
            seed=self.seed if seed is None else seed,
        )
        if self._loop is None:
            self._loop = LoopThread()
        self._loop.run(relay.start())
        handle = RelayHandle(relay, self._loop)
        self._relays.append(handle)
        return handle


def _as_list(side: HostRef | Sequence[HostRef]) -> list[HostRef]:
    return [side] if isinstance(side, Host | str) else list(side)


def _ip_batch(namespace: str, commands: list[str]) -> None:
    netns.run(["ip", "-n", namespace, "-batch", "-"], stdin="\n".join(commands) + "\n")


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _trap_sigterm() -> None:
    """While a harness is open, SIGTERM raises SystemExit so `with` blocks and atexit run.

    Only a default handler is replaced, and only from the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_exit)


@contextlib.contextmanager
def _sigterm_ignored() -> Iterator[None]:
    """Ignore SIGTERM for the block when the harness's own handler is installed."""
    trapped = (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is _raise_exit
    )
    if trapped:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        if trapped:
            signal.signal(signal.SIGTERM, _raise_exit)


def _untrap_sigterm() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is _raise_exit:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@atexit.register
def _close_all() -> None:
    for harness in list(_open_harnesses):
        harness.close()


__all__ = ["Harness", "Host", "Node", "skip_unless_available"]
