"""The daemons' command lines: core/client_cli.py, the rule every client command keeps
(which nodes, failing fast); the help text of every option of every command line; and
kvcache's compatibility log, which names only the flags that were given.

The probe is driven by a fake clock and a fake question, so the tests count its attempts
and the time it was given instead of measuring it. The help check walks every argparse
parser (subcommands included) of every top-level package's `__main__.build_parser`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import socket
import threading
from pathlib import Path

import pytest

from core import client_cli, daemon
from core.client_cli import NoNodeAnswers, Servers, first_answering, resolve_servers
from tests.conftest import find_free_port

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = ["127.0.0.1:7401", "127.0.0.1:7402"]
ENV = "SOME_SERVERS"


class FakeTime:
    """A clock that moves only when a probe attempt or a pause spends time."""

    def __init__(self) -> None:
        self.now = 100.0
        self.asked: list[tuple[tuple[str, int], float]] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def never_answers(self, node: tuple[str, int], timeout_s: float) -> bool:
        self.asked.append((node, timeout_s))
        self.now += timeout_s  # a hung node: the attempt spends its whole timeout
        return False


NODES = Servers([("127.0.0.1", 1), ("127.0.0.1", 2), ("127.0.0.1", 3)], "--server")


def test_no_attempt_starts_after_the_window_and_none_outlasts_it() -> None:
    fake = FakeTime()
    with pytest.raises(NoNodeAnswers) as raised:
        first_answering(NODES, "thing", ENV, 1.0, ask=fake.never_answers, clock=fake.clock,
                        sleep=fake.sleep)
    # Each hung node gets its share of the window (1/3 s), so all three are asked once,
    # and the window is spent: no fourth attempt.
    assert [node for node, _ in fake.asked] == NODES.nodes
    assert all(timeout == pytest.approx(1 / 3) for _, timeout in fake.asked)
    assert fake.now == pytest.approx(101.0)
    message = str(raised.value)
    assert "no thing answered within 1 s at 127.0.0.1:1,127.0.0.1:2,127.0.0.1:3" in message
    assert "(from --server)" in message and ENV in message


def test_nodes_that_refuse_at_once_are_asked_again_in_rounds_until_the_window_ends() -> None:
    fake = FakeTime()
    asked: list[tuple[str, int]] = []

    def refuses(node: tuple[str, int], timeout_s: float) -> bool:
        asked.append(node)
        return False  # connection refused: no time spent

    with pytest.raises(NoNodeAnswers):
        first_answering(NODES, "thing", ENV, 0.5, ask=refuses, clock=fake.clock,
                        sleep=fake.sleep)
    rounds = 0.5 / client_cli.PROBE_PAUSE_S
    assert len(asked) == pytest.approx(3 * rounds, abs=3)
    assert asked[:6] == NODES.nodes * 2


def test_the_first_node_that_answers_is_returned_in_order() -> None:
    fake = FakeTime()
    asked: list[tuple[str, int]] = []

    def second_answers(node: tuple[str, int], timeout_s: float) -> bool:
        asked.append(node)
        return node == NODES.nodes[1]

    node = first_answering(NODES, "thing", ENV, ask=second_answers, clock=fake.clock,
                           sleep=fake.sleep)
    assert node == NODES.nodes[1] and asked == NODES.nodes[:2]


def test_the_nodes_come_from_the_flag_then_the_environment_then_make_run() -> None:
    env = {ENV: "127.0.0.9:9,127.0.0.10"}
    flag = resolve_servers("127.0.0.8:8", ENV, DEFAULTS, 7000, env)
    assert flag == Servers([("127.0.0.8", 8)], "--server")
    from_env = resolve_servers(None, ENV, DEFAULTS, 7000, env)
    assert from_env == Servers([("127.0.0.9", 9), ("127.0.0.10", 7000)], f"${ENV}")
    default = resolve_servers(None, ENV, DEFAULTS, 7000, {ENV: "  "})
    assert default == Servers([("127.0.0.1", 7401), ("127.0.0.1", 7402)], "make run's nodes")
    with pytest.raises(daemon.ConfigError, match="--server names no node"):
        resolve_servers(" , ", ENV, DEFAULTS, 7000, env)


def test_ping_counts_any_reply_and_nothing_else() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer() -> None:
        conn, _ = listener.accept()
        with conn:
            assert conn.recv(6) == b"PING\r\n"
            conn.sendall(b"-NOAUTH Authentication required.\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        assert client_cli.ping(("127.0.0.1", port), 5.0)
    finally:
        thread.join(5)
        listener.close()
    assert not client_cli.ping(("127.0.0.1", find_free_port()), 5.0)


# -- help texts ----------------------------------------------------------------------------


def command_lines() -> list[str]:
    """Every top-level package whose `__main__` builds an argparse parser."""
    return sorted(p.parent.name for p in ROOT.glob("*/__main__.py")
                  if (p.parent / "__init__.py").exists()
                  and "def build_parser" in p.read_text())


def options_without_help(parser: argparse.ArgumentParser, path: str) -> list[str]:
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                missing += options_without_help(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction) and not action.help:
            missing.append(f"{path}: {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_every_daemon_has_a_command_line() -> None:
    assert {"idgen", "kvcache", "scheduler"} <= set(command_lines())


@pytest.mark.parametrize("package", command_lines())
def test_every_option_of_every_command_line_has_help(package: str) -> None:
    parser = importlib.import_module(f"{package}.__main__").build_parser()
    assert options_without_help(parser, package) == []


# -- kvcache's log of the flags it takes for compatibility only ------------------------------


def accepted_log(argv: list[str], caplog: pytest.LogCaptureFixture) -> list[str]:
    from kvcache.__main__ import _log_accepted, build_parser, settings_from_args

    args = build_parser().parse_args(["serve", *argv])
    settings, hosts = settings_from_args(args)
    with caplog.at_level(logging.INFO, logger="kvcache"):
        _log_accepted(args, settings, hosts)
    return [record.getMessage() for record in caplog.records]


def test_kvcache_logs_t_only_when_it_was_given(caplog: pytest.LogCaptureFixture) -> None:
    assert not [m for m in accepted_log(["-p", "11211"], caplog) if m.startswith("-t")]
    caplog.clear()
    assert "-t 8: one event loop serves every client" in accepted_log(["-t", "8"], caplog)
