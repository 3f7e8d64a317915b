"""`--metrics-listen`: the endpoint's HTTP head parser (fuzzed), its safe-bind rule, off by
default, and idgen's and kvcache's (server and proxy) metrics read against INFO/`stats`
over the daemons' own protocols, each daemon one real process, each scrape linted by
`promtool check metrics` (tests/test_metrics_raft.py does the Raft daemons)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from core import daemon
from core.metrics import (
    MAX_CONNECTIONS,
    MAX_HEAD_BYTES,
    MetricsEndpoint,
    RequestError,
    parse_request_head,
    password_matches,
)
from core.metrics_collectors import histogram_buckets
from core.stats import LATENCY_BUCKETS, LatencyHistogram
from idgen.__main__ import main as idgen_main
from kvcache.__main__ import main as kvcache_main
from tests.conftest import find_free_port
from tests.metrics_scrape import (
    PROMTOOL,
    cmdstat_calls,
    eventually,
    promtool_problems,
    scrape,
    status_of,
    unprefixed,
    value,
)
from tests.procs import Daemon, idgen_daemon, kvcache_daemon

README = Path(__file__).resolve().parent.parent / "README.md"
METRICS_SENTENCE = (
    "Every daemon serves Prometheus metrics when started with `--metrics-listen HOST:PORT` "
    "(off by default; `:PORT` listens on 127.0.0.1, and a host beyond loopback needs "
    "`--requirepass`, as `--listen` does): scrape `http://HOST:PORT/metrics`.")
AUTH_SENTENCE = ("A daemon started with `--requirepass` asks the scraper for that password as "
                 "HTTP Basic credentials (any user name).")
PREFIX_SENTENCE = "Each daemon's names start with its own prefix"
KVCACHE_SENTENCE = ("kvcache and its proxy, which take no password, serve metrics on loopback "
                    "only.")
PASSWORD = "metrics-secret"
GETS = 7

needs_promtool = pytest.mark.skipif(
    not Path(PROMTOOL).exists(), reason=f"promtool not installed at {PROMTOOL} (Debian's "
    "prometheus package, which .ci/run installs)")


# -- the HTTP head -------------------------------------------------------------------------------


def test_a_scrape_head_parses() -> None:
    request = parse_request_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a:1\r\n"
                                 b"Authorization: Basic eDp5")
    assert (request.method, request.path) == ("GET", "/metrics")
    assert request.headers == {"host": "a:1", "authorization": "Basic eDp5"}


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_any_head_parses_or_is_refused_with_a_status(head: bytes) -> None:
    try:
        request = parse_request_head(head)
    except RequestError as exc:
        assert exc.status in (400, 431)
        assert str(exc)
    else:
        assert request.path.startswith("/")


@settings(max_examples=50)
@given(st.lists(st.sampled_from(["GET /metrics HTTP/1.1", "Host: x", "A:b", ":", "X y: z",
                                 "", "GET", "\x00"]), min_size=1, max_size=6))
def test_heads_built_from_pieces_parse_or_are_refused(lines: list[str]) -> None:
    try:
        parse_request_head("\r\n".join(lines).encode())
    except RequestError as exc:
        assert exc.status == 400


def test_a_head_too_large_is_refused_with_431() -> None:
    with pytest.raises(RequestError) as exc:
        parse_request_head(b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEAD_BYTES)
    assert exc.value.status == 431


def test_the_password_is_checked_as_http_basic() -> None:
    assert password_matches("Basic cHJvbTpzZWNyZXQ=", "secret")  # prom:secret
    assert not password_matches("Basic cHJvbTpzZWNyZXQ=", "other")
    assert not password_matches("Bearer secret", "secret")
    assert not password_matches("Basic !!!", "secret")
    assert not password_matches(None, "secret")


@settings(max_examples=40)
@given(st.lists(st.integers(min_value=0, max_value=10**13), max_size=40))
def test_power_of_two_buckets_become_cumulative_seconds(latencies: list[int]) -> None:
    hist = LatencyHistogram()
    for nanos in latencies:
        hist.record(nanos)
    buckets = histogram_buckets(hist)
    assert len(buckets) == LATENCY_BUCKETS
    counts = [count for _, count in buckets]
    assert counts == sorted(counts) and counts[-1] == len(latencies)
    assert buckets[-1][0] == "+Inf"
    for le, count in buckets[:-1]:
        assert count == sum(1 for n in latencies if n / 1e9 < float(le))


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"hang: still waiting for {what}"
        await asyncio.sleep(0.01)


def test_the_endpoint_answers_head_and_refuses_connections_beyond_its_limit() -> None:
    async def main() -> None:
        endpoint = MetricsEndpoint(CollectorRegistry(auto_describe=False))
        await endpoint.start("127.0.0.1", 0)
        idle = [await asyncio.open_connection("127.0.0.1", endpoint.port)
                for _ in range(MAX_CONNECTIONS)]
        await until(lambda: endpoint.open == MAX_CONNECTIONS, "the idle connections")
        reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
        assert (await reader.read()).startswith(b"HTTP/1.1 503 ")
        writer.close()
        for _, idle_writer in idle:
            idle_writer.close()
        await until(lambda: endpoint.open == 0, "the idle connections closed")
        reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
        writer.write(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = await reader.read()
        assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"\r\n\r\n")
        writer.close()
        await endpoint.close()

    asyncio.run(main())


# -- the option -----------------------------------------------------------------------------------


def test_beyond_loopback_without_a_password_is_refused_as_listen_is(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    common = ["serve", "--worker-id", "1", "--data-dir", str(tmp_path / "d")]
    assert idgen_main([*common, "--listen", "0.0.0.0:1"]) == 2
    said_listen = capsys.readouterr().err
    assert idgen_main([*common, "--metrics-listen", "0.0.0.0:1"]) == 2
    said_metrics = capsys.readouterr().err
    assert said_listen == said_metrics == (
        "idgen: refusing to listen on 0.0.0.0 without --requirepass (set a password, or "
        "--protected-mode no if the network is trusted)\n")
    assert kvcache_main(["serve", "--metrics-listen", "10.1.2.3:9100"]) == 2
    assert "refusing to listen on 10.1.2.3" in capsys.readouterr().err
    assert kvcache_main(["proxy", "--servers", "127.0.0.1:1", "--metrics-listen",
                         "[::]:9100"]) == 2
    assert "refusing to listen on :: without --requirepass" in capsys.readouterr().err
    assert idgen_main([*common, "--metrics-listen", "nonsense"]) == 2
    assert "--metrics-listen 'nonsense': expected [HOST]:PORT" in capsys.readouterr().err


def test_an_address_without_a_host_is_loopback() -> None:
    def address(text: str, password: str | None = None) -> tuple[str, int] | None:
        args = daemon.argparse.Namespace(metrics_listen=text, requirepass=password,
                                         protected_mode="yes")
        return daemon.metrics_address(args)

    assert address(":9100") == ("127.0.0.1", 9100)
    assert address("9100") == ("127.0.0.1", 9100)
    assert address("0.0.0.0:9100", password="x") == ("0.0.0.0", 9100)
    assert address("") is None


def listening_ports(proc: Daemon) -> set[int]:
    assert proc.proc is not None
    conns = psutil.Process(proc.proc.pid).net_connections(kind="inet")
    return {c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN}


def test_metrics_are_off_by_default(tmp_path: Path) -> None:
    d = idgen_daemon(tmp_path, 3).start()
    try:
        assert listening_ports(d) == {d.port}
    finally:
        assert d.stop() == 0


def test_the_readme_says_how_to_turn_metrics_on() -> None:
    text = " ".join(README.read_text().split())
    for sentence in (METRICS_SENTENCE, AUTH_SENTENCE, PREFIX_SENTENCE, KVCACHE_SENTENCE):
        assert sentence in text


# -- idgen ---------------------------------------------------------------------------------------


@needs_promtool
def test_idgen_metrics_agree_with_info(tmp_path: Path) -> None:
    mport = find_free_port()
    d = idgen_daemon(tmp_path, 4, extra=["--requirepass", PASSWORD, "--metrics-listen",
                                         f":{mport}"]).start()
    try:
        r = redis.Redis(host=d.host, port=d.port, password=PASSWORD)
        for _ in range(GETS):
            r.execute_command("NEXT")
        r.execute_command("NEXT", 5)
        assert listening_ports(d) == {d.port, mport}
        assert status_of(mport) == 401
        assert status_of(mport, "wrong") == 401
        assert status_of(mport, PASSWORD, path="/other") == 404
        assert raw_reply(mport, b"POST /metrics HTTP/1.1\r\n\r\n").startswith(
            b"HTTP/1.1 405 ")
        assert raw_reply(mport, b"nonsense\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        text = scrape(mport, PASSWORD)
        info = r.info("all")
        assert promtool_problems(text) == ""
        assert unprefixed(text, "idgen") == set()
        assert value(text, "idgen_commands_total", cmd="next") == GETS + 1
        assert cmdstat_calls(info, "next") == GETS + 1
        assert value(text, "idgen_ids_issued_total") == int(info["ids_issued"]) == GETS + 5
        assert value(text, "idgen_clock_waits_total") == int(info["clock_waits"])
        assert value(text, "idgen_connections_received_total") == int(
            info["total_connections_received"])
        assert value(text, "idgen_command_duration_seconds_count", cmd="next") >= 1
        for name, field in (("read", "total_net_input_bytes"),  # INFO came after the scrape
                            ("written", "total_net_output_bytes")):
            assert 0 < value(text, f"idgen_{name}_bytes_total") <= info[field]
        r.close()
        assert value(text, "process_resident_memory_bytes") > 0
    finally:
        assert d.stop() == 0


def raw_reply(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
        return reply


# -- kvcache -------------------------------------------------------------------------------------


def memcached(port: int, request: bytes, end: bytes = b"END\r\n") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        reply = b""
        while not reply.endswith(end):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
        return reply


def stats_of(port: int) -> dict[str, str]:
    out = {}
    for line in memcached(port, b"stats\r\n").decode().splitlines():
        parts = line.split(" ")
        if len(parts) == 3 and parts[0] == "STAT":
            out[parts[1]] = parts[2]
    return out


@needs_promtool
def test_kvcache_and_proxy_metrics_agree_with_stats(tmp_path: Path) -> None:
    mport, pport = find_free_port(), find_free_port()
    cache = kvcache_daemon(tmp_path, extra=["--metrics-listen", f"127.0.0.1:{mport}"]).start()
    proxy_port = find_free_port()
    proxy = Daemon(["kvcache", "proxy", "-p", str(proxy_port), "--servers",
                    f"127.0.0.1:{cache.port}", "--metrics-listen", f":{pport}"],
                   "127.0.0.1", proxy_port, tmp_path / "proxy.log").start()
    try:
        memcached(proxy_port, b"set k 0 0 1\r\nv\r\n", b"STORED\r\n")
        for key in [b"k"] * GETS + [b"absent"] * 3:
            memcached(proxy_port, b"get " + key + b"\r\n")
        text = scrape(mport)
        stats = stats_of(cache.port)
        assert promtool_problems(text) == ""
        assert unprefixed(text, "kvcache") == set()
        assert value(text, "kvcache_get_hits_total") == int(stats["get_hits"]) == GETS
        assert value(text, "kvcache_get_misses_total") == int(stats["get_misses"]) == 3
        assert value(text, "kvcache_evictions_total") == int(stats["evictions"])
        assert value(text, "kvcache_commands_total", cmd="get") == int(stats["cmd_get"])
        assert value(text, "kvcache_items") == int(stats["curr_items"]) == 1
        assert value(text, "kvcache_read_bytes_total") <= int(stats_of(cache.port)["bytes_read"])
        ptext = scrape(pport)
        pstats = stats_of(proxy_port)
        assert promtool_problems(ptext) == ""
        assert unprefixed(ptext, "kvcache_proxy") == set()
        assert value(ptext, "kvcache_proxy_commands_total", cmd="get") == int(
            pstats["cmd_get"]) == GETS + 3
        assert value(ptext, "kvcache_proxy_backend_up", backend=f"127.0.0.1:{cache.port}") == 1
        eventually(lambda: int(stats_of(proxy_port)["curr_connections"]) >= 1, "a client")
    finally:
        assert proxy.stop() == 0
        assert cache.stop() == 0
