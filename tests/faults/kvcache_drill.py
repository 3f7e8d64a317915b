"""The kvcache drill: a backend cut off from the proxy, in `fail` and in `remap` mode.

Strategy: hosts n1-n3 each run one `kvcache serve`; host n4 runs `kvcache proxy --servers
n1,n2,n3 --on-down MODE`; host n5 runs the clients, pymemcache connections to the proxy that
`set` (each value written once: client and counter) and `get` a small set of keys, every
request recorded. The drill runs rounds; in each, a Nemesis given one backend (seeded) and
the proxy cuts the link between them (split: both ways; one_way: either direction, so
requests or replies are lost), the drill waits until the proxy's `stats backends` calls the
backend down and the clients did more requests, heals, waits until the proxy calls it up
again, lets the clients work on, then sets a few keys of that backend through the proxy
(keys no client uses) and reads them straight from the backend. The fault and the heal
(process NEMESIS_PROCESS), and the instants the drill saw the cut, the mark-down, the heal
coming and the mark-up (process `observer`), are in the history.

A request answered `SERVER_ERROR backend unavailable` was not sent to any backend (fail);
another SERVER_ERROR (timeout, connection error) may have been applied (info); no answer
within HANG_S, ten times the proxy's own --timeout, is a hang (info, counted).

kvcache is a cache: a miss is always allowed, so nothing here is about durability. Checked
(by tests/faults/kvcache_checks.py, on each mode's history):
- stale reads: a get never returns a value that an acknowledged set overwrote before the get
  began (a returning backend is flushed in remap mode, so what it kept from before the cut
  cannot shadow a write made on its successor meanwhile), nor a value no set could have
  written (never attempted by then, or only by a set that was never sent);
- routing during the cut: requests for keys of other backends all succeed; once the proxy
  has marked the cut backend down, its keys fail fast (`fail`: every request answers
  SERVER_ERROR backend unavailable, nothing waits on the backend) or are served by the next
  node (`remap`: every request succeeds, and a get after an acknowledged set of the same key
  in the cut is a hit);
- no hangs: no request waited HANG_S for the proxy's answer;
- recovery: after the proxy calls the backend up again every request succeeds, and a key set
  through the proxy is found on that backend itself.
"""

from __future__ import annotations

import itertools
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheError, MemcacheServerError

from kvcache.ring import Ring
from tests.faults.drill import NEMESIS_PROCESS, DrillReport, Nemesis, finish
from tests.faults.history import Operation, Recorder
from tests.faults.hosts import Harness
from tests.faults.kvcache_checks import (
    F_GET,
    F_HOME_GET,
    F_SET,
    HANG,
    UNAVAILABLE,
    Round,
    check_cut_routing,
    check_no_hangs,
    check_recovery,
    check_stale_reads,
    shadow_chances,
)
from tests.faults.node import Host, Node
from tests.faults.report import CheckResult

BACKENDS = 3
PROXY_HOST = "n4"
CLIENT_HOST = "n5"
HOSTS = 5
BACKEND_PORT = 11211
PROXY_PORT = 11210
BACKEND_FLAGS = ["-m", "16", "-I", "1m", "-t", "1", "-U", "0"]
PROXY_TIMEOUT_S = 1.0
HANG_S = 10 * PROXY_TIMEOUT_S
RETRY_BACKOFF = "0.2,1.0"
WAIT_S = 60.0  # a state or a workload not reached after this long is a hang of the drill
POLL_S = 0.05
CLIENTS = 3
KEYS = tuple(f"key:{i}" for i in range(24))
OPS_PER_PHASE = 30  # requests each client makes in each phase of a round
HOME_PROBES = 3
ROUND_S = 10.0  # the short round's duration_s buys this many rounds (at least one)
# The Nemesis is given the cut backend and the proxy: a split of those two cuts the link both
# ways, a one_way drops it in one direction (either); the clients' host is never cut.
CUTS = ("split", "one_way")
MODES = ("fail", "remap")
F_STATE = "state"
OBSERVER, PROBE = "observer", "probe"


class Cluster:
    """The backends, the proxy and the ring the proxy places keys by."""

    def __init__(self, harness: Harness, mode: str) -> None:
        self.harness = harness
        self.backends: list[Host] = harness.hosts[:BACKENDS]
        self.proxy_host = harness.host(PROXY_HOST)
        self.nodes: list[Node] = [
            harness.spawn(host, ["kvcache", "serve", "-l", host.address, "-p", str(BACKEND_PORT),
                                 *BACKEND_FLAGS], port=BACKEND_PORT, name=f"kvcache-{host.name}")
            for host in self.backends
        ]
        servers = ",".join(f"{h.address}:{BACKEND_PORT}" for h in self.backends)
        argv = ["kvcache", "proxy", "-l", self.proxy_host.address, "-p", str(PROXY_PORT),
                "--servers", servers, "--on-down", mode, "--timeout", str(PROXY_TIMEOUT_S),
                "--retry-backoff", RETRY_BACKOFF]
        self.proxy = harness.spawn(self.proxy_host, argv, port=PROXY_PORT, name=f"proxy-{mode}")
        self.ring = Ring([(h.address, BACKEND_PORT, 1) for h in self.backends])
        self.owner = {key: self.ring.get_server(key) for key in KEYS}

    def address(self, host: Host) -> str:
        return f"{host.address}:{BACKEND_PORT}"

    def client(self, host: Host | None = None) -> Client:
        """A pymemcache client of the proxy (or of a backend `host`)."""
        target = (self.proxy_host.address, PROXY_PORT) if host is None else (
            host.address, BACKEND_PORT)
        return Client(target, connect_timeout=HANG_S, timeout=HANG_S, default_noreply=False)

    def backend_state(self, address: str) -> str:
        """The proxy's view of a backend (`stats backends`), read over a raw connection."""
        with socket.create_connection((self.proxy_host.address, PROXY_PORT), HANG_S) as sock:
            sock.sendall(b"stats backends\r\n")
            data = b""
            while not data.endswith(b"END\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("the proxy closed during stats")
                data += chunk
        wanted = f"STAT backend:{address}:state "
        for line in data.decode().split("\r\n"):
            if line.startswith(wanted):
                return line[len(wanted):]
        raise KeyError(f"no state of {address} in stats backends")


def request(recorder: Recorder, process: str, conn: Client, f: str, key: str,
            value: str | None = None) -> None:
    """One recorded set or get through `conn` (which reconnects by itself after a failure)."""
    with recorder.op(process, f, key, value) as op:
        try:
            if f == F_SET:
                stored = conn.set(key, value)
                op.ok(value) if stored else op.fail("NOT_STORED")
            else:
                got = conn.get(key)
                op.ok(None if got is None else got.decode())
        except MemcacheServerError as exc:
            text = server_error(exc)
            op.fail(text) if f == F_GET or text == UNAVAILABLE else op.info(text)
        except (OSError, MemcacheError) as exc:
            op.info(f"{HANG}: {exc!r}" if isinstance(exc, TimeoutError) else repr(exc))
            conn.close()


def server_error(exc: MemcacheServerError) -> str:
    """The SERVER_ERROR line pymemcache raised (it keeps the message as bytes)."""
    message = exc.args[0] if exc.args else b""
    if isinstance(message, bytes):
        message = message.decode(errors="replace")
    return f"SERVER_ERROR {str(message).strip()}"


def client_loop(cluster: Cluster, recorder: Recorder, client: int, rng: random.Random,
                stop: threading.Event, progress: list[int]) -> None:
    """Sets and gets of random keys through the proxy until `stop`; runs on the client host."""
    conn = cluster.client()
    try:
        while not stop.is_set():
            key = rng.choice(KEYS)
            if rng.random() < 0.5:
                request(recorder, f"c{client}", conn, F_SET, key, f"c{client}-{progress[client]}")
            else:
                request(recorder, f"c{client}", conn, F_GET, key)
            progress[client] += 1
    finally:
        conn.close()


def wait_until(check: Callable[[], bool], what: str) -> None:
    """Poll `check` until it holds; raises TimeoutError naming `what` after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the kvcache drill waited {WAIT_S} s for {what}")
        time.sleep(POLL_S)


def instant(recorder: Recorder, process: str, f: str, key: Any, value: Any) -> int:
    """An instant entry in the history (a fault, a heal, a state seen); its time (ns)."""
    handle = recorder.invoke(process, f, key, value)
    handle.ok(value)
    assert handle.completion is not None
    return handle.completion.time


class Rounds:
    """The drill's main thread: cuts, waits and heals, one round at a time (module header)."""

    def __init__(self, cluster: Cluster, recorder: Recorder, rng: random.Random,
                 progress: list[int]) -> None:
        self.cluster = cluster
        self.harness = cluster.harness
        self.recorder = recorder
        self.rng = rng
        self.progress = progress
        self.observer = cluster.harness.executor(CLIENT_HOST)
        self.done: list[Round] = []

    def state_is(self, address: str, state: str) -> bool:
        return self.observer.submit(self.cluster.backend_state, address).result() == state

    def clients_work(self) -> None:
        """Wait until every client made OPS_PER_PHASE more requests."""
        wanted = [count + OPS_PER_PHASE for count in self.progress]
        wait_until(lambda: all(n >= w for n, w in zip(self.progress, wanted, strict=True)),
                   f"{OPS_PER_PHASE} requests of every client")

    def run(self) -> None:
        """One round: cut a backend, see it marked down, heal, see it up, probe it."""
        self.clients_work()
        node = self.rng.choice(self.cluster.nodes)
        nemesis = Nemesis(self.harness, random.Random(self.rng.random()),
                          [node, self.cluster.proxy], kinds=CUTS, recorder=self.recorder)
        kind = nemesis.step().split()[1]  # "fault <kind> <hosts>": the fault is in force
        cut = Round(self.cluster.address(node.host), kind)
        cut.cut_at = instant(self.recorder, OBSERVER, F_STATE, cut.victim, "cut")
        wait_until(lambda: self.state_is(cut.victim, "down"), f"{cut.victim} marked down")
        cut.down_at = instant(self.recorder, OBSERVER, F_STATE, cut.victim, "down")
        self.clients_work()
        cut.heal_at = instant(self.recorder, OBSERVER, F_STATE, cut.victim, "healing")
        nemesis.step()
        wait_until(lambda: self.state_is(cut.victim, "up"), f"{cut.victim} marked up")
        cut.up_at = instant(self.recorder, OBSERVER, F_STATE, cut.victim, "up")
        self.clients_work()
        self.observer.submit(self.probe_home, node.host, len(self.done)).result()
        self.done.append(cut)

    def probe_home(self, host: Host, round_no: int) -> None:
        """Set keys of `host` through the proxy (keys no client uses), read them on `host`."""
        address = self.cluster.address(host)
        keys = (f"probe:{i}" for i in itertools.count())
        mine = list(itertools.islice(
            (key for key in keys if self.cluster.ring.get_server(key) == address), HOME_PROBES))
        proxy, home = self.cluster.client(), self.cluster.client(host)
        try:
            for i, key in enumerate(mine):
                value = f"probe-r{round_no}-{i}"
                request(self.recorder, PROBE, proxy, F_SET, key, value)
                with self.recorder.op(PROBE, F_HOME_GET, key, value) as op:
                    got = home.get(key)
                    op.ok(None if got is None else got.decode())
        finally:
            proxy.close()
            home.close()


def drill_mode(mode: str, seed: int, duration_s: float, workdir: Path) -> DrillReport:
    """Rounds of cuts for `duration_s` seconds (at least one) with the proxy in `mode`."""
    rng = random.Random(seed)
    recorder = Recorder()
    progress = [0] * CLIENTS
    with Harness(HOSTS, workdir, seed=seed) as harness:
        cluster = Cluster(harness, mode)
        stop = threading.Event()
        clients = harness.executor(CLIENT_HOST, workers=CLIENTS)
        futures = [clients.submit(client_loop, cluster, recorder, client,
                                  random.Random(rng.random()), stop, progress)
                   for client in range(CLIENTS)]
        rounds = Rounds(cluster, recorder, random.Random(rng.random()), progress)
        end_at = time.monotonic() + duration_s
        try:
            while not rounds.done or time.monotonic() < end_at:
                rounds.run()
        finally:
            stop.set()
            for future in futures:
                future.result()
    for cut, after in zip(rounds.done, rounds.done[1:], strict=False):
        cut.next_at = after.cut_at
    history = recorder.history()
    ops = [op for op in history.operations() if op.f != F_STATE and op.process != NEMESIS_PROCESS]
    results = verdicts(ops, rounds.done, mode, cluster.owner.get)
    return finish(f"kvcache-{mode}", seed, history, results, len(rounds.done), workdir,
                  [tally(ops, rounds.done, cluster.owner.get)])


def verdicts(ops: list[Operation], rounds: list[Round], mode: str,
             owner: Callable[[str], str | None]) -> list[CheckResult]:
    """Every checker of kvcache_checks on one mode's operations."""
    def home(key: str) -> str:
        return owner(key) or ""

    return [check_stale_reads(ops), check_cut_routing(ops, rounds, mode, home),
            check_no_hangs(ops), check_recovery(ops, rounds)]


def tally(ops: list[Operation], rounds: list[Round], owner: Callable[[str], str | None]
          ) -> str:
    """A line of figures: outcomes by status, errors by kind, the cuts made, and the reads
    after a return that a stale copy would have failed (kvcache_checks.shadow_chances)."""
    status = Counter(f"{op.f} {op.status}" for op in ops)
    errors = Counter((op.error or "").split(":")[0] for op in ops if not op.ok)
    cuts = Counter(cut.kind for cut in rounds)
    chances = shadow_chances(ops, rounds, lambda key: owner(key) or "")
    return (f"requests {dict(status)}; errors {dict(errors)}; cuts {dict(cuts)}; "
            f"reads a stale copy would fail: {chances}")


def drill(seed: int, duration_s: float, workdir: Path) -> DrillReport:
    """Both failover modes, half of `duration_s` each; one report (checkers per mode)."""
    reports = [drill_mode(mode, seed, duration_s / len(MODES), workdir / mode) for mode in MODES]
    results = [CheckResult(f"{r.daemon} {c.checker}", c.valid, c.explanation, c.window,
                           c.details, c.origin) for r in reports for c in r.results]
    notes = [f"{r.daemon}: {note}" for r in reports for note in r.notes]
    return DrillReport("kvcache", seed, sum(r.operations for r in reports),
                       sum(r.faults for r in reports), results, workdir, notes)


__all__ = ["MODES", "drill", "drill_mode"]
