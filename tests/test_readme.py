"""README.md's examples, run for real: every ```python block and every shell line that talks
to a running daemon (the README rule: a promise in the README is one a test checks).

Strategy: one module fixture starts `make run`'s local cluster from the daemons' own
declarations (core.launcher.local_clusters) with its data in a temporary directory, so the
README's examples use the addresses `make run` prints. A python block runs as typed into an
interactive session: each top-level statement is compiled in 'single' mode, so the values the
session would show go to a displayhook that records them, and `print` is recorded too. A
check per block (found by the import line it has) says what those values must be. Shell
lines run through the shell from the project root, each checked against what its comment
says; a terminal shows redis-cli's formatted replies, which the test asks for with
`--no-raw`. A block or a line without a check fails the test, so a new example needs one.
The `serve` lines (how to start a daemon by hand) are run by tests/test_readme_promises.py.
The shell worker's environment, which the README describes in prose, is checked here too,
on the same cluster. Timeouts only detect hangs.
"""

from __future__ import annotations

import ast
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from core import launcher
from core.launch_spec import Process

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
START_S = 60.0  # hang detection: a daemon accepts, the scheduler elects, a handler runs
STOP_S = 15.0
POLL_S = 0.1
COMMAND_S = 30.0
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
DAEMON_LINE = re.compile(r"^(redis-cli|printf|\.venv/bin/\w+ (next|parse|job))\b")
SERVE_LINE = re.compile(r"^\.venv/bin/(\w+) (serve|worker)\b")


# -- the README's blocks ------------------------------------------------------------------------


def blocks(language: str) -> list[str]:
    """The bodies of README.md's fenced blocks in `language`, in order."""
    text = README.read_text()
    return [body for lang, body in FENCE.findall(text) if lang == language]


def shell_lines() -> list[str]:
    """Every command of the ```sh blocks, continuation lines joined, comments kept."""
    lines: list[str] = []
    for body in blocks("sh"):
        pending = ""
        for raw in body.splitlines():
            if raw.rstrip().endswith("\\"):
                pending += raw.rstrip()[:-1] + " "
                continue
            line = (pending + raw).strip()
            pending = ""
            if line:
                lines.append(line)
    return lines


def split_comment(line: str) -> tuple[str, str]:
    """(command, its comment): the comment is what follows the last `  # `."""
    command, sep, comment = line.rpartition("  # ")
    return (command.strip(), comment.strip()) if sep else (line.strip(), "")


# -- the local cluster of `make run` ------------------------------------------------------------


@dataclass
class Cluster:
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)


def port_is_open(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def wait_until(condition: Callable[[], Any], what: str, timeout_s: float = START_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            result = condition()
        except (OSError, redis.RedisError):
            result = None
        if result:
            return result
        time.sleep(POLL_S)
    raise AssertionError(f"timed out waiting for {what}")


def start(spec: Process, log_dir: Path, cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    with open(log_dir / f"{spec.name}.log", "ab") as log:
        return subprocess.Popen(spec.argv, cwd=cwd, stdout=log, stderr=log)


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    return reap(process)


def reap(process: subprocess.Popen[bytes]) -> int:
    """Wait for a signalled process's exit code (SIGKILL and raise after STOP_S). It is not
    signalled again: a second SIGTERM during its shutdown would kill it uncleanly."""
    try:
        return process.wait(timeout=STOP_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


def stop_all(processes: list[subprocess.Popen[bytes]]) -> list[int]:
    """SIGTERM every process first, then reap each: the nodes of a cluster shut down side by
    side, so none waits on peers that an earlier stop already took away. Stop a cluster's
    clients (a worker reporting its last run) in an earlier call, while their servers run."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    return [reap(process) for process in processes]


def scheduler_ready(ports: list[int]) -> bool:
    """Every node knows the leader and the address book holds every node."""
    for port in ports:
        info = redis.Redis(port=port, socket_timeout=5, protocol=3,
                           decode_responses=True).execute_command("CLUSTER.INFO")
        if not info["leader"] or len(info["clients"]) < len(ports):
            return False
    return True


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    var = tmp_path_factory.mktemp("readme") / "var"
    var.mkdir()
    specs = [p for c in launcher.local_clusters(var) for p in c.processes]
    ports = [(p.host, p.port) for p in specs if p.port]
    wait_until(lambda: not any(port_is_open(*a) for a in ports),
               "make run's ports to be free (is `make run` or test_launcher running?)")
    running = Cluster()
    try:
        for spec in specs:
            running.processes.append(start(spec, var))
        for host, port in ports:
            wait_until(lambda h=host, p=port: port_is_open(h, p), f"{host}:{port}")
        scheduler_ports = [p.port for p in specs if p.name.startswith("scheduler-")]
        wait_until(lambda: scheduler_ready(scheduler_ports), "a scheduler leader")
        yield running
    finally:
        # the portless processes (the shell worker) are clients of the others: they stop
        # first, so a run in flight reports to a live scheduler instead of retrying into
        # the worker's stop grace
        started = zip(specs, running.processes, strict=False)  # shorter if a start failed
        portless = [proc for spec, proc in started if not spec.port]
        served = [proc for proc in running.processes if proc not in portless]
        codes = stop_all(portless) + stop_all(served)
        logs = {f.name: f.read_text()[-2000:] for f in var.glob("*.log")}
        assert codes == [0] * len(codes), logs


# -- python blocks ------------------------------------------------------------------------------


@dataclass
class Session:
    """What one block showed: displayed values and printed argument tuples."""

    shown: list[Any] = field(default_factory=list)
    printed: list[tuple[Any, ...]] = field(default_factory=list)
    namespace: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def print(self, *args: Any, **_: Any) -> None:
        with self.lock:
            self.printed.append(args)


def run_block(source: str) -> Session:
    """Run `source` as typed at the interactive prompt (see the module header)."""
    session = Session()
    session.namespace.update(__name__="__readme__", print=session.print)
    previous = sys.displayhook
    sys.displayhook = lambda value: None if value is None else session.shown.append(value)
    try:
        for statement in ast.parse(source).body:
            code = compile(ast.Interactive([statement]), str(README), "single")
            exec(code, session.namespace)  # noqa: S102 - the README's own example
    finally:
        sys.displayhook = previous
    return session


def check_idgen_client(session: Session) -> None:
    [new_id] = session.shown
    assert isinstance(new_id, int) and 0 < new_id < 2**63
    assert (new_id >> 12) & 0x3FF in (1, 2)  # a worker of the two servers named


def check_kvcache_client(session: Session) -> None:
    stored, found = session.shown
    assert stored is True
    assert list(found) == ["user:1"] and found["user:1"].value == b"ada"  # a miss is absent


def check_embedded_worker(session: Session) -> None:
    assert callable(session.namespace["stop"])  # runs are checked after the client's block


def check_blocking_client(session: Session) -> None:
    run_id, history = session.shown
    assert isinstance(run_id, str) and run_id.startswith("bill@")
    assert isinstance(history, list) and len(history) == 1


def check_async_client(session: Session) -> None:
    [names] = session.shown
    assert "bill" in names


def check_shardstore_client(session: Session) -> None:
    assert session.shown == [True, True, [b"1", b"2"], b"ada"]


def check_dfs_client(session: Session) -> None:
    assert session.shown == [b"hello, dfs\n", 11]


PYTHON_CHECKS: dict[str, Callable[[Session], None]] = {
    "from idgen.client import IdgenClient": check_idgen_client,
    "from kvcache.client import Client": check_kvcache_client,
    "from scheduler.client import EmbeddedWorker, Run": check_embedded_worker,
    "from scheduler.client import SchedulerClient": check_blocking_client,
    "from scheduler.client import AsyncSchedulerClient": check_async_client,
    "from shardstore.client import ShardstoreClient": check_shardstore_client,
    "from dfs.client import DfsClient": check_dfs_client,
}


def check_of(source: str) -> Callable[[Session], None]:
    """The check of a block: the one whose import line the block has."""
    for key, check in PYTHON_CHECKS.items():
        if key in source:
            return check
    raise AssertionError(f"README python block without a check in {__name__}:\n{source}")


def test_every_python_block_has_a_check() -> None:
    sources = blocks("python")
    assert sources, "README.md has no python block"
    checks = [check_of(source) for source in sources]
    assert len(set(checks)) == len(checks) == len(PYTHON_CHECKS)


def test_python_blocks_run_against_make_runs_cluster(cluster: Cluster) -> None:
    sessions: list[Session] = []
    try:
        for source in blocks("python"):
            session = run_block(source)
            sessions.append(session)
            check_of(source)(session)
        worker = next(s for s in sessions if "stop" in s.namespace)
        # The handler prints the run it got (job, slot, attempt, shard, shards).
        wait_until(lambda: worker.printed, "the embedded worker's handler to run")
        [(job, scheduled_at_ms, attempt, shard, shards)] = worker.printed
        assert (job, attempt, shard, shards) == ("bill", 1, 0, 1)
        assert isinstance(scheduled_at_ms, int) and scheduled_at_ms > 0
    finally:
        for session in sessions:
            if "stop" in session.namespace:
                session.namespace["stop"]()


# -- shell lines --------------------------------------------------------------------------------


def run_shell(command: str) -> str:
    if command.startswith("redis-cli "):
        command = "redis-cli --no-raw " + command.removeprefix("redis-cli ")
    done = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True,
                          timeout=COMMAND_S, check=False)
    output = done.stdout.decode()  # as bytes: the wire's \r\n stays
    assert done.returncode == 0, (command, output, done.stderr)
    assert not output.startswith("(error)"), (command, output)
    return output


def integers(output: str) -> list[int]:
    """The integers of redis-cli's formatted reply or of one-per-line output, in order."""
    return [int(n) for n in re.findall(r"(?:\(integer\) |^:?)(\d+)$", output, re.M)]


def increasing(values: list[int]) -> bool:
    return all(a < b for a, b in zip(values, values[1:], strict=False))


def fields(output: str) -> list[str]:
    """Field names of a map reply as redis-cli or a CLI shows it (one name per line)."""
    return re.findall(r'^\s*(?:\d+\) )?"?([a-z_]+)"?(?:\s|$)', output, re.M)


def check_next(output: str, comment: str) -> None:
    assert re.fullmatch(r"\(integer\) \d+\n", output), output


def check_next_n(output: str, comment: str) -> None:
    count = int(re.search(r"an array of (\d+) ids", comment).group(1))  # type: ignore[union-attr]
    ids = integers(output)
    assert len(ids) == count and increasing(ids), output
    assert output.startswith("1) (integer) "), output


def check_parse(output: str, comment: str) -> None:
    for name in re.findall(r"\w+", comment):
        assert name in fields(output), (name, output)


def check_nc_next(output: str, comment: str) -> None:
    count = int(re.search(r"\*(\d+)", comment).group(1))  # type: ignore[union-attr]
    lines = output.split("\r\n")
    assert lines[0] == f"*{count}", output
    assert increasing([int(x[1:]) for x in lines[1:1 + count] if x.startswith(":")]), output


def check_cli_next(output: str, comment: str) -> None:
    count = int(re.search(r"(\d+) ids", comment).group(1))  # type: ignore[union-attr]
    ids = [int(x) for x in output.split()]
    assert len(ids) == count and increasing(ids), output


def check_info_idgen(output: str, comment: str) -> None:
    for name in re.findall(r"\w+", comment):
        assert f"\n{name}:" in output, (name, output)


def check_memcached(output: str, comment: str) -> None:
    assert re.fullmatch(r"STORED\r\nVALUE \w+ 0 \d+\r\n\w+\r\nEND\r\n", output), output


def check_ok(output: str, comment: str) -> None:
    assert output == "OK\n", output


def check_job_list(output: str, comment: str) -> None:
    job = comment.split(":")[0]
    assert job in output.split(), output  # found on make run's nodes without --server


def check_history(output: str, comment: str) -> None:
    def fired() -> bool:
        return "run_id" in run_shell("redis-cli -p 7402 JOB.HISTORY tick 3")

    wait_until(fired, "a run of the job tick")
    run_shell("redis-cli -p 7401 JOB.DEL tick")  # the test's own tidying, not the README's


def check_cluster_info(output: str, comment: str) -> None:
    for name in re.findall(r"\w+", comment):
        assert name in fields(output), (name, output)


def check_leader(output: str, comment: str) -> None:
    leader, port = re.fullmatch(r'1\) \(integer\) (\d)\n2\) "127\.0\.0\.1:(\d+)"\n',
                                output).groups()  # type: ignore[union-attr]
    assert int(port) == 7400 + int(leader), output


def check_groups(output: str, comment: str) -> None:
    assert output.startswith("1)  1) \"group\"\n    2) (integer) 0\n"), output
    assert "2)  1) \"group\"" not in output, output  # the scheduler hosts one group
    for name in ("role", "leader", "term", "members", "commit_index", "applied_index"):
        assert name in fields(output), (name, output)


def check_transfer(output: str, comment: str) -> None:
    target = int(re.search(r"node (\d) leads", comment).group(1))  # type: ignore[union-attr]
    assert output == f"(integer) {target}\n", output
    for port in (7401, 7402, 7403):
        wait_until(lambda p=port: f"(integer) {target}\n" in run_shell(
            f"redis-cli -p {p} CLUSTER.LEADER"), f"node {target} to lead, seen on {port}")


def check_command_info(output: str, comment: str) -> None:
    assert output.startswith('1)  1) "job.add"\n    2) (integer) -4\n'), output
    assert "begin_search" in output and "find_keys" in output, output  # key specs


def check_command_docs(output: str, comment: str) -> None:
    assert output.startswith('1) "next"\n'), output
    assert '"summary"' in output and '"group"' in output, output


SHELL_CHECKS: dict[str, Callable[[str, str], None]] = {
    r"redis-cli -p 710\d NEXT": check_next,
    r"redis-cli -p 710\d NEXT \d+": check_next_n,
    r"redis-cli -p 710\d PARSE \d+": check_parse,
    r"printf 'NEXT \d+\\r\\n' \| nc -q1 127\.0\.0\.1 710\d": check_nc_next,
    r"\.venv/bin/idgen next -n \d+ --server [\d.:,]+": check_cli_next,
    r"\.venv/bin/idgen parse \d+": check_parse,
    r"redis-cli -p 710\d INFO idgen": check_info_idgen,
    r"printf 'set (\w+) 0 0 \d+\\r\\n\w+\\r\\nget \1\\r\\n' \| nc -q1 127\.0\.0\.1 113[01]\d":
        check_memcached,
    r"redis-cli -p 740\d JOB\.ADD tick .*": check_ok,
    r"\.venv/bin/scheduler job list": check_job_list,
    r"redis-cli -p 740\d JOB\.HISTORY tick \d+": check_history,
    r"redis-cli -p 740\d CLUSTER\.INFO": check_cluster_info,
    r"redis-cli -p 740\d CLUSTER\.LEADER": check_leader,
    r"redis-cli -p 740\d CLUSTER\.GROUPS": check_groups,
    r"redis-cli -p 740\d CLUSTER\.TRANSFER \d": check_transfer,
    r"redis-cli -p 740\d COMMAND INFO JOB\.ADD": check_command_info,
    r"redis-cli -p 710\d COMMAND DOCS NEXT": check_command_docs,
}


def shell_check(command: str) -> Callable[[str, str], None]:
    for pattern, check in SHELL_CHECKS.items():
        if re.fullmatch(pattern, command):
            return check
    raise AssertionError(f"README shell line without a check in {__name__}: {command}")


def daemon_lines() -> list[tuple[str, str]]:
    return [split_comment(line) for line in shell_lines() if DAEMON_LINE.match(line)]


def test_every_shell_line_is_checked_or_started() -> None:
    """A line is a `make` command, a `serve`/`worker` line, or a checked daemon command."""
    for line in shell_lines():
        command, _ = split_comment(line)
        if not (command.startswith("make ") or SERVE_LINE.match(command)):
            shell_check(command)


def test_shell_lines_against_make_runs_cluster(cluster: Cluster) -> None:
    lines = daemon_lines()
    assert lines
    for command, comment in lines:
        shell_check(command)(run_shell(command), comment)


def test_the_shell_worker_runs_a_command_in_its_own_process_group_with_the_run(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The README's SCHED_* variables, and the process group, of make run's shell worker."""
    out = tmp_path / "env"
    command = ('echo "$SCHED_JOB $SCHED_SCHEDULED_AT $SCHED_RUN_ID $SCHED_ATTEMPT $$ '
               f'$(cut -d" " -f5 /proc/$$/stat)" >> {out}')
    client = redis.Redis(port=7402, socket_timeout=COMMAND_S, decode_responses=True)
    assert client.execute_command("JOB.ADD", "envcheck", "@every 1h", command) == "OK"
    run_id = client.execute_command("JOB.RUN", "envcheck")
    wait_until(lambda: out.exists() and out.read_text().endswith("\n"), "the run's output")
    job, scheduled_at, seen_run_id, attempt, pid, pgid = out.read_text().split("\n")[0].split()
    assert (job, seen_run_id, attempt) == ("envcheck", run_id, "1")
    assert run_id == f"envcheck@{scheduled_at}/0"
    assert pid == pgid  # the shell leads its own process group
