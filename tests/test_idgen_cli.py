"""`idgen next`, the client command line, run as a user runs it: which servers it asks
(`--server`, else `$IDGEN_SERVERS`, else make run's), a clear error at once when none
answers, and a count below 1 sent as it is, so the server's own error is printed and the
command fails. One real idgen daemon serves; nothing here measures time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.client_cli import resolve_servers
from core.launcher import local_clusters
from idgen.__main__ import DEFAULT_PORT, SERVERS_ENV, build_parser
from idgen.launch import client_addresses
from idgen.layout import parse
from idgen.server import ERR_BATCH
from tests.conftest import find_free_port
from tests.procs import ROOT, Daemon, idgen_daemon

COMMAND_S = 60.0  # hang detection only
WORKER = 11


def idgen_cli(*words: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != SERVERS_ENV}
    environ.update(PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "idgen", *words], capture_output=True,
                          text=True, cwd=ROOT, env=environ, timeout=COMMAND_S, check=False)


def nowhere() -> str:
    return f"127.0.0.1:{find_free_port()}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = idgen_daemon(tmp_path_factory.mktemp("idgen-cli"), WORKER).start()
    try:
        yield daemon
    finally:
        assert daemon.stop() == 0, daemon.log()


@pytest.mark.parametrize("count", ["0", "-3"])
def test_a_count_below_one_fails_with_the_servers_error(server: Daemon, count: str) -> None:
    done = idgen_cli("next", "-n", count, "--server", server.address)
    assert done.returncode == 1 and done.stdout == "", done
    assert done.stderr.strip() == f"idgen: {ERR_BATCH}", done.stderr


def test_the_environment_variable_names_the_servers(server: Daemon) -> None:
    done = idgen_cli("next", "-n", "3", env={SERVERS_ENV: f"{nowhere()},{server.address}"})
    assert done.returncode == 0, done.stderr
    ids = [int(line) for line in done.stdout.split()]
    assert len(ids) == 3 and ids == sorted(set(ids))
    assert {parse(i).worker for i in ids} == {WORKER}


def test_no_server_answering_is_a_clear_error() -> None:
    down = nowhere()
    done = idgen_cli("next", env={SERVERS_ENV: down})
    assert done.returncode == 1 and done.stdout == "", done
    [message] = done.stderr.splitlines()
    assert message.startswith(f"idgen: no idgen server answered within 1 s at {down} "
                              f"(from ${SERVERS_ENV})"), message
    assert "make run" in message and "--server" in message, message


def test_without_server_next_asks_make_runs_servers() -> None:
    declared = [f"{p.host}:{p.port}" for c in local_clusters(Path("var"))
                for p in c.processes if p.name.startswith("idgen-")]
    assert client_addresses() == declared
    servers = resolve_servers(None, SERVERS_ENV, client_addresses(), DEFAULT_PORT, {})
    assert [f"{h}:{p}" for h, p in servers.nodes] == declared
    assert build_parser().parse_args(["next"]).server is None
