"""`dfs master`: the command line (every option has help text, bad values exit 2), then a
real 3-master cluster, one process per master on 127.0.0.2-4, driven with redis-py:
operations on any master, errors as RESP errors, the trash purged by the leader; then the
leader SIGKILLed in the middle of a create/rename sequence: every acknowledged operation is
in the namespace afterwards, and the killed master, restarted, catches up.
Timeouts only detect hangs.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError, TryAgainError
from redis.exceptions import TimeoutError as RedisTimeoutError

from dfs import __main__ as cli
from dfs import namespace as ns
from tests.conftest import find_free_port
from tests.procs import Daemon

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
HANG_S = 30.0
KEEP_MS = 1500  # the cluster's trash retention
UNSURE = (TryAgainError, RedisConnectionError, RedisTimeoutError)


# -- the command line ---------------------------------------------------------------------------

def test_every_master_option_has_help_text() -> None:
    master = next(a for a in cli.build_parser()._actions
                  if isinstance(a, argparse._SubParsersAction)).choices["master"]
    for action in master._actions:
        if action.option_strings == ["--clock-offset-ms"]:  # core's hidden test option
            assert action.help == argparse.SUPPRESS
            continue
        assert action.help and action.help.strip(), action.option_strings
    assert {"--trash-keep-ms", "--purge-every-ms", "--snapshot-every", "--id", "--peers",
            "--data-dir"} <= {s for a in master._actions for s in a.option_strings}


@pytest.mark.parametrize(("extra", "error"), [
    (["--trash-keep-ms", "-1"], cli.ERR_TRASH_KEEP),
    (["--purge-every-ms", "0"], cli.ERR_PURGE_EVERY),
    (["--snapshot-every", "0"], cli.ERR_SNAPSHOT_EVERY),
    (["--timeout-ms", "0"], cli.ERR_TIMEOUT),
    ([], "--data-dir is required"),
])
def test_bad_master_options_exit_2(extra: list[str], error: str, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    data = [] if not extra else ["--data-dir", str(tmp_path)]
    assert cli.main(["master", "--id", "1", *data, *extra]) == 2
    assert capsys.readouterr().err.startswith(f"dfs: {error}")


# -- a real cluster -----------------------------------------------------------------------------

class Cluster:
    """Three `dfs master` processes (ids 1-3) on HOSTS."""

    def __init__(self, tmp: Path) -> None:
        raft = [find_free_port(h) for h in HOSTS]
        self.ports = [find_free_port(h) for h in HOSTS]
        peers = ",".join(f"{i + 1}={h}:{p}" for i, (h, p) in enumerate(zip(HOSTS, raft,
                                                                            strict=True)))
        self.nodes = [Daemon(["dfs", "master", "--id", str(i + 1),
                              "--listen", f"{h}:{self.ports[i]}",
                              "--peer-listen", f"{h}:{raft[i]}", "--peers", peers,
                              "--data-dir", str(tmp / f"m{i + 1}"), "--tick-ms", "10",
                              "--election-tick", "100", "--timeout-ms", "3000",
                              "--snapshot-every", "20", "--trash-keep-ms", str(KEEP_MS),
                              "--purge-every-ms", "50"],
                             h, self.ports[i], tmp / f"m{i + 1}.log")
                      for i, h in enumerate(HOSTS)]
        self.clients = [redis.Redis(host=h, port=p, decode_responses=True,
                                    socket_timeout=HANG_S)
                        for h, p in zip(HOSTS, self.ports, strict=True)]

    def leader(self) -> int:
        """The leader's id once every master knows every client address (0: not yet)."""
        try:
            infos = [c.execute_command("CLUSTER.INFO") for c, n in zip(
                self.clients, self.nodes, strict=True) if n.alive()]
        except (ResponseError, *UNSURE):
            return 0
        leaders = {int(i["leader"]) for i in infos}
        full = all(len(i["clients"]) == 3 for i in infos)
        return leaders.pop() if full and len(leaders) == 1 else 0


def eventually(probe: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + HANG_S
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"hang: still waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        for node in c.nodes:
            node.start()
        eventually(c.leader, "a leader and a full address book")
        yield c
    finally:
        for node in c.nodes:  # (a graceful stop would wait out hand-overs to dead nodes)
            if node.alive():
                node.kill()


def test_operations_on_any_master(cluster: Cluster) -> None:
    a, b, c = cluster.clients
    assert a.execute_command("FS.MKDIR", "/data/logs", "PARENTS") == "OK"
    assert b.execute_command("FS.CREATE", "/data/logs/x") == "OK"
    assert c.execute_command("FS.LS", "/data/logs") == ["x"]  # every master reads it
    assert c.execute_command("FS.RENAME", "/data/logs/x", "/data/y") == "OK"
    assert a.execute_command("FS.LS", "/data") == ["logs/", "y"]
    stat = b.execute_command("FS.STAT", "/data/y")
    assert stat["type"] == "file" and stat["size"] == 0 and stat["chunks"] == []
    errors = [
        (a, ("FS.CREATE", "/data/y"), ns.ERR_EXISTS.format("/data/y")),
        (b, ("FS.MKDIR", "/data/y/z"), ns.ERR_NOT_DIR.format("/data/y")),
        (c, ("FS.STAT", "/nope"), ns.ERR_NO_ENTRY.format("/nope")),
        (a, ("FS.DELETE", "/data"), ns.ERR_DIR_NOT_EMPTY.format("/data")),
        (b, ("FS.RENAME", "/data", "/data/logs/in"),
         ns.ERR_INTO_ITSELF.format("/data", "/data/logs/in")),
        (c, ("FS.LS", "relative"), ns.ERR_BAD_PATH.format("relative")),
        (a, ("FS.DELETE", "/data", "NOW"), "ERR syntax error"),
    ]
    for client, args, text in errors:  # (redis-py drops the "ERR " of an error)
        with pytest.raises(ResponseError) as info:
            client.execute_command(*args)
        assert str(info.value) == text.removeprefix("ERR ")
    trash_id = c.execute_command("FS.DELETE", "/data", "RECURSIVE")
    assert a.execute_command("FS.LS", "/") == []
    rows = b.execute_command("FS.TRASH")  # (it may already be purged on a slow machine)
    for row in rows:
        assert row[:3] == [trash_id, "/data", "dir"] and row[4] - row[3] == KEEP_MS
    eventually(lambda: c.execute_command("FS.TRASH") == [], "the leader's purge")


def attempt(cluster: Cluster, start: int, *args: str) -> tuple[str, Any]:
    """Send to the masters in turn, from `start`, until one answers other than TRYAGAIN
    or a lost connection: ("ok", reply), ("error", text) or, for a request sent again
    after an unsure try, ("unsure", last reply)."""
    unsure = False
    deadline = time.monotonic() + HANG_S
    node = start
    while time.monotonic() < deadline:
        client = cluster.clients[node % 3]
        if not cluster.nodes[node % 3].alive():
            node += 1
            continue
        try:
            reply = client.execute_command(*args)
            return ("unsure" if unsure else "ok"), reply
        except ResponseError as exc:
            return ("unsure" if unsure else "error"), str(exc)
        except UNSURE:
            unsure = True
            node += 1
            time.sleep(0.05)
    raise AssertionError(f"hang: {args} never answered")


def test_a_sigkilled_leader_loses_no_acknowledged_operation(cluster: Cluster) -> None:
    count, kill_at = 40, 15
    created: list[int] = []  # acknowledged creates of /d/f<i>
    renamed: list[int] = []  # acknowledged renames of /d/f<i> to /d/g<i>
    assert attempt(cluster, 0, "FS.MKDIR", "/d") == ("ok", "OK")
    killed = 0
    for i in range(count):
        if i == kill_at:
            killed = cluster.leader()
            cluster.nodes[killed - 1].kill()
        outcome, _ = attempt(cluster, i, "FS.CREATE", f"/d/f{i}")
        if outcome == "ok":
            created.append(i)
        if i % 2 == 0 and i > 0:
            outcome, _ = attempt(cluster, i + 1, "FS.RENAME", f"/d/f{i - 2}", f"/d/g{i - 2}")
            if outcome == "ok":
                renamed.append(i - 2)
    assert len(created) > kill_at  # the cluster went on after the kill

    survivor = next(i for i in range(3) if cluster.nodes[i].alive())
    names = set(attempt(cluster, survivor, "FS.LS", "/d")[1])
    for i in created:
        assert f"f{i}" in names or f"g{i}" in names, i
    for i in renamed:
        assert f"g{i}" in names and f"f{i}" not in names, i
    for name in names:  # each create and rename is wholly there or not at all
        assert name[:1] in "fg" and not (name[:1] == "g" and f"f{name[1:]}" in names)

    cluster.nodes[killed - 1].start()  # catches up (from a snapshot or the log)
    restarted = cluster.clients[killed - 1]

    def caught_up() -> bool:
        try:
            return set(restarted.execute_command("FS.LS", "/d")) == names
        except (ResponseError, *UNSURE):
            return False

    eventually(caught_up, "the restarted master to catch up")
