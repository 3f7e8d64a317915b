"""`--metrics-listen` on the Raft daemons: a one-node scheduler with a worker, a one-node
shardstore with its router, a one-node dfs master with a chunk server, each a real process.
Each scrape is linted by `promtool check metrics` and read against INFO, CLUSTER.GROUPS or
FS.REPORT over the daemon's own protocol once the workload is quiet (a figure read before
and after the scrape that did not move must equal the scrape's)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from dfs.client import DfsClient
from tests.conftest import find_free_port
from tests.metrics_scrape import (
    PROMTOOL,
    cmdstat_calls,
    eventually,
    promtool_problems,
    scrape,
    unprefixed,
    value,
)
from tests.procs import Daemon

pytestmark = pytest.mark.skipif(
    not Path(PROMTOOL).exists(), reason=f"promtool not installed at {PROMTOOL} (Debian's "
    "prometheus package, which .ci/run installs)")

HOST = "127.0.0.1"
KEYS = 20
QUIET_TRIES = 50
TICK_MS = 20  # a one-voter group elects itself after a few ticks: keep them short


def raft_node(tmp: Path, argv: list[str], name: str, metrics_port: int) -> Daemon:
    """A one-voter node of a RESP-on-Raft daemon (not started)."""
    port, peer = find_free_port(HOST), find_free_port(HOST)
    return Daemon([*argv, "--id", "1", "--listen", f"{HOST}:{port}", "--peer-listen",
                   f"{HOST}:{peer}", "--peers", f"1={HOST}:{peer}", "--data-dir",
                   str(tmp / name), "--tick-ms", str(TICK_MS), "--metrics-listen",
                   f":{metrics_port}"],
                  HOST, port, tmp / f"{name}.log")


@contextlib.contextmanager
def running(*daemons: Daemon) -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    try:
        for d in daemons:
            started.append(d.start())
        yield started
    finally:
        for d in reversed(started):
            assert d.stop() == 0, d.log()


def quiet_scrape(port: int, read: Callable[[], Any]) -> tuple[str, Any]:
    """A scrape and `read()`'s figures, once `read()` gave the same before and after it."""
    for _ in range(QUIET_TRIES):
        before = read()
        text = scrape(port)
        if read() == before:
            return text, before
    raise AssertionError("the figures never kept still across a scrape")


def client(d: Daemon) -> redis.Redis:
    return redis.Redis(host=d.host, port=d.port, socket_timeout=15)


def checked(text: str, prefix: str) -> str:
    assert promtool_problems(text) == ""
    assert unprefixed(text, prefix) == set()
    return text


# -- scheduler ----------------------------------------------------------------------------------


def test_scheduler_metrics_agree_with_info(tmp_path: Path) -> None:
    mport = find_free_port()
    node = raft_node(tmp_path, ["scheduler", "serve"], "sched", mport)
    worker = Daemon(["scheduler", "worker", "--scheduler", node.address, "--id", "w1"],
                    HOST, 0, tmp_path / "worker.log")
    with running(node):
        worker.start(wait=False)
        try:
            r = client(node)
            eventually(lambda: _try(lambda: r.execute_command(
                "JOB.ADD", "tick", "@every 200ms", "true")), "a leader taking JOB.ADD")
            eventually(lambda: _started_runs(r) >= 3, "three runs started")
            r.execute_command("JOB.PAUSE", "tick")
            eventually(lambda: r.info("all")["active_runs"] == 0, "the runs finished")
        finally:
            assert worker.stop() == 0, worker.log()

        def read() -> tuple[Any, ...]:
            info = r.info("all")
            return (info["runs_fired"], info["commit_index"], info["applied_index"],
                    info["term"], info["jobs"], cmdstat_calls(info, "job.add"))

        text, (fired, commit, applied, term, jobs, adds) = quiet_scrape(mport, read)
        checked(text, "scheduler")
        assert value(text, "scheduler_runs_fired_total") == fired >= 3
        assert value(text, "scheduler_raft_commit_index", group="0") == commit
        assert value(text, "scheduler_raft_applied_index", group="0") == applied
        assert value(text, "scheduler_raft_term", group="0") == term
        assert value(text, "scheduler_raft_is_leader", group="0") == 1
        assert value(text, "scheduler_raft_leader_changes_total", group="0") >= 1
        assert value(text, "scheduler_raft_fsync_duration_seconds_count", group="0") >= 1
        assert value(text, "scheduler_jobs") == jobs == 1
        assert value(text, "scheduler_commands_total", cmd="job.add") == adds >= 1
        assert value(text, "scheduler_run_lateness_seconds_count") >= 3
        assert value(text, "scheduler_lost_runs_total") == 0
        r.close()


def _try(call: Callable[[], Any]) -> bool:
    try:
        call()
    except redis.ResponseError as exc:
        if "TRYAGAIN" in str(exc):
            return False
        raise
    return True


def _started_runs(r: redis.Redis) -> int:
    history = r.execute_command("JOB.HISTORY", "tick", 10)
    return sum(1 for run in history if int(_field(run, b"started_ms") or -1) > 0)  # -1: not


def _field(run: Any, name: bytes) -> Any:
    if isinstance(run, dict):
        return run.get(name)
    pairs = dict(zip(run[::2], run[1::2], strict=False))
    return pairs.get(name)


# -- shardstore ---------------------------------------------------------------------------------


def test_shardstore_node_and_router_metrics_agree_with_info(tmp_path: Path) -> None:
    mport, rmport = find_free_port(), find_free_port()
    node = raft_node(tmp_path, ["shardstore", "serve", "--shards", "2", "--replicas", "1"],
                     "shard", mport)
    rport = find_free_port(HOST)
    router = Daemon(["shardstore", "router", "--listen", f"{HOST}:{rport}", "--nodes",
                     node.address, "--metrics-listen", f"127.0.0.1:{rmport}"],
                    HOST, rport, tmp_path / "router.log")
    with running(node, router):
        rc = client(router)
        eventually(lambda: _try(lambda: rc.set("probe", "1")), "the router writing")
        for i in range(KEYS):
            rc.set(f"key{i}", i)
        assert rc.get("key3") == b"3"
        n = client(node)

        def read_node() -> tuple[Any, ...]:
            info = n.info("all")
            groups = {g[b"group"]: g for g in _groups(n)}
            return (cmdstat_calls(info, "set"), info["moves_done"],
                    {gid: g[b"commit_index"] for gid, g in groups.items()},
                    {gid: g[b"term"] for gid, g in groups.items()})

        text, (sets, moves_done, commits, terms) = quiet_scrape(mport, read_node)
        checked(text, "shardstore")
        assert value(text, "shardstore_commands_total", cmd="set") == sets >= KEYS
        assert value(text, "shardstore_slot_moves_done_total") == moves_done
        assert len(commits) == 3  # the configuration group and two shards
        for gid, commit in commits.items():
            assert value(text, "shardstore_raft_commit_index", group=str(gid)) == commit
            assert value(text, "shardstore_raft_term", group=str(gid)) == terms[gid]
        assert value(text, "shardstore_raft_fsyncs_total", group="0") >= 1

        def read_router() -> tuple[Any, ...]:
            info = rc.info("all")
            return info["commands_forwarded"], cmdstat_calls(info, "set")

        rtext, (forwarded, rsets) = quiet_scrape(rmport, read_router)
        checked(rtext, "shardstore_router")
        assert value(rtext, "shardstore_router_commands_forwarded_total") == forwarded
        assert value(rtext, "shardstore_router_commands_total", cmd="set") == rsets >= KEYS
        rc.close()
        n.close()


def _groups(r: redis.Redis) -> list[dict[bytes, Any]]:
    out = []
    for group in r.execute_command("CLUSTER.GROUPS"):
        out.append(group if isinstance(group, dict)
                   else dict(zip(group[::2], group[1::2], strict=False)))
    return out


# -- dfs ----------------------------------------------------------------------------------------


def test_dfs_master_and_chunkserver_metrics_agree_with_the_report(tmp_path: Path) -> None:
    mport, cmport = find_free_port(), find_free_port()
    master = raft_node(tmp_path, ["dfs", "master", "--replication", "2",
                                  "--min-chunkservers", "1"], "master", mport)
    cport = find_free_port(HOST)
    chunkserver = Daemon(["dfs", "chunkserver", "--listen", f"{HOST}:{cport}", "--data-dir",
                          str(tmp_path / "cs"), "--masters", master.address, "--heartbeat-ms",
                          "200", "--metrics-listen", f":{cmport}"],
                         HOST, cport, tmp_path / "cs.log")
    with running(master, chunkserver), DfsClient([master.address]) as fs:
        eventually(lambda: _report(fs) and len(_report(fs)["servers"]) == 1,
                   "the chunk server reporting")
        fs.write_bytes("/a", b"x" * 1000)
        fs.write_bytes("/b", b"y" * 1000)
        eventually(lambda: _report(fs)["servers"][0][3] == 2, "both chunks reported")

        def read() -> tuple[Any, ...]:
            report = _report(fs)
            return (len(report["under_replicated"]), len(report["servers"]),
                    report["chunks"], report["servers"][0][3])

        text, (under, servers, chunks, held) = quiet_scrape(mport, read)
        checked(text, "dfs_master")
        assert value(text, "dfs_master_under_replicated_chunks") == under == 2
        assert value(text, "dfs_master_chunk_servers") == servers == 1
        assert value(text, "dfs_master_chunks") == chunks
        assert value(text, "dfs_master_raft_commit_index", group="0") >= 1
        assert value(text, "dfs_master_server_chunks", server=chunkserver.address) == held
        ctext = checked(scrape(cmport), "dfs_chunkserver")
        assert value(ctext, "dfs_chunkserver_chunks") == held == 2
        assert value(ctext, "dfs_chunkserver_used_bytes") == 2000
        assert value(ctext, "dfs_chunkserver_commands_total", cmd="put") == 2  # one per file
        assert value(ctext, "dfs_chunkserver_command_duration_seconds_count", cmd="put") == 2


def _report(fs: DfsClient) -> dict[str, Any]:
    try:
        return fs.report()
    except Exception:  # noqa: BLE001 - no leader yet, or safe mode: poll again
        return {}
