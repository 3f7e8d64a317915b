"""shardstore's client command line keeps the rule of every client command line
(core/client_cli.py): `shardstore admin` asks the nodes of `--node`, else
`$SHARDSTORE_SERVERS`, else make run's, and when none answers it fails at once with a
message naming them and where they came from (not after redis-py's connection retries).

Processes for the command line as a user runs it; a small PING answerer in a thread for
the node it picks. Nothing asserts how long anything took.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.client_cli import NoNodeAnswers
from core.daemon import ConfigError
from shardstore.admin import MAKE_RUN_NODES, SERVERS_ENV, admin_servers, answering_node
from tests.conftest import find_free_port
from tests.procs import ROOT

WAIT_S = 60.0  # a hang, not slowness


def admin(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != SERVERS_ENV}
    return subprocess.run([sys.executable, "-m", "shardstore", "admin", *argv],
                          cwd=ROOT, env={**environ, **(env or {})}, capture_output=True,
                          text=True, timeout=WAIT_S, check=False)


def test_admin_names_the_node_it_asked_when_none_answers() -> None:
    down = f"127.0.0.1:{find_free_port()}"
    done = admin("--node", down, "check")
    assert done.returncode == 1, done
    assert done.stderr.startswith(
        f"shardstore admin: no shardstore node answered within 1 s at {down} (from --node); "
        "start them (make run starts a local cluster) or name running ones with --node or "
        f"{SERVERS_ENV}"), done.stderr


def test_admin_takes_its_nodes_from_the_environment_without_node() -> None:
    down = f"127.0.0.1:{find_free_port()},127.0.0.1:{find_free_port()}"
    done = admin("check", env={SERVERS_ENV: down})
    assert done.returncode == 1, done
    assert f"at {down} (from ${SERVERS_ENV})" in done.stderr, done.stderr


@pytest.fixture
def answerer() -> Iterator[str]:
    """A listener that answers each connection's first bytes with +PONG."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                if conn.recv(64):
                    conn.sendall(b"+PONG\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        listener.close()
        thread.join(5)


def test_the_first_node_that_answers_is_the_one_used(answerer: str) -> None:
    down = f"127.0.0.1:{find_free_port()}"
    assert answering_node(f"{down},{answerer}", {}) == answerer
    assert answering_node(None, {SERVERS_ENV: f"{answerer},{down}"}) == answerer


def test_without_node_or_environment_it_asks_make_runs_nodes() -> None:
    assert MAKE_RUN_NODES == ("127.0.0.1:7601", "127.0.0.1:7602", "127.0.0.1:7603")
    try:
        picked = answering_node(None, {})
    except NoNodeAnswers as exc:  # make run's cluster is not up
        assert "(from make run's nodes)" in str(exc)
    else:  # it is (someone runs make run): one of its nodes answered
        assert picked in MAKE_RUN_NODES


def test_a_node_list_naming_nothing_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="--node names no node"):
        answering_node(" , ", {})


@given(st.text(max_size=60))
def test_any_node_list_parses_to_nodes_or_is_refused_clearly(text: str) -> None:
    try:
        servers = admin_servers(text, {})
    except (ValueError, ConfigError) as exc:
        assert str(exc)  # names what is wrong
        return
    assert servers.source == "--node" and servers.nodes
    assert all(0 <= port <= 65535 for _, port in servers.nodes)


def test_a_node_without_a_port_is_refused() -> None:
    with pytest.raises(ConfigError, match="expected HOST:PORT"):
        admin_servers("127.0.0.1", {})
