"""idgen as a cluster of real processes: the issue's acceptance test and the peer checks.

Three daemons on 127.0.0.2, .3 and .4 (worker ids and node ids 1-3), each with a node port
(core/rpc) and the other two as --peers (`ID=HOST:PORT` of their node ports). Twelve client
threads fetch well over a million ids with a mix of `NEXT` and `NEXT n`; in the middle one
daemon is SIGKILLed and restarted on its data directory. Its clients retry elsewhere while it
is down and come back to it once it listens again.

Checked: no id is issued twice across everything collected, ids on one connection strictly
increase, every id carries the worker id of the daemon that gave it, and the restarted
daemon's ids are all greater than every id its previous process issued. Then, every peer
check going over core/rpc: a daemon whose worker id a reachable peer already holds is
refused, as is one whose clock is 5 s off the peers' median; a running daemon that later
meets a peer with its own worker id stops NEXT with -CONFLICT (and resumes once that peer is
gone); a peer that is down is skipped; a wrong cluster secret is refused and logged on both
sides; option mistakes are refused before anything listens.

Timing is never asserted: every wait polls a condition, and deadlines only detect hangs.
"""

from __future__ import annotations

import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from idgen.layout import parse
from tests.conftest import find_free_port, wait_for_tcp_port
from tests.procs import Daemon, idgen_daemon

HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
CLIENTS = 12
TOTAL_IDS = 1_000_000
KILL_AFTER_IDS = 350_000  # the SIGKILL comes once this many ids were collected
WHILE_DOWN_IDS = 60_000  # ids the other two daemons must serve while the victim is down
AFTER_RESTART_IDS = 60_000  # ids the restarted daemon must serve before the clients stop
HANG_S = 120.0  # a phase that takes longer than this is a hang, not slowness
# No reply from a live daemon takes this long; a timeout is a server hang and fails the
# test (a killed daemon resets its connections, it does not go silent).
SOCKET_TIMEOUT_S = 20.0
# Batch sizes the clients draw from: single NEXT is common but the big batches carry the
# bulk of the million.
REQUEST_SIZES = [None, None, None, 1, 7, 100, 1000, 4096, 5000, 20_000]


# -- a small RESP2 client over a raw socket ---------------------------------------------------


class ServerError(Exception):
    """The server answered with a RESP error line (the text without the leading '-')."""


class Conn:
    """One blocking RESP2 connection; replies are read by hand so nothing is hidden."""

    def __init__(self, host: str, port: int, timeout: float = SOCKET_TIMEOUT_S) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb", buffering=256 * 1024)

    def close(self) -> None:
        try:
            self.file.close()
        finally:
            self.sock.close()

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _line(self) -> bytes:
        line = self.file.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError(f"connection closed mid-reply ({line!r})")
        return line[:-2]

    def _reply(self) -> object:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b":":
            return int(rest)
        if kind == b"-":
            raise ServerError(rest.decode())
        if kind == b"+":
            return rest.decode()
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self.file.read(size + 2)
            if len(data) != size + 2:
                raise ConnectionError("connection closed mid-bulk")
            return data[:-2]
        if kind == b"*":
            return [self._reply() for _ in range(int(rest))]
        raise ConnectionError(f"unexpected reply line {line!r}")

    def call(self, *args: object) -> object:
        parts = [str(a).encode() if not isinstance(a, bytes) else a for a in args]
        payload = b"*%d\r\n" % len(parts) + b"".join(
            b"$%d\r\n%s\r\n" % (len(p), p) for p in parts
        )
        self.sock.sendall(payload)
        return self._reply()

    def info(self, section: str = "") -> dict[str, str]:
        raw = self.call("INFO", section) if section else self.call("INFO")
        assert isinstance(raw, bytes)
        fields: dict[str, str] = {}
        for line in raw.decode().splitlines():
            if line and not line.startswith("#") and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value
        return fields


def next_ids(conn: Conn, count: int | None) -> list[int]:
    """`NEXT` (count None) or `NEXT count`, checked for shape."""
    if count is None:
        reply = conn.call("NEXT")
        assert type(reply) is int, reply
        return [reply]
    reply = conn.call("NEXT", count)
    assert isinstance(reply, list) and len(reply) == count, (count, type(reply))
    return reply  # type: ignore[return-value]


def poll(condition: Callable[[], bool], what: str, timeout: float = HANG_S) -> None:
    """Wait until `condition()` holds; the deadline only catches a hang."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout:.0f}s")
        time.sleep(0.05)


# -- processes --------------------------------------------------------------------------------


@pytest.fixture
def procs() -> Iterator[list[Daemon]]:
    """Every daemon a test starts goes in this list; whatever still runs is stopped after."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.alive():
            try:
                daemon.stop()
            except Exception:  # noqa: BLE001 - teardown must reach every process
                daemon.kill()


def start_all(daemons: list[Daemon]) -> None:
    """Start processes together (startup overlaps), then wait for each port."""
    for daemon in daemons:
        daemon.start(wait=False)
    for daemon in daemons:
        assert daemon.proc is not None
        try:
            wait_for_tcp_port(daemon.host, daemon.port, timeout=30, proc=daemon.proc)
        except (RuntimeError, TimeoutError) as exc:
            raise AssertionError(f"{exc}\n--- log ---\n{daemon.log()}") from None


def restart(daemon: Daemon) -> Daemon:
    """A new process with the same argv: same address, same data directory."""
    return Daemon(daemon.argv, daemon.host, daemon.port, daemon.log_path)


@dataclass
class Node:
    """An idgen daemon with a node port: its node id and node-port address."""

    daemon: Daemon
    node_id: int
    peer_address: str  # HOST:PORT of its node port


def node(
    tmp: Path, worker_id: int, node_id: int, host: str,
    peers: dict[int, str] | None = None, extra: list[str] | None = None,
) -> Node:
    """An idgen daemon (not started) with `--id node_id`, a node port on `host` and
    `peers` ({node id: node-port address}) as its --peers."""
    peer_address = f"{host}:{find_free_port(host)}"
    options = ["--id", str(node_id), "--peer-listen", peer_address]
    if peers:
        options += ["--peers", ",".join(f"{i}={a}" for i, a in sorted(peers.items()))]
    daemon = idgen_daemon(tmp, worker_id, host=host, extra=options + (extra or []))
    return Node(daemon, node_id, peer_address)


@dataclass
class Cluster:
    nodes: list[Node]
    worker_of: dict[str, int]  # client address -> worker id

    @property
    def daemons(self) -> list[Daemon]:
        return [n.daemon for n in self.nodes]

    @property
    def addresses(self) -> list[str]:
        return [n.daemon.address for n in self.nodes]

    @property
    def peers(self) -> dict[int, str]:
        """Every node's id and node port: what a newcomer passes as --peers."""
        return {n.node_id: n.peer_address for n in self.nodes}


@pytest.fixture
def cluster(tmp_path: Path, procs: list[Daemon]) -> Cluster:
    peer_ports = {i + 1: f"{h}:{find_free_port(h)}" for i, h in enumerate(HOSTS)}
    nodes = []
    for index, host in enumerate(HOSTS):
        node_id = index + 1
        others = [f"{i}={a}" for i, a in peer_ports.items() if i != node_id]
        extra = ["--id", str(node_id), "--peer-listen", peer_ports[node_id],
                 "--peers", ",".join(others), "--peer-check-interval-ms", "500"]
        daemon = idgen_daemon(tmp_path, node_id, host=host, extra=extra)
        nodes.append(Node(daemon, node_id, peer_ports[node_id]))
    procs.extend(n.daemon for n in nodes)
    start_all([n.daemon for n in nodes])
    return Cluster(nodes, {n.daemon.address: n.node_id for n in nodes})


# -- the load -----------------------------------------------------------------------------------


@dataclass
class Session:
    """What one client saw on one TCP connection."""

    address: str
    pid: int  # of the daemon process that accepted the connection
    ids: list[int] = field(default_factory=list)


@dataclass
class Shared:
    addresses: list[str]
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    total: int = 0
    by_pid: dict[int, int] = field(default_factory=dict)  # ids served per daemon process
    errors: dict[str, int] = field(default_factory=dict)  # kind of failure -> count
    crashes: list[BaseException] = field(default_factory=list)

    def add(self, pid: int, n: int) -> None:
        with self.lock:
            self.total += n
            self.by_pid[pid] = self.by_pid.get(pid, 0) + n

    def failed(self, kind: str) -> None:
        with self.lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1


class Client(threading.Thread):
    """Fetches ids until told to stop. Starts each connection at its home daemon, falls
    over to the others on any error, and goes home again after a while, so it returns to
    a daemon that was restarted."""

    def __init__(self, index: int, shared: Shared) -> None:
        super().__init__(name=f"idgen-client-{index}", daemon=True)
        self.shared = shared
        self.home = index % len(shared.addresses)
        self.rng = random.Random(index)
        self.sessions: list[Session] = []

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            with self.shared.lock:
                self.shared.crashes.append(exc)

    def _run(self) -> None:
        shared = self.shared
        order = shared.addresses[self.home:] + shared.addresses[:self.home]
        attempt = 0
        while not shared.stop.is_set():
            address = order[attempt % len(order)]
            host, _, port = address.rpartition(":")
            try:
                conn = Conn(host, int(port))
            except TimeoutError:
                raise AssertionError(f"connecting to {address} hangs") from None
            except OSError:
                shared.failed("connect")
                attempt += 1
                time.sleep(0.02)
                continue
            try:
                with conn:
                    pid = int(conn.info("server")["process_id"])
                    session = Session(address, pid)
                    self.sessions.append(session)
                    # A connection lives for some dozens of requests, then the client goes
                    # back to its home daemon (attempt 0).
                    for _ in range(self.rng.randint(10, 60)):
                        if shared.stop.is_set():
                            break
                        ids = next_ids(conn, self.rng.choice(REQUEST_SIZES))
                        session.ids.extend(ids)
                        shared.add(pid, len(ids))
                attempt = 0
            except ServerError as exc:
                # -CLOCK, -CONFLICT, -SKEW ...: try another daemon for a while.
                shared.failed(str(exc).split(" ", 1)[0])
                attempt += 1
                time.sleep(0.02)
            except TimeoutError:
                raise AssertionError(f"no reply from {address} in {SOCKET_TIMEOUT_S}s") from None
            except (OSError, ConnectionError):
                shared.failed("connection")
                attempt += 1


def pid_of(daemon: Daemon) -> int:
    assert daemon.proc is not None
    return daemon.proc.pid


@pytest.mark.timeout(600)
def test_a_million_ids_across_a_crash(cluster: Cluster, procs: list[Daemon]) -> None:
    shared = Shared(cluster.addresses)
    clients = [Client(i, shared) for i in range(CLIENTS)]
    victim = cluster.daemons[1]
    old_pid = pid_of(victim)
    for client in clients:
        client.start()
    try:
        poll(lambda: shared.total >= KILL_AFTER_IDS or bool(shared.crashes), "first ids")
        assert not shared.crashes, shared.crashes
        assert shared.by_pid.get(old_pid, 0) > 0, "the victim served nothing before the kill"

        victim.kill()
        at_kill = shared.total
        # The clients carry on with the other two daemons.
        poll(lambda: shared.total >= at_kill + WHILE_DOWN_IDS or bool(shared.crashes),
             "ids from the survivors")

        reborn = restart(victim)
        procs.append(reborn)
        reborn.start()
        new_pid = pid_of(reborn)
        cluster.nodes[1].daemon = reborn
        poll(
            lambda: bool(shared.crashes) or (
                shared.total >= TOTAL_IDS
                and shared.by_pid.get(new_pid, 0) >= AFTER_RESTART_IDS
            ),
            "a million ids, some from the restarted daemon",
        )
    finally:
        shared.stop.set()
        for client in clients:
            client.join(timeout=HANG_S)
    assert not shared.crashes, shared.crashes
    assert not any(c.is_alive() for c in clients), "a client hangs"

    sessions = [s for c in clients for s in c.sessions]
    print(f"ids {shared.total}, connections {len(sessions)}, per process {shared.by_pid}, "
          f"failures {shared.errors}")
    everything = [i for s in sessions for i in s.ids]
    assert len(everything) >= TOTAL_IDS
    assert len(set(everything)) == len(everything), "an id was issued twice"

    for session in sessions:
        ids = session.ids
        assert all(a < b for a, b in zip(ids, ids[1:], strict=False)), (
            f"ids on a connection to {session.address} are not strictly increasing"
        )
        worker = cluster.worker_of[session.address]
        wrong = [i for i in ids if parse(i).worker != worker]
        assert not wrong, f"{session.address} (worker {worker}) issued {wrong[:3]}"

    def ids_of(pid: int) -> list[int]:
        return [i for s in sessions if s.pid == pid for i in s.ids]

    before, after = ids_of(old_pid), ids_of(new_pid)
    assert before and after
    assert min(after) > max(before), "the restarted daemon went back below its old ids"
    assert {s.pid for s in sessions} <= {pid_of(d) for d in cluster.daemons} | {old_pid}
    # Clients of the victim really did fail over: someone saw it refuse or vanish.
    assert shared.errors.get("connect", 0) + shared.errors.get("connection", 0) > 0

    for daemon in cluster.daemons:
        assert daemon.alive(), daemon.log()
        assert daemon.stop() == 0, daemon.log()
        log = daemon.log()
        assert "stopped" in log
        assert "Traceback" not in log and "internal error" not in log, log
    # Nobody ever doubted a peer under this load.
    for daemon in cluster.daemons:
        assert "CONFLICT" not in daemon.log() and "SKEW" not in daemon.log(), daemon.log()


# -- refused starts -----------------------------------------------------------------------------


def next_works(cluster: Cluster) -> None:
    """Every daemon of the cluster still issues ids with its own worker id."""
    for daemon in cluster.daemons:
        with Conn(daemon.host, daemon.port) as conn:
            assert parse(next_ids(conn, None)[0]).worker == cluster.worker_of[daemon.address]


def test_worker_id_held_by_a_reachable_peer_is_refused(
    cluster: Cluster, tmp_path: Path
) -> None:
    taken = cluster.nodes[1]
    intruder = node(tmp_path, 2, 9, "127.0.0.5", peers=cluster.peers).daemon
    code = intruder.run_to_exit(timeout=60)
    log = intruder.log()
    assert code == 1, log
    assert "refusing to start" in log, log
    assert (f"CONFLICT worker id 2 is also held by peer 2 at {taken.peer_address}; "
            "refusing to issue ids") in log, log
    # It never listened for clients, and the cluster is untouched.
    with pytest.raises(OSError):
        socket.create_connection((intruder.host, intruder.port), timeout=2).close()
    next_works(cluster)


@pytest.mark.parametrize("offset_ms", [5000, -5000])
def test_clock_far_from_the_peers_is_refused(
    cluster: Cluster, tmp_path: Path, offset_ms: int
) -> None:
    skewed = node(tmp_path, 9, 9, "127.0.0.6", peers=cluster.peers,
                  extra=["--clock-offset-ms", str(offset_ms)]).daemon
    code = skewed.run_to_exit(timeout=60)
    log = skewed.log()
    assert code == 1, log
    match = re.search(r"refusing to start: SKEW this clock is ([+-]\d+) ms from the median "
                      r"of the peers \(limit 1000 ms\)", log)
    assert match, log
    assert abs(int(match.group(1))) > 1000
    assert (match.group(1)[0] == "+") == (offset_ms > 0), log


def test_skew_message_gives_the_direction_of_this_clock(
    tmp_path: Path, procs: list[Daemon]
) -> None:
    reference = node(tmp_path, 1, 1, "127.0.0.2")
    procs.append(reference.daemon)
    reference.daemon.start()
    ahead = node(tmp_path, 2, 2, "127.0.0.3", peers={1: reference.peer_address},
                 extra=["--clock-offset-ms", "5000"]).daemon
    assert ahead.run_to_exit(timeout=60) != 0
    # The clock is 5 s ahead of its peer (median of itself and the peer: +2.5 s).
    assert re.search(r"SKEW this clock is \+\d+ ms", ahead.log()), ahead.log()


# -- a conflict that appears while running, and a peer that is down ------------------------------


def test_running_daemon_stops_next_when_a_peer_shares_its_worker_id(
    tmp_path: Path, procs: list[Daemon]
) -> None:
    # A's peer (node 2) is down when A starts: it is skipped, and A starts alone.
    b_host = "127.0.0.3"
    b_peer = f"{b_host}:{find_free_port(b_host)}"
    a = node(tmp_path, 5, 1, "127.0.0.2", peers={2: b_peer},
             extra=["--peer-check-interval-ms", "200"]).daemon
    procs.append(a)
    a.start()
    assert f"peer 2 at {b_peer} skipped (cannot be asked)" in a.log(), a.log()
    with Conn(a.host, a.port) as conn:
        assert conn.info("idgen")["peers_reachable"] == "0"
        before = next_ids(conn, 100)
        # B takes the same worker id and knows no peers, so nothing stops it starting.
        b = idgen_daemon(tmp_path, 5, host=b_host,
                         extra=["--id", "2", "--peer-listen", b_peer])
        procs.append(b)
        b.start()
        with Conn(b.host, b.port) as b_conn:
            assert parse(next_ids(b_conn, None)[0]).worker == 5

        refusal: list[str] = []

        def a_refuses() -> bool:
            try:
                next_ids(conn, None)
            except ServerError as exc:
                refusal.append(str(exc))
                return True
            return False

        poll(a_refuses, "A to notice the peer with its worker id")
        assert refusal[0] == (
            f"CONFLICT worker id 5 is also held by peer 2 at {b_peer}; refusing to issue ids"
        )
        with pytest.raises(ServerError, match=r"^CONFLICT "):
            next_ids(conn, 10)  # batches too
        assert conn.info("idgen")["clock_state"].startswith("CONFLICT")
        assert conn.call("PING") == "PONG"  # only NEXT stops
        assert "stopping NEXT: CONFLICT worker id 5" in a.log()

        # Once B is gone the check passes again and A carries on, above its old ids.
        assert b.stop() == 0
        resumed: list[int] = []

        def a_serves() -> bool:
            try:
                resumed.extend(next_ids(conn, 100))
            except ServerError:
                return False
            return True

        poll(a_serves, "A to resume after B stopped")
        assert min(resumed) > max(before)
        assert "peer check passes again; NEXT resumes" in a.log()
    assert a.stop() == 0


def test_second_daemon_with_the_running_ones_worker_id_is_refused_when_it_knows_it(
    tmp_path: Path, procs: list[Daemon]
) -> None:
    """The other side of the scenario above: B configured with A as its peer refuses."""
    a = node(tmp_path, 5, 1, "127.0.0.2")
    procs.append(a.daemon)
    a.daemon.start()
    b = node(tmp_path, 5, 2, "127.0.0.3", peers={1: a.peer_address}).daemon
    assert b.run_to_exit(timeout=60) != 0
    assert (f"refusing to start: CONFLICT worker id 5 is also held by peer 1 at "
            f"{a.peer_address}") in b.log()
    # A never noticed (it has no peers) and still serves.
    with Conn(a.daemon.host, a.daemon.port) as conn:
        assert parse(next_ids(conn, None)[0]).worker == 5
    assert a.daemon.stop() == 0


# -- the cluster secret -------------------------------------------------------------------------


def test_a_wrong_cluster_secret_is_refused_and_logged(
    tmp_path: Path, procs: list[Daemon]
) -> None:
    a = node(tmp_path, 1, 1, "127.0.0.2", extra=["--cluster-secret", "right"])
    procs.append(a.daemon)
    a.daemon.start()
    # With the right secret a peer is asked; with a wrong one it cannot be. (Checks repeat
    # every 200 ms: on a busy machine a first check may time out.)
    often = ["--peer-check-interval-ms", "200"]
    good = node(tmp_path, 2, 2, "127.0.0.3", peers={1: a.peer_address},
                extra=["--cluster-secret", "right", *often]).daemon
    wrong = node(tmp_path, 3, 3, "127.0.0.4", peers={1: a.peer_address},
                 extra=["--cluster-secret", "wrong", *often]).daemon
    procs.extend([good, wrong])
    start_all([good, wrong])

    def reachable(daemon: Daemon) -> str:
        with Conn(daemon.host, daemon.port) as conn:
            return conn.info("idgen")["peers_reachable"]

    poll(lambda: reachable(good) == "1", "the peer with the right secret to answer")
    # Refused by A (logged there), and the refusal logged by the one that tried.
    refused = re.compile(r"rpc: refusing .*wrong cluster secret")
    poll(lambda: bool(refused.search(a.daemon.log())), "A to log the refusal")
    tried = re.compile(r"rpc: node 3 cannot reach node 1 at .*peer refused authentication")
    poll(lambda: bool(tried.search(wrong.log())), "the refused node to log why")
    assert f"peer 1 at {a.peer_address} skipped (cannot be asked)" in wrong.log(), wrong.log()
    assert reachable(wrong) == "0"
    for daemon in (a.daemon, good, wrong):
        assert daemon.stop() == 0, daemon.log()
        assert "Traceback" not in daemon.log(), daemon.log()


# -- option mistakes: refused before anything listens --------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--peers", "2=127.0.0.3:7000"], "--peers needs --peer-listen"),
        (["--peer-listen", "127.0.0.2:7000"], "--peer-listen needs --id"),
        (["--id", "0", "--peer-listen", "127.0.0.2:7000"], "--id must be >= 1"),
        (["--id", "1", "--peer-listen", "127.0.0.2:7000", "--peers", "127.0.0.3:7000"],
         "--peers item '127.0.0.3:7000': expected ID=HOST:PORT"),
        (["--id", "2", "--peer-listen", "127.0.0.2:7000", "--peers", "2=127.0.0.3:7000"],
         "--peers gives this node's id 2 the address 127.0.0.3:7000, but its --peer-listen "
         "is 127.0.0.2:7000: two nodes cannot share an id"),
        (["--id", "1", "--peer-listen", "192.0.2.1:7000"],
         "refusing node-to-node traffic on 192.0.2.1 without --cluster-secret"),
        (["--id", "1", "--peer-listen", "192.0.2.1:7000", "--protected-mode", "no",
          "--requirepass", "pw"],
         "refusing node-to-node traffic on 192.0.2.1 without --cluster-secret"),
        (["--id", "1", "--peer-listen", "127.0.0.2:7000", "--peers", "2=192.0.2.1:7000"],
         "node-to-node traffic with 192.0.2.1 needs a cluster secret"),
    ],
)
def test_node_port_option_mistakes_are_refused(
    tmp_path: Path, options: list[str], message: str
) -> None:
    daemon = idgen_daemon(tmp_path, 1, host="127.0.0.2", extra=options)
    assert daemon.run_to_exit(timeout=60) == 2, daemon.log()
    assert message in daemon.log(), daemon.log()
    assert not (tmp_path / f"idgen-1-{daemon.host}-{daemon.port}").exists()
