"""The web console in a real headless Chromium (Selenium), against real daemons.

A three-node scheduler cluster with a password (127.0.0.2-4), one kvcache server and the
console process. The page must load without console errors and show the cluster's job;
logged out it offers no action and the console refuses one; a wrong password is refused with
a message; after logging in with the scheduler's password a job paused from the page is
paused in the cluster (read with the scheduler's own client); a SIGKILLed scheduler leader
shows on the page as a down node and another leader. Every wait polls a condition until a
generous deadline; nothing asserts how long anything took.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from scheduler.client import SchedulerClient
from tests.conftest import find_free_port
from tests.procs import Daemon, kvcache_daemon
from tests.test_scheduler_daemon import Cluster, running_cluster, wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PASSWORD = "console-test-pw"
JOB = "console-job"
HANG_S = 40.0  # a wait longer than this is a hang, not slowness

pytestmark = pytest.mark.skipif(not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)),
                                reason="Debian's chromium and chromium-driver are needed")


@dataclass
class World:
    cluster: Cluster
    kvcache: Daemon
    console: Daemon

    @property
    def url(self) -> str:
        return f"http://{self.console.address}/"

    def scheduler(self) -> SchedulerClient:
        live = [(n.host, n.port) for n in self.cluster.nodes if n.alive()]
        return SchedulerClient(live, password=PASSWORD)

    def logs(self) -> str:
        return f"{self.cluster.logs()}\n--- console\n{self.console.log()[-3000:]}"


def wait_for(probe: Callable[[], Any], what: str, world: World | None = None) -> Any:
    """tests/test_scheduler_daemon.py's wait_until, naming the console's log too."""
    return wait_until(probe, what, world)  # type: ignore[arg-type]


def job_fields(client: SchedulerClient, name: str) -> dict[str, Any]:
    reply = client.get(name)  # RESP2: a flat list of fields and values
    if isinstance(reply, dict):
        return {str(k): v for k, v in reply.items()}
    text = [v.decode() if isinstance(v, bytes) else v for v in reply]
    return dict(zip(text[::2], text[1::2], strict=True))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("console")
    with running_cluster(tmp, node_args=["--requirepass", PASSWORD], worker=False) as cluster:
        kv = kvcache_daemon(tmp).start()
        port = find_free_port()
        nodes = ",".join(n.address for n in cluster.nodes)
        console = Daemon(["console", "--listen", f"127.0.0.1:{port}", "--scheduler", nodes,
                          "--kvcache", kv.address], "127.0.0.1", port, tmp / "console.log",
                         env={"CONSOLE_SCHEDULER_PASSWORD": PASSWORD})
        world = World(cluster, kv, console)
        try:
            with world.scheduler() as client:
                client.add(JOB, "@every 1h", "true")
            console.start()
            yield world
        finally:
            console.stop()
            kv.stop()


@pytest.fixture(scope="module")
def driver(world: World) -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options,
                               service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        yield browser
    finally:
        browser.quit()


def css(driver: Any, selector: str) -> list[Any]:
    return list(driver.find_elements(By.CSS_SELECTOR, selector))


# The page redraws every second, so elements are looked up and used in one script call
# (an element held across a redraw would be stale).
def text_of(driver: Any, selector: str) -> str | None:
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
        selector)


def click(driver: Any, selector: str) -> bool:
    return bool(driver.execute_script(
        "const e = document.querySelector(arguments[0]); if (e) e.click(); return !!e;",
        selector))


def post(world: World, path: str, fields: dict[str, str], cookie: str) -> tuple[int, dict]:
    body = "&".join(f"{k}={v}" for k, v in fields.items()).encode()
    request = urllib.request.Request(world.url.rstrip("/") + path, data=body,
                                     headers={"Cookie": cookie})
    try:
        with urllib.request.urlopen(request, timeout=HANG_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_page_loads_without_errors_and_shows_the_job(world: World, driver: Any) -> None:
    driver.get(world.url)
    wait_for(lambda: css(driver, f'tr[data-job="{JOB}"]'), "the job on the page", world)
    wait_for(lambda: css(driver, 'tr[data-server] td.state'), "the kvcache row", world)
    assert text_of(driver, "#leader-scheduler") in ("1", "2", "3", "none")
    assert text_of(driver, f'tr[data-job="{JOB}"] td.paused') == "no"
    assert text_of(driver, f'tr[data-job="{JOB}"] td.next') not in (None, "–")  # next fire
    # the throughput chart draws a line per daemon once two polls gave counter deltas
    wait_for(lambda: len(css(driver, "#chart-ops polyline")) >= 2, "the throughput chart", world)
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe


def test_a_job_opens_its_run_history(world: World, driver: Any) -> None:
    wait_for(lambda: click(driver, f'button[data-history="{JOB}"]'), "the Runs button", world)
    shown = wait_for(lambda: text_of(driver, f'tr[data-history-of="{JOB}"]'),
                     "the job's run history", world)
    assert "no runs yet" in shown or "run" in shown
    click(driver, f'button[data-history="{JOB}"]')
    wait_for(lambda: text_of(driver, f'tr[data-history-of="{JOB}"]') is None,
             "the run history closed", world)


def test_the_state_endpoint_shapes(world: World) -> None:
    with urllib.request.urlopen(world.url + "api/state", timeout=HANG_S) as response:
        assert response.headers["Content-Type"] == "application/json"
        state = json.loads(response.read())
    assert set(state) >= {"polled_ms", "polls", "daemons", "charts", "session",
                          "login_daemons"}
    assert state["login_daemons"] == ["scheduler"] and state["session"]["logged_in"] == []
    scheduler = state["daemons"]["scheduler"]
    assert [n["address"] for n in scheduler["nodes"]] == [n.address for n in world.cluster.nodes]
    for node in scheduler["nodes"]:
        if node["up"]:
            assert set(node["cluster"]) >= {"id", "role", "leader", "term", "members"}
            assert "runs_fired" in node["info"]["scheduler"]
    (job,) = [j for j in scheduler["jobs"] if j["name"] == JOB]
    assert job["next_ms"] > 0 and isinstance(job["history"], list) and job["paused"] in (0, 1)
    assert scheduler["job_count"] >= 1
    (server,) = state["daemons"]["kvcache"]["servers"]
    assert server["up"] and server["kind"] == "server"
    assert state["daemons"]["kvcache"]["pools"][0]["servers"] == [world.kvcache.address]
    assert all(isinstance(points, list) for points in state["charts"].values())
    assert PASSWORD not in json.dumps(state)


def test_logged_out_no_action_is_offered_or_accepted(world: World, driver: Any) -> None:
    assert css(driver, "button[data-action]") == []  # Pause, Resume, Run now
    assert driver.find_element(By.ID, "login-state").text == "read-only"
    # a session of its own (urllib), with a valid CSRF token but no login
    with urllib.request.urlopen(world.url + "api/state", timeout=HANG_S) as response:
        cookie = response.headers["Set-Cookie"].split(";")[0]
        csrf = json.loads(response.read())["session"]["csrf"]
    status, reply = post(world, "/api/job", {"csrf": csrf, "action": "pause", "name": JOB},
                         cookie)
    assert status == 403 and "log in" in reply["error"]
    status, reply = post(world, "/api/job", {"csrf": "forged", "action": "pause", "name": JOB},
                         cookie)
    assert status == 403 and "CSRF" in reply["error"]
    with world.scheduler() as client:
        assert str(job_fields(client, JOB)["paused"]) == "0"


def _login(driver: Any, password: str) -> None:
    field = driver.find_element(By.ID, "login-password")
    field.clear()
    field.send_keys(password)
    driver.find_element(By.ID, "login-button").click()


def test_a_wrong_password_is_refused_with_a_message(world: World, driver: Any) -> None:
    _login(driver, "not-the-password")
    message = wait_for(lambda: driver.find_element(By.ID, "login-message").text,
                       "the login message", world)
    assert "wrong password" in message
    assert driver.find_element(By.ID, "login-state").text == "read-only"


def test_a_job_paused_from_the_page_is_paused_in_the_cluster(world: World,
                                                             driver: Any) -> None:
    _login(driver, PASSWORD)
    wait_for(lambda: click(driver, f'button[data-action="pause"][data-job="{JOB}"]'),
             "the pause button after the login", world)
    assert "scheduler" in driver.find_element(By.ID, "login-state").text
    with world.scheduler() as client:
        wait_for(lambda: str(job_fields(client, JOB)["paused"]) == "1",
                 "the job paused in the cluster", world)
    wait_for(lambda: css(driver, f'tr[data-job="{JOB}"] td.paused-yes'),
             "the page to show the job paused", world)
    assert PASSWORD not in driver.page_source
    assert all(c["httpOnly"] for c in driver.get_cookies() if c["name"] == "console_session")


def test_a_killed_leader_shows_on_the_page(world: World, driver: Any) -> None:
    shown = wait_for(lambda: _leader(driver), "a leader on the page", world)
    node = world.cluster.nodes[int(shown) - 1]
    node.kill()

    def moved() -> bool:
        rows = css(driver, f'tr[data-node="{node.address}"].down')
        now = _leader(driver)
        return bool(rows) and now is not None and now != shown

    wait_for(moved, "the dead node marked down and a new leader shown", world)


def _leader(driver: Any) -> str | None:
    text = text_of(driver, "#leader-scheduler") or ""
    return text if text.isdigit() else None


def test_the_console_log_has_no_password(world: World) -> None:
    assert PASSWORD not in Path(world.console.log_path).read_text(errors="replace")
