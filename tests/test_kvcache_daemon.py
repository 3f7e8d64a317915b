"""The kvcache daemon as a process: memcached's flags, limits, signals, logs, memory."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from tests.kvcache_wire import (
    Memcached,
    converse,
    reference_missing,
    request,
    stat_values,
)
from tests.procs import ROOT, kvcache_daemon

MB = 1024 * 1024
WAIT_S = 20.0  # how long to wait for a background effect before failing (not a timing check)


def stats(daemon, sub: str = "") -> dict[str, str]:
    return stat_values(request(daemon.host, daemon.port, f"stats {sub}".strip().encode()
                               + b"\r\n"))


def wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def started(tmp_path):
    daemons = []

    def start(*flags: str):
        daemon = kvcache_daemon(tmp_path, extra=list(flags)).start()
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        assert daemon.stop() == 0, daemon.log()


def test_stats_settings_reflect_the_flags(started) -> None:
    daemon = started("-m", "32", "-c", "77", "-I", "512k", "-v", "-M", "-t", "8", "-U", "0")
    settings = stats(daemon, "settings")
    assert settings["maxbytes"] == str(32 * MB)
    assert settings["maxconns"] == "77"
    assert settings["item_size_max"] == str(512 * 1024)
    assert settings["tcpport"] == str(daemon.port)
    assert settings["inter"] == "127.0.0.1"
    assert settings["verbosity"] == "1"
    assert settings["evictions"] == "off"
    assert settings["num_threads"] == "1"  # -t is accepted; one event loop serves all
    general = stats(daemon)
    assert general["limit_maxbytes"] == str(32 * MB)
    assert general["max_connections"] == "77"
    assert general["pid"] == str(daemon.proc.pid)
    assert general["threads"] == "1"


def test_defaults_are_memcacheds(started) -> None:
    settings = stats(started(), "settings")
    assert settings["maxbytes"] == str(64 * MB)
    assert settings["maxconns"] == "1024"
    assert settings["item_size_max"] == str(MB)
    assert settings["evictions"] == "on"


def test_item_size_flag(started) -> None:
    daemon = started("-I", "2m")
    largest = 2 * MB - 60
    head = b"set k 0 0 %d\r\n"
    assert request(daemon.host, daemon.port, head % largest + b"x" * largest + b"\r\n") == (
        b"STORED\r\n")
    over = largest + 1
    assert request(daemon.host, daemon.port, head % over + b"x" * over + b"\r\n") == (
        b"SERVER_ERROR object too large for cache\r\n")


@pytest.mark.skipif(reference_missing() is not None, reason=reference_missing() or "")
def test_item_size_flag_agrees_with_memcached(started, tmp_path) -> None:
    ours = started("-I", "2m", "-m", "64")
    real = Memcached(tmp_path, ["-I", "2m", "-m", "64", "-t", "1", "-U", "0"]).start()
    try:
        for name in ("item_size_max", "slab_chunk_max"):
            assert stats(ours, "settings")[name] == stats(real, "settings")[name], name
        for size in (2 * MB - 60, 2 * MB - 59):
            stream = b"set k 0 0 %d\r\n" % size + b"x" * size + b"\r\n"
            assert request(ours.host, ours.port, stream) == request(real.host, real.port, stream)
    finally:
        real.stop()


def test_connection_limit(started) -> None:
    daemon = started("-c", "2")
    first = socket.create_connection((daemon.host, daemon.port), timeout=10)
    second = socket.create_connection((daemon.host, daemon.port), timeout=10)
    try:
        for sock in (first, second):
            sock.sendall(b"version\r\n")
            assert sock.recv(100) == b"VERSION 1.6.18\r\n"
        refused, closed = converse(daemon.host, daemon.port, b"version\r\n", sentinel=False)
        assert (refused, closed) == (b"ERROR Too many open connections\r\n", True)
        first.close()
        wait_until(lambda: stats_via(second)["curr_connections"] == "1", "the slot to free")
        assert request(daemon.host, daemon.port, b"version\r\n") == b"VERSION 1.6.18\r\n"
        assert int(stats_via(second)["rejected_connections"]) >= 1
    finally:
        first.close()
        second.close()


def stats_via(sock: socket.socket) -> dict[str, str]:
    sock.sendall(b"stats\r\n")
    out = b""
    while not out.endswith(b"END\r\n"):
        out += sock.recv(65536)
    return stat_values(out)


def test_very_verbose_logs_every_command(started) -> None:
    daemon = started("-vv")
    request(daemon.host, daemon.port, b"set loggedkey 0 0 1\r\nx\r\nget loggedkey\r\n")
    wait_until(lambda: b"loggedkey" in daemon.log().encode(), "the command trace")
    log = daemon.log()
    assert "new client connection" in log
    assert "DEBUG" in log


def test_memory_limit_evicts(started) -> None:
    daemon = started("-m", "2", "-I", "512k")
    value = b"v" * 1000
    stream = b"".join(b"set key%06d 0 0 1000 noreply\r\n%s\r\n" % (i, value)
                      for i in range(6000))
    request(daemon.host, daemon.port, stream)
    figures = stats(daemon)
    assert int(figures["evictions"]) > 0
    assert int(figures["bytes"]) <= 2 * MB
    assert int(figures["total_items"]) == 6000
    assert int(figures["curr_items"]) + int(figures["evictions"]) == 6000


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_exit_zero(tmp_path, signum: int) -> None:
    daemon = kvcache_daemon(tmp_path).start()
    sock = socket.create_connection((daemon.host, daemon.port), timeout=10)
    try:
        sock.sendall(b"set a 0 0 1\r\nx\r\n")
        assert sock.recv(100) == b"STORED\r\n"
        daemon.signal(signum)
        assert daemon.proc.wait(timeout=20) == 0
        assert sock.recv(100) == b""  # the client is told: the connection is closed
    finally:
        sock.close()
    assert "stopped" in daemon.log()


def test_shutdown_command_needs_dash_a(started, tmp_path) -> None:
    plain = started()
    assert request(plain.host, plain.port, b"shutdown\r\n") == b"ERROR: shutdown not enabled\r\n"
    daemon = kvcache_daemon(tmp_path, extra=["-A"]).start()
    converse(daemon.host, daemon.port, b"shutdown\r\n", sentinel=False)
    assert daemon.proc.wait(timeout=20) == 0


def test_listen_long_form_and_config_file(tmp_path) -> None:
    from tests.conftest import find_free_port

    port = find_free_port("127.0.0.2")
    config = tmp_path / "kvcache.toml"
    config.write_text('memory_limit = "16m"\nconn_limit = 9\n')
    daemon = kvcache_daemon(tmp_path, host="127.0.0.2", port=port)
    daemon.argv = ["kvcache", "serve", "--listen", f"127.0.0.2:{port}", "--config", str(config)]
    daemon.start()
    try:
        settings = stats(daemon, "settings")
        assert settings["maxbytes"] == str(16 * MB)
        assert settings["maxconns"] == "9"
        assert settings["inter"] == "127.0.0.2"
    finally:
        assert daemon.stop() == 0


@pytest.mark.parametrize("flags", [["-I", "512"], ["-I", "2g"], ["-m", "2", "-I", "2m"],
                                   ["-c", "0"], ["-p", "70000"], ["--bogus"]])
def test_bad_flags_exit_two(tmp_path, flags: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "kvcache", "serve", *flags], cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    assert result.stderr


def test_listening_beyond_loopback_warns(tmp_path) -> None:
    daemon = kvcache_daemon(tmp_path, host="0.0.0.0")
    daemon.host = "127.0.0.1"  # where the test connects
    daemon.start()
    try:
        assert "no authentication" in daemon.log()
    finally:
        assert daemon.stop() == 0


def test_crawler_reclaims_expired_items(started) -> None:
    daemon = started()
    stream = b"".join(b"set ttl%d 0 1 1 noreply\r\nx\r\n" % i for i in range(100))
    request(daemon.host, daemon.port, stream + b"set keep 0 0 1\r\nx\r\n")

    def reclaimed() -> bool:
        request(daemon.host, daemon.port, b"lru_crawler crawl all\r\n")
        return int(stats(daemon)["crawler_reclaimed"]) == 100

    wait_until(reclaimed, "the crawler to reclaim the expired items")
    figures = stats(daemon)
    assert figures["curr_items"] == "1"
    assert figures["expired_unfetched"] == "100"
    assert figures["get_expired"] == "0"  # nobody met them: the crawler did


def test_replies_before_a_bad_get_are_kept(started) -> None:
    """memcached drops the replies it has queued when a get names a key over 250 bytes;
    kvcache answers every command (a documented difference)."""
    daemon = started()
    stream = b"set a 0 0 1\r\nx\r\nget a " + b"k" * 251 + b"\r\n"
    assert request(daemon.host, daemon.port, stream) == (
        b"STORED\r\nCLIENT_ERROR bad command line format\r\n")


def test_a_client_that_does_not_read_cannot_grow_the_daemon(started) -> None:
    """Replies wait in a bounded buffer: reading stops until the client drains them."""
    daemon = started("-m", "64")
    value = b"z" * (1000 * 1000)
    assert request(daemon.host, daemon.port, b"set big 0 0 %d\r\n%s\r\n" % (len(value), value))
    process = psutil.Process(daemon.proc.pid)
    baseline = process.memory_info().rss
    gets = 400  # 400 MB of replies
    with socket.create_connection((daemon.host, daemon.port), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.settimeout(0.5)
        sent = 0
        payload = b"get big\r\n" * gets
        try:
            while sent < len(payload):
                sent += sock.send(payload[sent:sent + 4096])
        except TimeoutError:
            pass  # the daemon stopped reading: what this test wants to see
        time.sleep(0.5)
        assert process.memory_info().rss - baseline < 100 * MB
        sock.settimeout(30)
        sock.sendall(payload[sent:])
        received = 0
        expected = gets * (len(value) + len(b"VALUE big 0 1000000\r\n\r\nEND\r\n"))
        while received < expected:
            chunk = sock.recv(1 << 20)
            assert chunk
            received += len(chunk)
        assert received == expected


def test_stats_conns(started) -> None:
    daemon = started()
    with socket.create_connection((daemon.host, daemon.port), timeout=10) as idle:
        idle.sendall(b"version\r\n")
        assert idle.recv(100).startswith(b"VERSION")
        out = request(daemon.host, daemon.port, b"stats conns\r\n")
    lines = out.decode().splitlines()
    assert lines[-1] == "END"
    listen = f"tcp:127.0.0.1:{daemon.port}"
    assert any(line.endswith(f":addr {listen}") for line in lines)
    assert sum(line.endswith(f":listen_addr {listen}") for line in lines) == 2
    states = sorted(line.split()[-1] for line in lines if ":state " in line)
    assert states == ["conn_listening", "conn_parse_cmd", "conn_waiting"]


def test_unix_socket(tmp_path) -> None:
    path = tmp_path / "kv.sock"
    daemon = kvcache_daemon(tmp_path, extra=["-s", str(path), "-a", "770"])
    daemon.start(wait=False)
    try:
        wait_until(path.exists, "the socket file")
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            wait_until(lambda: sock.connect_ex(str(path)) == 0, "the socket to accept")
            sock.sendall(b"set a 0 0 1\r\nx\r\nget a\r\nstats settings\r\n")
            out = b""
            while not out.endswith(b"END\r\n") or out.count(b"END\r\n") < 2:
                out += sock.recv(65536)
        assert out.startswith(b"STORED\r\nVALUE a 0 1\r\nx\r\nEND\r\n")
        settings = stat_values(out)
        assert settings["domain_socket"] == str(path)
        assert settings["umask"] == "770"
        assert settings["tcpport"] == "0"
        assert oct(path.stat().st_mode & 0o777) == "0o770"
    finally:
        assert daemon.stop() == 0, daemon.log()


def test_disabled_flush_and_dumps(started) -> None:
    daemon = started("-F", "-X")
    stream = (b"set a 0 0 1\r\nx\r\nflush_all\r\nflush_all noreply\r\nget a\r\n"
              b"stats cachedump 1 0\r\n")
    assert request(daemon.host, daemon.port, stream) == (
        b"STORED\r\nCLIENT_ERROR flush_all not allowed\r\nVALUE a 0 1\r\nx\r\nEND\r\n"
        b"CLIENT_ERROR stats cachedump not allowed\r\n")
    out = request(daemon.host, daemon.port, b"lru_crawler metadump all\r\n")
    assert out == b"ERROR metadump not allowed\r\n"
    figures = stats(daemon, "settings")
    assert (figures["flush_enabled"], figures["dump_enabled"]) == ("no", "no")


def test_daemonize_with_pidfile(tmp_path) -> None:
    from tests.conftest import find_free_port, wait_for_tcp_port

    port = find_free_port()
    pidfile = tmp_path / "kv.pid"
    result = subprocess.run(
        [sys.executable, "-m", "kvcache", "serve", "-d", "-P", str(pidfile), "-p", str(port)],
        cwd=ROOT, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    wait_until(pidfile.exists, "the pid file")
    pid = int(pidfile.read_text())
    try:
        wait_for_tcp_port("127.0.0.1", port, timeout=20)
        assert stat_values(request("127.0.0.1", port, b"stats\r\n"))["pid"] == str(pid)
    finally:
        psutil.Process(pid).send_signal(signal.SIGTERM)
        wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status()
                   == psutil.STATUS_ZOMBIE, "the daemon to exit")
    assert not pidfile.exists()


def test_version_flag_and_refused_features(tmp_path) -> None:
    run = [sys.executable, "-m", "kvcache", "serve"]
    version = subprocess.run([*run, "-V"], cwd=ROOT, capture_output=True, text=True,
                             timeout=30)
    assert version.returncode == 0 and "1.6.18" in version.stdout
    for flag in (["-S"], ["-Z"], ["-B", "binary"], ["-Y", "users"]):
        refused = subprocess.run([*run, *flag], cwd=ROOT, capture_output=True, text=True,
                                 timeout=30)
        assert refused.returncode == 2 and "not implemented" in refused.stderr, flag


def test_verbosity_command_turns_the_trace_on(started) -> None:
    daemon = started()
    request(daemon.host, daemon.port, b"verbosity 2\r\nget tracedkey\r\n")
    wait_until(lambda: "tracedkey" in daemon.log(), "the command trace")
    assert stats(daemon, "settings")["verbosity"] == "2"
