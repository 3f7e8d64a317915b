"""`scheduler job|history|cluster ...`, the client command line, run as a user runs it.

Which nodes it asks (`--server`, else `$SCHEDULER_SERVERS`, else make run's), that it gives
up at once with a message naming them when none answers (the `--deadline` it was given is
the window it says it used; nothing here measures time), that a node that does not answer
ahead of one that does costs nothing but the probe, and that the schedule parser's errors
reach the user as they are. A single-node scheduler (it elects itself) serves the requests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.client_cli import SOURCE_DEFAULT, resolve_servers
from core.launcher import local_clusters
from scheduler import jobs
from scheduler.__main__ import DEFAULT_PORT, SERVERS_ENV, build_parser
from scheduler.launch import client_addresses
from scheduler.schedule_parse import KNOWN_MACROS, ScheduleError, parse_schedule
from tests.conftest import find_free_port
from tests.procs import ROOT, Daemon

COMMAND_S = 60.0  # hang detection only


def scheduler_cli(*words: str,
                  env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != SERVERS_ENV}
    environ.update(PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "scheduler", *words], capture_output=True,
                          text=True, cwd=ROOT, env=environ, timeout=COMMAND_S, check=False)


def nowhere() -> str:
    return f"127.0.0.1:{find_free_port()}"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("scheduler-cli")
    port, raft = find_free_port(), find_free_port()
    argv = ["scheduler", "serve", "--id", "1", "--listen", f"127.0.0.1:{port}",
            "--peer-listen", f"127.0.0.1:{raft}", "--data-dir", str(tmp / "node")]
    daemon = Daemon(argv, "127.0.0.1", port, tmp / "node.log").start()
    try:
        yield daemon
    finally:
        assert daemon.stop() == 0, daemon.log()


def test_without_server_the_commands_ask_make_runs_nodes() -> None:
    declared = [f"{p.host}:{p.port}" for c in local_clusters(Path("var"))
                for p in c.processes if p.name.startswith("scheduler-")]
    assert client_addresses() == declared
    servers = resolve_servers(None, SERVERS_ENV, client_addresses(), DEFAULT_PORT, {})
    assert servers.source == SOURCE_DEFAULT
    assert [f"{h}:{p}" for h, p in servers.nodes] == declared
    args = build_parser().parse_args(["job", "list"])
    assert args.server is None  # left to resolve_servers: the variable, then make run's


def test_no_node_answering_is_a_clear_error_within_the_deadline_given() -> None:
    down = nowhere()
    done = scheduler_cli("job", "list", "--server", down, "--deadline", "0.3")
    assert done.returncode == 1 and done.stdout == "", done
    [message] = done.stderr.splitlines()
    assert message.startswith(f"scheduler: no scheduler node answered within 0.3 s at {down} "
                              "(from --server)"), message
    assert "make run" in message and SERVERS_ENV in message, message


def test_the_environment_variable_names_the_nodes(node: Daemon) -> None:
    down = nowhere()
    done = scheduler_cli("cluster", "info", env={SERVERS_ENV: down})
    assert done.returncode == 1, done
    assert f"at {down} (from ${SERVERS_ENV})" in done.stderr, done.stderr
    # A node that does not answer ahead of one that does: the request goes to the live one.
    done = scheduler_cli("cluster", "info", env={SERVERS_ENV: f"{down},{node.address}"})
    assert done.returncode == 0, done.stderr
    info = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    assert info["id"] == "1" and info["leader"] == "1", info


def test_the_flag_wins_over_the_variable(node: Daemon) -> None:
    done = scheduler_cli("job", "list", "--server", node.address,
                         env={SERVERS_ENV: nowhere()})
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("schedule", ["@foo", "@foo bar"])
def test_an_unknown_macro_is_named_with_the_known_ones(node: Daemon, schedule: str) -> None:
    done = scheduler_cli("job", "add", "macro-job", schedule, "true", "--server", node.address)
    assert done.returncode == 1, done
    message = done.stderr.strip()
    assert message.startswith("scheduler: ERR invalid schedule: unknown macro '@foo'"), message
    for known in ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight",
                  "@hourly", "@every", "@at", "@in", "@after"):
        assert known in message, (known, message)


@pytest.mark.parametrize(("schedule", "error"), [
    ("@foo", "unknown macro '@foo' (known: @yearly, @annually, @monthly, @weekly, @daily, "
             "@midnight, @hourly, @every, @at, @in, @after)"),
    ("@foo bar", "unknown macro '@foo' (known: "),
    ("@after", "@after is the schedule of a job with the AFTER option, alone"),
    ("@after parent", "@after is the schedule of a job with the AFTER option, alone"),
    ("@daily 5", "macro @daily takes no fields"),
])
def test_the_parser_names_macros_the_same_way_with_fields_or_without(
    schedule: str, error: str
) -> None:
    with pytest.raises(ScheduleError) as raised:
        parse_schedule(schedule)
    assert str(raised.value).startswith(error), raised.value


@given(name=st.from_regex(r"@[A-Za-z]{1,12}", fullmatch=True),
       fields=st.lists(st.from_regex(r"[0-9A-Za-z*/,-]{1,6}", fullmatch=True), max_size=6))
def test_every_unknown_macro_is_named_with_or_without_fields(name: str,
                                                             fields: list[str]) -> None:
    if name.lower() in KNOWN_MACROS:
        return
    with pytest.raises(ScheduleError) as raised:
        parse_schedule(" ".join([name, *fields]))
    assert str(raised.value) == (f"unknown macro {name!r} (known: "
                                 f"{', '.join(KNOWN_MACROS)})")


def test_a_bad_count_or_deadline_is_a_usage_error() -> None:
    done = scheduler_cli("history", "some-job", "0", "--server", nowhere())
    assert done.returncode == 2 and "count must be a positive integer" in done.stderr, done
    done = scheduler_cli("job", "list", "--deadline", "0")
    assert done.returncode == 2 and "--deadline must be > 0" in done.stderr, done


def readme_option_rows() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    return {row.split("`")[1]: row for row in rows}


def test_the_readme_lists_every_job_add_option_with_its_limits() -> None:
    rows = readme_option_rows()
    assert set(jobs.OPTIONS) <= set(rows), sorted(set(jobs.OPTIONS) - set(rows))
    for option, numbers in {
        "DEADLINE": (1, jobs.MAX_DEADLINE_S, jobs.DEFAULT_DEADLINE_S),
        "TIMEOUT": (0, jobs.MAX_TIMEOUT_S),
        "RETRIES": (0, jobs.MAX_RETRIES),
        "BACKOFF": (0, jobs.MAX_BACKOFF_S, jobs.DEFAULT_BACKOFF_S),
        "HISTORY": (1, jobs.MAX_HISTORY, jobs.DEFAULT_HISTORY),
    }.items():
        for number in numbers:
            assert str(number) in rows[option], (option, number, rows[option])
    assert f"(`{jobs.DEFAULT_TZ}`)" in rows["TZ"] and f"(`{jobs.ALLOW}`)" in rows["CONCURRENCY"]
    assert f"(`{jobs.ONCE}`)" in rows["MISFIRE"]
    assert f"at most {jobs.MAX_CATCHUP_SLOTS}" in rows["MISFIRE"]


def test_the_readme_names_every_macro_and_its_six_field_example_parses() -> None:
    text = (ROOT / "README.md").read_text()
    for macro in KNOWN_MACROS:
        assert f"`{macro}" in text, macro
    assert "`*/10 * * * * *`" in text
    assert parse_schedule("*/10 * * * * *").seconds == (0, 10, 20, 30, 40, 50)
