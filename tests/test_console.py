"""The console without a browser: its HTTP request parser (hypothesis: a bad request gets a
4xx, never a crash), sessions, chart rates, the JSON endpoint's shapes (against a real
kvcache server, a real one-node shardstore in this event loop and a dead address), the
routes' refusals, a real socket fed garbage, and the README's promises about it.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from console.__main__ import parse_args, targets_from
from console.app import ConsoleApp
from console.collect import Collector, Targets
from console.http_parse import (
    MAX_BODY_BYTES,
    MAX_HEAD_BYTES,
    NEED_DATA,
    HttpError,
    Request,
    RequestReader,
    parse_cookies,
    parse_form,
)
from console.probes import parse_info, plain
from console.rates import Rates
from console.server import ConsoleServer, encode_response
from console.sessions import SESSION_IDLE_S, SessionStore
from tests.conftest import find_free_port
from tests.procs import ROOT, kvcache_daemon

BAD_STATUSES = {400, 413, 431}

# -- the request parser ------------------------------------------------------------------


def read_all(data: bytes, pieces: int = 1) -> list[Request]:
    reader = RequestReader()
    out: list[Request] = []
    step = max(1, len(data) // pieces)
    for i in range(0, len(data), step):
        reader.feed(data[i:i + step])
        while (request := reader.next_request()) is not NEED_DATA:
            assert isinstance(request, Request)
            out.append(request)
    return out


def test_a_request_with_a_body_split_anywhere() -> None:
    data = (b"POST /api/job?x=1&y=%20z HTTP/1.1\r\nHost: h\r\nCookie: a=1; console_session=t\r\n"
            b"Content-Length: 11\r\n\r\nname=j&x=%2\r\nGET / HTTP/1.0\r\n\r\n")
    for pieces in (1, 3, len(data)):
        post, get = read_all(data, pieces)
        assert (post.method, post.path, post.query) == ("POST", "/api/job", {"x": "1", "y": " z"})
        assert post.body == b"name=j&x=%2" and post.keep_alive
        assert parse_cookies(post.headers["cookie"])["console_session"] == "t"
        assert get.method == "GET" and not get.keep_alive and get.body == b""


@pytest.mark.parametrize("data,status", [
    (b"GET /\r\n\r\n", 400),
    (b"DELETE / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\n\r\n", 400),
    (b"GET http://x/ HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"GET /\xff HTTP/1.1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1), 413),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\n" + b"X: 1\r\n" * 100 + b"\r\n", 431),
])
def test_bad_requests_get_their_status(data: bytes, status: int) -> None:
    with pytest.raises(HttpError) as caught:
        read_all(data)
    assert caught.value.status == status and caught.value.message


def test_a_head_without_its_end_over_the_limit_is_refused() -> None:
    reader = RequestReader()
    reader.feed(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * (MAX_HEAD_BYTES // 5))
    with pytest.raises(HttpError) as caught:
        reader.next_request()
    assert caught.value.status == 431


@given(st.binary(max_size=300), st.integers(min_value=1, max_value=40))
def test_any_bytes_give_requests_need_data_or_a_4xx(data: bytes, pieces: int) -> None:
    try:
        read_all(data, pieces)
    except HttpError as exc:
        assert exc.status in BAD_STATUSES


LINE = st.sampled_from(["GET", "POST", "HEAD", "PUT", "get", ""]).flatmap(
    lambda m: st.tuples(st.just(m), st.text(max_size=20), st.sampled_from(
        ["HTTP/1.1", "HTTP/1.0", "HTTP/9", ""])))
HEADER = st.tuples(st.text(max_size=12), st.text(max_size=20))


@given(LINE, st.lists(HEADER, max_size=5), st.binary(max_size=40))
def test_request_shaped_text_never_crashes(line: tuple[str, str, str],
                                           headers: list[tuple[str, str]], body: bytes) -> None:
    head = " ".join(line) + "".join(f"\r\n{k}: {v}" for k, v in headers)
    data = head.encode("utf-8", "surrogatepass") + b"\r\n\r\n" + body
    try:
        requests = read_all(data)
    except HttpError as exc:
        assert exc.status in BAD_STATUSES
        return
    for request in requests:
        assert request.method in ("GET", "POST", "HEAD") and request.path.startswith("/")


@given(st.binary(max_size=200))
def test_a_form_is_parsed_or_refused_with_400(body: bytes) -> None:
    try:
        form = parse_form(body)
    except HttpError as exc:
        assert exc.status == 400
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in form.items())


@given(st.text(max_size=200))
def test_cookies_info_and_addresses_never_crash(text: str) -> None:
    from console.probes import split_address

    assert all(isinstance(v, str) for v in parse_cookies(text).values())
    assert all(isinstance(v, dict) for v in parse_info(text).values())
    try:
        host, port = split_address(text)
    except ValueError:
        return
    assert host and 0 < port < 65536


def test_a_form_and_cookies() -> None:
    assert parse_form(b"daemon=scheduler&password=a%26b+c") == {"daemon": "scheduler",
                                                                "password": "a&b c"}
    assert parse_form(b"") == {}
    assert parse_cookies('x=1; bad pair; y="2"') == {"x": "1", "y": "2"}


# -- sessions, rates, replies ------------------------------------------------------------


def test_sessions_expire_and_rotate_on_login() -> None:
    now = [0.0]
    counter = iter(range(1000))
    store = SessionStore(lambda: now[0], token=lambda: f"t{next(counter)}")
    session, new = store.get_or_create(None)
    assert new and store.get_or_create(session.token) == (session, False)
    old = session.token
    store.rotate(session)
    assert session.token != old and store.get_or_create(old)[1]  # the old token is gone
    assert session.csrf_ok(session.csrf) and not session.csrf_ok("x")
    now[0] += SESSION_IDLE_S + 1
    assert store.get_or_create(session.token)[0] is not session


def snapshot(runs_fired: int, commands: int, started: int | None) -> dict[str, Any]:
    history = [{"run_id": f"j@{started}/0", "slot_ms": 1000, "started_ms": started}] \
        if started is not None else []
    return {"scheduler": {"nodes": [{"address": "a:1", "up": True, "info": {
        "stats": {"total_commands_processed": str(commands)},
        "scheduler": {"runs_fired": str(runs_fired)}}}],
        "jobs": [{"name": "j", "history": history}]},
        "kvcache": {"servers": [{"address": "k:1", "stats": {"cmd_get": commands,
                                                             "cmd_set": 0}}]}}


def test_rates_are_counter_deltas_over_time() -> None:
    rates = Rates()
    rates.add(10_000, snapshot(5, 100, None))
    rates.add(12_000, snapshot(9, 140, 1250))
    rates.add(13_000, snapshot(2, 150, 1250))  # restarted node: no negative rate
    series = rates.series()
    assert [v for _, v in series["fires_per_s"]] == [2.0, 0.0]
    assert [v for _, v in series["ops_per_s/scheduler"]] == [20.0, 10.0]
    assert [v for _, v in series["ops_per_s/kvcache"]] == [20.0, 10.0]
    assert [v for _, v in series["lateness_ms"]] == [250.0, None]  # each run counted once


def test_info_and_plain() -> None:
    info = parse_info("# Server\r\nserver_name:x\r\n\r\n# Scheduler\r\nrole:leader\r\n")
    assert info == {"server": {"server_name": "x"}, "scheduler": {"role": "leader"}}
    assert plain({b"k": [b"v", 1, None, {b"a": 2.5}]}) == {"k": ["v", 1, None, {"a": 2.5}]}
    json.dumps(plain([ValueError("boom"), {1, 2}, b"\xff"]))


def test_kvcache_pools_sum_the_servers_and_show_each_proxy() -> None:
    from console.collect import _cache_view, _pools
    from console.probes import MemcachedLink

    def view(address: str, stats: dict[str, str] | None) -> dict[str, Any]:
        return _cache_view(MemcachedLink(address), stats)

    servers = [
        view("127.0.0.1:1", {"get_hits": "3", "get_misses": "1", "curr_items": "2"}),
        view("127.0.0.1:2", {"get_hits": "1", "get_misses": "3"}),
        view("127.0.0.1:3", None),
        view("127.0.0.1:4", {"get_hits": "0", "get_misses": "0", "proxy_replicas": "1",
                             "backends_down": "1", "backend:127.0.0.1:1:state": "up",
                             "backend:127.0.0.1:3:state": "down"}),
    ]
    assert servers[0]["hit_ratio"] == 0.75 and servers[3]["kind"] == "proxy"
    assert servers[3]["backends"] == {"127.0.0.1:1": "up", "127.0.0.1:3": "down"}
    whole, proxy = _pools(servers)
    assert whole["servers"] == ["127.0.0.1:1", "127.0.0.1:2"] and whole["hit_ratio"] == 0.5
    assert proxy["servers"] == ["127.0.0.1:1", "127.0.0.1:3"] and proxy["hit_ratio"] is None
    assert proxy["down"] == 1


# -- the JSON endpoint and the routes ----------------------------------------------------


def test_arguments_and_read_passwords_from_the_environment() -> None:
    args = parse_args(["--listen", "127.0.0.1:0", "--scheduler", "a:1,b:2", "--kvcache", "c:3"])
    targets = targets_from(args, {"CONSOLE_SCHEDULER_PASSWORD": "pw"})
    assert targets.of("scheduler") == ["a:1", "b:2"] and targets.of("kvcache") == ["c:3"]
    assert targets.passwords["scheduler"] == "pw" and targets.passwords["dfs"] is None
    for bad in (["--scheduler", "no-port"], ["--interval", "0"], ["--interval", "x"],
                ["--listen", "127.0.0.1:99999"], ["--listen", "0.0.0.0:8080"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
    assert parse_args(["--listen", "0.0.0.0:8080", "--protected-mode", "no"]).listen


def test_beyond_loopback_is_refused_with_a_reason(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--listen", "10.1.2.3:8080"])
    assert "refusing to serve the console on 10.1.2.3" in capsys.readouterr().err


def request(method: str, path: str, body: bytes = b"", cookie: str = "") -> Request:
    headers = {"host": "console"} | ({"cookie": cookie} if cookie else {})
    return Request(method, path, "HTTP/1.1", headers, body=body)


def test_routes_refuse_what_they_must() -> None:
    targets = Targets({"scheduler": ["127.0.0.1:1"]}, {})
    app = ConsoleApp(targets, lambda: {"daemons": {}, "charts": {}},
                     SessionStore(lambda: 0.0))

    async def main() -> None:
        first = await app.handle(request("GET", "/api/state"))
        cookie = first.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert "Content-Security-Policy" in first.headers
        state = json.loads(first.body)
        assert state["session"]["logged_in"] == [] and state["login_daemons"] == ["scheduler"]
        token, csrf = cookie.split(";")[0], state["session"]["csrf"]
        assert token.split("=")[1] not in first.body.decode()
        cases = [
            (b"action=pause&name=j", 403, "CSRF"),
            (f"csrf={csrf}&action=pause&name=j".encode(), 403, "log in"),
        ]
        for body, status, text in cases:
            reply = await app.handle(request("POST", "/api/job", body, token))
            assert reply.status == status and text in json.loads(reply.body)["error"]
        login = f"csrf={csrf}&daemon=dfs&password=x".encode()
        reply = await app.handle(request("POST", "/api/login", login, token))
        assert reply.status == 400 and "does not watch" in json.loads(reply.body)["error"]
        login = f"csrf={csrf}&daemon=scheduler&password=x".encode()
        reply = await app.handle(request("POST", "/api/login", login, token))
        assert reply.status == 503  # nothing listens on port 1
        assert (await app.handle(request("GET", "/nope"))).status == 404
        assert (await app.handle(request("GET", "/api/job"))).status == 405
        page = await app.handle(request("GET", "/"))
        assert page.status == 200 and b"/console.js" in page.body

    asyncio.run(main())


def test_logins_rotate_the_session_and_wrong_ones_are_throttled(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from console import app as app_module
    from console.actions import ActionError

    async def check(daemon: str, addresses: list[str], password: str) -> None:
        if password != "s3cret-OK":
            raise ActionError(403, f"wrong password for {daemon}: WRONGPASS")

    monkeypatch.setattr(app_module, "check_password", check)
    now = [0.0]
    app = ConsoleApp(Targets({"scheduler": ["127.0.0.1:1"]}, {}), lambda: {},
                     SessionStore(lambda: now[0]), clock=lambda: now[0])

    async def login(password: str, cookie: str, csrf: str) -> tuple[int, dict[str, Any], str]:
        body = f"csrf={csrf}&daemon=scheduler&password={password}".encode()
        reply = await app.handle(request("POST", "/api/login", body, cookie))
        assert password.encode() not in reply.body
        return reply.status, json.loads(reply.body), reply.headers.get("Set-Cookie", "")

    async def main() -> None:
        first = await app.handle(request("GET", "/api/state"))
        cookie = first.headers["Set-Cookie"].split(";")[0]
        csrf = json.loads(first.body)["session"]["csrf"]
        for _ in range(app_module.MAX_FAILED_LOGINS):
            status, reply, _ = await login("bad-Pa55", cookie, csrf)
            assert status == 403 and "wrong password" in reply["error"]
        status, reply, _ = await login("s3cret-OK", cookie, csrf)
        assert status == 429 and "too many" in reply["error"]
        now[0] += app_module.FAILED_LOGIN_WINDOW_S
        status, reply, new_cookie = await login("s3cret-OK", cookie, csrf)
        assert status == 200 and reply["logged_in"] == ["scheduler"]
        assert new_cookie and new_cookie.split(";")[0] != cookie  # a new token
        stale = await app.handle(request("GET", "/api/state", cookie=cookie))
        assert json.loads(stale.body)["session"]["logged_in"] == []
        fresh = await app.handle(request("GET", "/api/state", cookie=new_cookie.split(";")[0]))
        assert json.loads(fresh.body)["session"]["logged_in"] == ["scheduler"]

    asyncio.run(main())


def test_state_shapes_against_real_daemons(tmp_path: Path) -> None:
    from tests.shardstore_procs import single_node

    kv = kvcache_daemon(tmp_path).start()
    dead = f"127.0.0.1:{find_free_port()}"

    async def main() -> None:
        node = await single_node(tmp_path / "shardstore")
        try:
            store = "{}:{}".format(*node.settings.listen)
            collector = Collector(Targets({"kvcache": [kv.address, dead],
                                           "shardstore": [store], "idgen": [dead]}, {}))
            first = await collector.poll()
            await collector.close()
        finally:
            await node.stop()
        up, down = first["kvcache"]["servers"]
        assert up["up"] and up["stats"]["limit_maxbytes"] > 0 and up["hit_ratio"] is None
        assert not down["up"] and down["error"]
        assert first["idgen"]["nodes"][0]["up"] is False
        shard = first["shardstore"]
        assert shard["nodes"][0]["up"] and isinstance(shard["nodes"][0]["cluster"], list)
        assert any(g["role"] == "leader" for g in shard["nodes"][0]["cluster"])
        assert isinstance(shard["keyspaces"], list) and shard["keyspaces"][0]["name"]
        assert shard["slots"] and shard["slots"][0][:2] == [0, 16383]
        assert isinstance(shard["moves"], list) and isinstance(shard["tables"], list)
        assert "stats" in shard["nodes"][0]["info"]
        json.dumps(first)

    try:
        asyncio.run(main())
    finally:
        kv.stop()


def test_a_real_socket_gets_400_for_garbage_and_keeps_serving() -> None:
    async def main() -> None:
        server = ConsoleServer(Targets({}, {}), interval_s=0.05)
        port = await server.start("127.0.0.1", 0)
        try:
            for garbage in (b"\x00\xff junk\r\n\r\n", b"GET / HTTP/1.1\r\nbad\r\n\r\n"):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(garbage)
                reply = await reader.read()  # the server answers and closes
                assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n")
                writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /api/state HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = await reader.read()
            assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
            assert "polls" in json.loads(reply.split(b"\r\n\r\n", 1)[1])

            def broken() -> dict[str, Any]:
                raise RuntimeError("a bug")

            server.app.state = broken
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /api/state HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\n"
                         b"Host: x\r\nConnection: close\r\n\r\n")
            reply = await reader.read()  # a 500, then the same connection keeps serving
            assert reply.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
            assert reply.count(b"HTTP/1.1 200 OK\r\n") == 1
        finally:
            await server.stop()

    asyncio.run(main())


def test_encode_response_head_only() -> None:
    from console.app import Response

    data = encode_response(Response(204, b"xyz"), head_only=True, keep_alive=False)
    assert data.endswith(b"\r\n\r\n") and b"Content-Length: 3" in data


# -- the README's promises ---------------------------------------------------------------

README = ROOT / "console" / "README.md"


def test_the_readme_lists_every_section_the_page_has() -> None:
    text = README.read_text()
    page = (ROOT / "console" / "static" / "index.html").read_text()
    for section in re.findall(r'<section id="([a-z]+)"', page):
        if section != "login":
            assert f"`#{section}`" in text, section


def test_the_readme_promises() -> None:
    text = " ".join(README.read_text().split())
    promises = [
        "one process keeps HTTP, HTML and JavaScript out of every daemon",
        "The page polls `/api/state` every second",
        "No password ever appears in a page, a JSON reply or the console's log",
        "Read-only until you log in with the daemon's password",
        "`make run` starts one on `http://127.0.0.1:7800/` watching its whole cluster",
        "after five wrong passwords within ten seconds, from any browser, logins are refused",
        "The console serves on loopback addresses only unless started with `--protected-mode "
        "no`",  # test_beyond_loopback_is_refused_with_a_reason
    ]
    from console.app import FAILED_LOGIN_WINDOW_S, MAX_FAILED_LOGINS

    assert (MAX_FAILED_LOGINS, FAILED_LOGIN_WINDOW_S) == (5, 10)
    for promise in promises:
        assert promise in text, promise
    js = (ROOT / "console" / "static" / "console.js").read_text()
    assert "const POLL_MS = 1000;" in js and "innerHTML" not in js.replace("never innerHTML", "")
    assert "http://" not in (ROOT / "console" / "static" / "index.html").read_text()
    example = re.search(r"^python -m console (.+)$", README.read_text(), re.MULTILINE)
    assert example is not None  # the README's example command line parses
    parse_args(example.group(1).split())
    from console.launch import CONSOLE_PORT, local_cluster

    (process,) = local_cluster(Path("var")).processes
    assert CONSOLE_PORT == 7800 and process.port == 7800
    parse_args(process.argv[3:])  # after python -m console
