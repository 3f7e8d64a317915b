"""The order service (examples/orders): its parsers fuzzed, its HTTP errors without a cluster,
the port remapping of the launch declarations, and one `--quick --kill` run of the demo
itself on the whole local cluster, whose printed summary carries the end-to-end checks.

Strategy: the demo is the end-to-end test. It starts every daemon of `make run` on free
ports, sends a small load through the HTTP API while one node of each daemon is SIGKILLed
and restarted, then reads everything back (examples/orders/load.py `check`): every
acknowledged create found, no id twice, no order pending past its deadline (the demo polls
until the cancel job has run, with a generous limit), every paid order's invoice equal byte
for byte to its rendering, and a pay of a cancelled order refused. The test asserts the
summary's lines and the exit status. The README's promises are checked in its words.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from core.launch_spec import Process
from examples.orders.cluster import (
    PORT_PICK_HIGH,
    PORT_PICK_LOW,
    Cluster,
    Endpoints,
    free_port,
    remap_ports,
    without,
)
from examples.orders.http_api import MAX_BODY_BYTES, Route, RouteError, route, serve
from examples.orders.service import (
    MAX_ITEMS,
    MAX_QUANTITY,
    BadRequest,
    OrderService,
    _checked_items,
)
from examples.orders.store import (
    FINAL_SUFFIX,
    MAX_YEAR,
    _split_key,
    month_bounds,
    parse_month,
    record_key,
    valid_name,
)

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "examples" / "orders" / "README.md"
DEMO_TIMEOUT_S = 600  # detects a hang only
DEMO_ORDERS = 80
VICTIMS = "idgen-1, kvcache-1, scheduler-1, shardstore-1, dfs-master-1"

MAKE_DEMO = ("`make demo` runs the order service of `examples/orders/` (its README says what "
             "goes where) on all five daemons of a local cluster of its own, with a progress "
             "bar, and prints where each piece went.")
PROMISES = [
    "No acknowledged order is lost.",
    "No order id is handed out twice.",
    "No unpaid order stays pending past its deadline.",
    "Every invoice reads back from dfs byte for byte.",
    "Paying a cancelled order is refused with 409.",
    "A paid order is never cancelled.",  # and the rest: tests/test_orders_protocol.py
    "A payment after the order's deadline cancels it instead.",
    "cannot make a second order.",
    "`--kill` SIGKILLs one node of each daemon during the load and starts it again.",
    "The deadline is 15\nminutes by default",
    "a malformed request is answered 400",
    "A user's month lists every acknowledged order of theirs.",
    "`--small` leaves one of the three caches and one of the four chunk servers out.",
]

names = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)


# -- parsers ------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["GET", "POST", "PUT", "DELETE"]), st.text(max_size=120))
def test_route_takes_any_target_or_refuses_it(method: str, target: str) -> None:
    try:
        where = route(method, target)
    except RouteError as exc:
        assert exc.status in (400, 404)
        return
    assert where.action in ("create", "pay", "get", "list")


@given(st.integers(0, (1 << 63) - 1), names, st.integers(1970, MAX_YEAR), st.integers(1, 12))
def test_routes_of_the_four_requests(order_id: int, user: str, year: int, month: int) -> None:
    text = f"{year:04d}-{month:02d}"
    assert route("POST", "/orders") == Route("create")
    assert route("POST", f"/orders/{order_id}/pay") == Route("pay", order_id=order_id)
    assert route("GET", f"/orders/{order_id}") == Route("get", order_id=order_id)
    assert route("GET", f"/users/{user}/orders?month={text}") == Route("list", user=user,
                                                                        month=text)
    with pytest.raises(RouteError):
        route("GET", f"/users/{user}/orders")
    with pytest.raises(RouteError):
        route("POST", f"/orders/{(1 << 63) + order_id}/pay")


@given(st.text(max_size=12))
def test_parse_month_refuses_all_but_real_months(text: str) -> None:
    try:
        year, month = parse_month(text)
    except ValueError as exc:
        assert repr(text) in str(exc)
        return
    assert text == f"{year:04d}-{month:02d}" and 1 <= month <= 12


@example(MAX_YEAR, 12)
@given(st.integers(1970, MAX_YEAR), st.integers(1, 12))
def test_month_bounds_are_consecutive_months(year: int, month: int) -> None:
    low, high = month_bounds(year, month)
    assert parse_month(low) == (year, month)
    following = (year + 1, 1) if month == 12 else (year, month + 1)
    assert high == f"{following[0]:04d}-{following[1]:02d}"  # 9999-01 at most: a DATE point


@given(st.integers(0, (1 << 63) - 1), names, st.booleans())
def test_order_row_keys_round_trip(order_id: int, user: str, final: bool) -> None:
    assert valid_name(user)
    key = record_key(order_id, user) + (FINAL_SUFFIX if final else "")
    assert _split_key(key.encode()) == (order_id, user, final)


def test_remap_moves_every_declared_port_consistently() -> None:
    specs = [Process("a", ["x", "--listen", "127.0.0.1:7101", "--peers", "1=127.0.0.1:7201"],
                     port=7101),
             Process("b", ["y", "-p", "11311", "--servers", "127.0.0.1:11311,127.0.0.1:7101"],
                     port=11311)]
    moved = remap_ports(specs)
    words = " ".join(w for s in moved for w in s.argv)
    assert not re.search(r"\b(7101|7201|11311)\b", words)
    assert moved[0].port == int(moved[0].argv[2].split(":")[1])
    assert moved[1].argv[2] == str(moved[1].port)
    assert moved[1].argv[4].split(",")[1] == moved[0].argv[2]


def test_free_ports_come_from_below_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    picked = {free_port() for _ in range(20)}
    assert all(PORT_PICK_LOW <= port < min(low, PORT_PICK_HIGH) for port in picked)
    assert free_port(taken=picked) not in picked


def test_without_drops_a_process_and_its_address_from_lists() -> None:
    specs = [Process("c1", ["serve"], port=11311), Process("c2", ["serve"], port=11312),
             Process("proxy", ["--servers", "127.0.0.1:11311,127.0.0.1:11312"], port=11310)]
    kept = without(specs, ["c2"])
    assert [s.name for s in kept] == ["c1", "proxy"]
    assert kept[1].argv == ["--servers", "127.0.0.1:11311"]


LISTENER = ("import socket, sys, time; host, port = sys.argv[1].split(':'); "
            "s = socket.socket(); s.bind((host, int(port))); s.listen(); time.sleep(600)")


def test_cluster_kill_start_again_and_stop_on_ctrl_c(tmp_path: Path) -> None:
    spec = Process("fake-1", [sys.executable, "-c", LISTENER, "127.0.0.1:7999"], port=7999)
    cluster = Cluster(tmp_path, declared=[spec])
    assert cluster.specs[0].port != 7999
    with pytest.raises(KeyboardInterrupt), cluster:
        first = cluster.procs["fake-1"]
        cluster.kill("fake-1")
        assert first.poll() is not None
        cluster.start_again("fake-1")
        again = cluster.procs["fake-1"]
        assert again.poll() is None
        raise KeyboardInterrupt
    assert again.poll() is not None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 2000) | st.text(max_size=70),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["product", "qty", "x"]), inner, max_size=3),
    max_leaves=12)


@settings(max_examples=100, deadline=None)
@given(json_values)
def test_items_are_checked_before_any_daemon_is_asked(items: object) -> None:
    try:
        checked = _checked_items(items)
    except BadRequest:
        return
    assert 1 <= len(checked) <= MAX_ITEMS
    for item in checked:
        assert valid_name(item["product"]) and 1 <= item["qty"] <= MAX_QUANTITY


# -- the HTTP API's errors, no daemon needed ---------------------------------------------------


@pytest.fixture
def api() -> tuple[str, int]:
    nowhere = Endpoints([], "127.0.0.1:1", [], {"default": [], "users": []}, [])
    server, _ = serve(OrderService(nowhere))
    yield server.server_address[:2]
    server.shutdown()


def _call(address: tuple[str, int], method: str, path: str, body: bytes = b"") -> tuple[int, dict]:
    conn = http.client.HTTPConnection(*address, timeout=30)
    conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
    reply = conn.getresponse()
    status, data = reply.status, json.loads(reply.read())
    conn.close()
    return status, data


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("POST", "/orders", b"{not json", 400),
    ("POST", "/orders", b"[1, 2]", 400),
    ("POST", "/orders", b'{"user": "u 1", "items": []}', 400),
    ("POST", "/orders", b'{"user": "u1", "items": []}', 400),
    ("POST", "/orders", b'{"user": "u1", "items": [{"product": "p", "qty": 0}]}', 400),
    ("GET", "/users/u1/orders?month=2026-13", b"", 400),
    ("GET", "/users/u1/orders", b"", 400),
    ("GET", "/nowhere", b"", 404),
    ("POST", "/orders/12/cancel", b"", 404),
])
def test_malformed_requests_answer_400_or_404(api: tuple[str, int], method: str, path: str,
                                              body: bytes, status: int) -> None:
    got, data = _call(api, method, path, body)
    assert got == status
    assert data["error"]


# -- the README ---------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [b"-5", b"abc", str(MAX_BODY_BYTES + 1).encode()])
def test_a_bad_content_length_is_a_bad_request(api: tuple[str, int], length: bytes) -> None:
    with socket.create_connection(api, timeout=30) as sock:
        sock.sendall(b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: " + length
                     + b"\r\n\r\n")
        assert sock.makefile("rb").readline().startswith(b"HTTP/1.1 400 ")


def test_readme_promises_are_in_its_words() -> None:
    text = README.read_text().replace("A malformed", "a malformed")
    for promise in PROMISES:
        assert promise in text, promise
    root = " ".join((ROOT / "README.md").read_text().split())
    assert MAKE_DEMO in root  # the demo run below prints the progress and where pieces went
    assert "demo: $(NATIVE)\n\t$(PY) -m examples.orders.demo" in (ROOT / "Makefile").read_text()


# -- the demo, end to end -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_run() -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "examples.orders.demo", "--quick", "--orders",
            str(DEMO_ORDERS), "--deadline", "3", "--kill", "--small"]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True,
                          timeout=DEMO_TIMEOUT_S, check=False)


def _line(out: str, prefix: str) -> str:
    found = [line for line in out.splitlines() if line.startswith(prefix)]
    assert found, f"no line {prefix!r} in:\n{out}"
    return found[0]


def test_demo_quick_kill_run_passes_every_check(
        demo_run: subprocess.CompletedProcess[str]) -> None:
    out = demo_run.stdout
    assert demo_run.returncode == 0, out + demo_run.stderr[-3000:]
    checks = _line(out, "checks: ")
    paid = int(re.search(r"(\d+) paid", _line(out, "orders: ")).group(1))
    # No acknowledged order is lost. No order id is handed out twice. No unpaid order
    # stays pending past its deadline. Every invoice reads back from dfs byte for byte.
    assert f"lost 0, duplicate ids 0, unpaid past deadline 0, invoices verified {paid}/{paid}" \
        in checks
    # Paying a cancelled order is refused with 409 (a paid order is never cancelled: the
    # invoices of every paid order are checked as paid above).
    assert checks.endswith("pay after cancel refused: yes, a user's month listed in full: yes")
    assert _line(out, "killed and restarted: ") == f"killed and restarted: {VICTIMS}"
    assert _line(out, "result: ") == "result: OK"


def test_demo_summary_says_where_each_piece_went(
        demo_run: subprocess.CompletedProcess[str]) -> None:
    out = demo_run.stdout
    created = int(re.search(r"orders: (\d+) created in [\d.]+ s \([\d.]+ orders/s\)",
                            _line(out, "orders: ")).group(1))
    assert created == DEMO_ORDERS
    assert re.search(r"idgen: ids by worker \d+: \d+", out)
    assert re.search(r"shardstore keyspace default \(orders table\): shard \d+: \d+", out)
    assert re.search(r"shardstore keyspace users: slots \d+-\d+: \d+", out)
    ratio = float(re.search(r"product page hit ratio ([\d.]+)", out).group(1))
    assert 0 < ratio < 1
    # the report job ran (JOB.RUN; at midnight UTC @daily may fire it once more)
    assert re.search(r"dfs: invoices written \d+, reports written [1-9]", out)
    cancelled = int(re.search(r"orders cancelled by the job (\d+)", out).group(1))
    assert cancelled > 0
    # the progress bar went to stderr
    assert f"{DEMO_ORDERS}/{DEMO_ORDERS}" in demo_run.stderr
