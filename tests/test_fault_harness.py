"""The fault harness itself (tests/faults): hosts in namespaces, network faults, relay, clock.

Real namespaces, real nftables rules, real processes: an echo node (tests/faults/echo.py) runs
on each of three hosts, and the test process talks to it from inside the hosts' namespaces.
Expected failures use a short connect timeout (a cut link never answers, so a slow machine
cannot make such a check pass wrongly); expected successes use a long one. Skips with one
exact reason where namespaces cannot be built (not root, no `ip`, no `nft`).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults import netns, nft
from tests.faults.echo import TIME_QUERY
from tests.faults.hosts import Harness, skip_unless_available

PORT = 7000
OK_TIMEOUT_S = 10.0
CUT_TIMEOUT_S = 0.5
QUIET_S = 1.0  # a datagram stream counts as over after this long without one
HOSTS = ("n1", "n2", "n3")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    skip_unless_available()
    with Harness(3, tmp_path_factory.mktemp("fault-harness")) as h:
        for host in h.hosts:
            h.spawn(host, ["tests.faults.echo", host.address, str(PORT)], port=PORT, name=host.name)
        yield h


@pytest.fixture(autouse=True)
def healed(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "harness" in request.fixturenames:
        request.getfixturevalue("harness").heal()


def addr(h: Harness, name: str) -> tuple[str, int]:
    return h.host(name).address, PORT


def echoes(h: Harness, src: str, dst: str) -> bool:
    """Whether a TCP echo round trip from `src` to the node on `dst` works."""
    try:
        with h.connect(src, addr(h, dst), OK_TIMEOUT_S) as sock:
            sock.sendall(b"ping")
            return sock.recv(16) == b"ping"
    except OSError:
        return False


def unreachable(h: Harness, src: str, dst: str) -> bool:
    """Whether a TCP connect from `src` to `dst` fails (times out or is refused)."""
    try:
        h.connect(src, addr(h, dst), CUT_TIMEOUT_S).close()
    except OSError:
        return True
    return False


def datagrams_through(h: Harness, src: str, dst: str, count: int) -> int:
    """Send `count` UDP datagrams from `src` to a socket on `dst`; how many arrived."""
    with h.socket(dst, socket.SOCK_DGRAM) as rx, h.socket(src, socket.SOCK_DGRAM) as tx:
        rx.bind((h.host(dst).address, 0))
        rx.settimeout(QUIET_S)
        for i in range(count):
            tx.sendto(i.to_bytes(4, "big"), rx.getsockname())
        seen = set()
        try:
            while len(seen) < count:
                seen.add(rx.recv(16))
        except TimeoutError:
            pass
        return len(seen)


def test_every_host_reaches_every_other(harness: Harness) -> None:
    for src in HOSTS:
        for dst in HOSTS:
            assert echoes(harness, src, dst), (src, dst)


def test_isolate_cuts_both_ways_and_heal_restores(harness: Harness) -> None:
    harness.isolate("n3")
    harness.isolate("n3")  # idempotent: same plan, same rules
    assert harness.plan.cuts == {("n3", "n1"), ("n3", "n2"), ("n1", "n3"), ("n2", "n3")}
    assert unreachable(harness, "n1", "n3")
    assert unreachable(harness, "n3", "n2")
    assert echoes(harness, "n1", "n2")
    assert echoes(harness, "n3", "n3")  # its own address still works inside the host
    harness.heal()
    assert "drop" not in harness.rules("n3")
    assert echoes(harness, "n1", "n3") and echoes(harness, "n3", "n2")


def test_split_into_majority_and_minority(harness: Harness) -> None:
    harness.split(["n1"], ["n2", "n3"])
    assert unreachable(harness, "n1", "n2") and unreachable(harness, "n3", "n1")
    assert echoes(harness, "n2", "n3") and echoes(harness, "n3", "n2")
    with pytest.raises(ValueError):
        harness.split(["n1", "n2"], ["n2"])


def test_bridge_hub_sees_both_sides_that_do_not_see_each_other(harness: Harness) -> None:
    harness.bridge("n1", "n2", "n3")
    assert echoes(harness, "n1", "n2") and echoes(harness, "n3", "n1")
    assert unreachable(harness, "n2", "n3") and unreachable(harness, "n3", "n2")


def test_one_way_drops_datagrams_in_one_direction_only(harness: Harness) -> None:
    harness.one_way("n1", "n2")
    assert datagrams_through(harness, "n1", "n2", 20) == 0
    assert datagrams_through(harness, "n2", "n1", 20) == 20
    assert datagrams_through(harness, "n1", "n3", 20) == 20
    # TCP needs both directions: the handshake fails whichever side starts it.
    assert unreachable(harness, "n1", "n2") and unreachable(harness, "n2", "n1")
    harness.heal()
    assert datagrams_through(harness, "n1", "n2", 20) == 20


def test_random_loss_all_none_and_some(harness: Harness) -> None:
    harness.random_loss("n2", 1.0)
    assert datagrams_through(harness, "n1", "n2", 50) == 0
    assert datagrams_through(harness, "n2", "n3", 50) == 0
    harness.random_loss("n2", 0.0)
    assert datagrams_through(harness, "n1", "n2", 200) == 200
    harness.random_loss(("n1", "n3"), 0.5)
    through = datagrams_through(harness, "n1", "n3", 200)
    assert 0 < through < 200, through
    assert "numgen random mod" in harness.rules("n3")
    assert datagrams_through(harness, "n1", "n2", 200) == 200  # other links untouched


def test_relay_forwards_delays_pauses_and_cuts(harness: Harness) -> None:
    relay = harness.relay("n1", "n2", PORT, seed=7)
    payload = random.Random(1).randbytes(1 << 20)
    relay.shape(0.001, jitter=0.01)  # jitter never reorders bytes of one connection
    with harness.connect("n1", relay.address, OK_TIMEOUT_S) as sock:
        sock.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = sock.recv(1 << 16)
            assert chunk, "relay closed early"
            got += chunk
        assert got == payload

        relay.shape(0.2, jitter=0.05)
        start = time.monotonic()
        sock.sendall(b"slow")
        assert sock.recv(16) == b"slow"
        assert time.monotonic() - start >= 0.4  # a lower bound: 0.2 s each way at least
        relay.shape(0.0)

        relay.pause()
        sock.sendall(b"held")
        sock.settimeout(CUT_TIMEOUT_S)
        with pytest.raises(TimeoutError):
            sock.recv(16)
        relay.resume()
        sock.settimeout(OK_TIMEOUT_S)
        assert sock.recv(16) == b"held"

        relay.cut()
        with pytest.raises(ConnectionError):
            sock.sendall(b"after cut")
            sock.recv(16)
    with pytest.raises(OSError), harness.connect("n1", relay.address, OK_TIMEOUT_S) as sock:
        sock.sendall(b"refused")
        if not sock.recv(16):
            raise ConnectionResetError("closed")
    relay.restore()
    with harness.connect("n1", relay.address, OK_TIMEOUT_S) as sock:
        sock.sendall(b"back")
        assert sock.recv(16) == b"back"


def test_clients_on_a_host_through_threads_and_loops(harness: Harness) -> None:
    def round_trip() -> bytes:
        with socket.create_connection(addr(harness, "n2"), timeout=OK_TIMEOUT_S) as sock:
            sock.sendall(b"thread")
            return sock.recv(16)

    async def async_round_trip() -> bytes:
        reader, writer = await asyncio.open_connection(*addr(harness, "n2"))
        writer.write(b"loop")
        data = await reader.read(16)
        writer.close()
        return data

    executor, loop = harness.executor("n1"), harness.loop("n1")
    assert executor.submit(round_trip).result() == b"thread"
    assert loop.run(async_round_trip()) == b"loop"
    harness.one_way("n2", "n1")  # replies from n2 never reach n1: the handshake fails
    with pytest.raises(OSError):
        executor.submit(socket.create_connection, addr(harness, "n2"), CUT_TIMEOUT_S).result()
    with pytest.raises(OSError):
        loop.run(asyncio.wait_for(asyncio.open_connection(*addr(harness, "n2")), CUT_TIMEOUT_S))


def test_a_real_daemon_runs_on_a_host(harness: Harness, tmp_path: Path) -> None:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    n2 = harness.host("n2")
    port = PORT + 2
    argv = ["idgen", "serve", "--listen", f"{n2.address}:{port}", "--worker-id", "5",
            "--data-dir", str(tmp_path / "idgen"), "--requirepass", "pw"]  # fmt: skip
    node = harness.spawn(n2, argv, port=port, name="idgen")

    def next_id(timeout: float) -> int:
        client = redis.Redis(n2.address, port, password="pw", socket_timeout=timeout,
                             socket_connect_timeout=timeout, protocol=2,
                             retry=Retry(NoBackoff(), 0))  # fmt: skip
        try:
            return int(client.execute_command("NEXT"))
        finally:
            client.close()

    client_thread = harness.executor("n1")
    first = client_thread.submit(next_id, OK_TIMEOUT_S).result()
    harness.isolate("n2")
    with pytest.raises((redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        client_thread.submit(next_id, CUT_TIMEOUT_S).result()
    harness.heal()
    node.restart()  # the same data directory
    assert client_thread.submit(next_id, OK_TIMEOUT_S).result() > first


def node_clocks(h: Harness, host: str, port: int) -> tuple[float, float]:
    """The (wall, monotonic) time the echo node on `host`:`port` reads now."""
    with h.socket(host, socket.SOCK_DGRAM) as sock:
        sock.settimeout(OK_TIMEOUT_S)
        sock.sendto(TIME_QUERY, (h.host(host).address, port))
        wall, mono = sock.recv(64).split()
        return float(wall), float(mono)


def wait_for_offset(h: Harness, host: str, port: int, offset: float) -> tuple[float, float]:
    """Poll the node until its wall clock reads about `offset` ahead of ours."""
    deadline = time.monotonic() + OK_TIMEOUT_S
    while True:
        wall, mono = node_clocks(h, host, port)
        if abs(wall - time.time() - offset) < 60:
            return wall, mono
        assert time.monotonic() < deadline, f"offset {wall - time.time()} not {offset}"
        time.sleep(0.05)


def test_clock_fault_moves_the_wall_clock_at_run_time(harness: Harness) -> None:
    skip_unless_available(clock_faults=True)
    clock_port = PORT + 1
    harness.clock("n1").set(3600)
    node = harness.spawn(
        "n1",
        ["tests.faults.echo", harness.host("n1").address, str(clock_port)],
        port=clock_port,
        name="clock",
        faked_clock=True,
    )
    _, mono_ahead = wait_for_offset(harness, "n1", clock_port, 3600)
    harness.clock("n1").jump(-3600 - 600)  # back, to 10 minutes behind
    _, mono_behind = wait_for_offset(harness, "n1", clock_port, -600)
    assert mono_behind >= mono_ahead  # the monotonic clock does not jump back
    assert echoes(harness, "n2", "n1")  # nodes not on the clock file are unaffected
    node.kill()


def test_process_faults_stop_kill_and_restart(harness: Harness) -> None:
    node = next(n for n in harness.nodes if n.host.name == "n3" and n.ready_port == PORT)
    node.pause()
    with harness.connect("n1", addr(harness, "n3"), OK_TIMEOUT_S) as sock:
        sock.sendall(b"wait")
        sock.settimeout(CUT_TIMEOUT_S)
        with pytest.raises(TimeoutError):
            sock.recv(16)
        node.resume()
        sock.settimeout(OK_TIMEOUT_S)
        assert sock.recv(16) == b"wait"
    node.kill()
    assert not node.alive() and unreachable(harness, "n1", "n3")
    node.restart()
    assert echoes(harness, "n1", "n3")


def our_namespaces(h: Harness) -> list[str]:
    return [name for name in netns.listed() if name.startswith(h.prefix)]


def root_links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout


def test_teardown_after_a_failing_test_leaves_nothing(tmp_path: Path) -> None:
    skip_unless_available()
    links_before = {line.split(":")[1] for line in root_links().splitlines()}
    h = Harness(2, tmp_path)
    with pytest.raises(RuntimeError, match="boom"), h:
        node = h.spawn("n1", ["tests.faults.echo", "10.77.0.1", str(PORT)], port=PORT)
        h.isolate("n2")
        h.relay("n1", "n2", PORT)
        assert len(our_namespaces(h)) == 3
        raise RuntimeError("boom")
    assert our_namespaces(h) == []
    assert node.daemon.proc is not None and node.daemon.proc.poll() is not None
    assert {line.split(":")[1] for line in root_links().splitlines()} == links_before


CRASHING_RUN = """
import os, sys
from pathlib import Path
from tests.faults.hosts import Harness
h = Harness(2, Path(sys.argv[1])).open()
node = h.spawn("n1", ["tests.faults.echo", "10.77.0.1", "7000"], port=7000)
print(h.prefix, node.pid, flush=True)
os.kill(os.getpid(), 9)
"""


def test_stale_namespaces_of_a_killed_run_are_removed(tmp_path: Path) -> None:
    skip_unless_available()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", CRASHING_RUN, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert out.returncode == -signal.SIGKILL, out.stderr
    prefix, orphan = out.stdout.split()
    assert netns.ours(prefix), "the killed run left its namespaces (as a crash would)"
    assert running(int(orphan))
    removed = netns.remove_stale()
    assert sorted(removed) == sorted(f"{prefix}{role}" for role in ("br", "n1", "n2"))
    assert netns.ours(prefix) == []
    deadline = time.monotonic() + OK_TIMEOUT_S
    while running(int(orphan)):
        assert time.monotonic() < deadline, "the orphaned node still runs"
        time.sleep(0.05)


INTERRUPTED_RUN = """
import sys, time
from pathlib import Path
from tests.faults.hosts import Harness
with Harness(2, Path(sys.argv[1])) as h:
    node = h.spawn("n1", ["tests.faults.echo", "10.77.0.1", "7000"], port=7000)
    print(h.prefix, node.pid, flush=True)
    time.sleep(120)
"""


def test_sigterm_to_the_test_process_still_tears_down(tmp_path: Path) -> None:
    skip_unless_available()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED_RUN, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    prefix, node_pid = proc.stdout.readline().split()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert netns.ours(prefix) == []
    assert not running(int(node_pid))


def running(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie waiting for its reaper."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_rules_follow_the_plan_alone() -> None:
    plan = nft.FaultPlan()
    addresses = {"a": "10.0.0.1", "b": "10.0.0.2"}
    plan.cut("a", "b")
    plan.cut("a", "a")
    plan.lose(nft.ANY, "b", 0.25)
    plan.lose("b", "a", 1.0)
    assert nft.input_rules(plan, "b", addresses) == [
        "ip saddr 10.0.0.1 drop",
        f'iifname "{nft.INNER_LINK}" numgen random mod {nft.LOSS_SCALE} < 2500 drop',
    ]
    assert nft.input_rules(plan, "a", addresses) == ["ip saddr 10.0.0.2 drop"]
    plan.lose("b", "a", 0.0)
    assert nft.input_rules(plan, "a", addresses) == []
    with pytest.raises(ValueError):
        plan.lose("a", "b", 1.5)
    plan.clear()
    assert nft.input_rules(plan, "b", addresses) == []


def test_unavailable_reasons_name_the_missing_thing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    assert netns.unavailable_reason() == "network namespaces need root (running as uid 1000)"
    monkeypatch.setattr(netns.os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns.shutil, "which", lambda tool: None if tool == "nft" else tool)
    assert netns.unavailable_reason() == "`nft` is not installed (Debian package nftables)"
