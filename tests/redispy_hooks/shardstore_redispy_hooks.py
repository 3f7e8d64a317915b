"""A pytest plugin loaded into redis-py's own test suite when it runs against shardstore.

tests/redispy_suite.py starts redis-py's suite (unpacked from its sdist, never copied into
our tree) in a child process with this directory on PYTHONPATH and `-p
shardstore_redispy_hooks`. The plugin changes nothing in the suite's tests; it adapts its
set-up to the server under test and records every test's outcome:

- redis-py's conftest reads `redis_version` and `arch_bits` from INFO at session start (and
  stops with a KeyError when they are missing); shardstore's INFO says `server_name` and
  `server_version` instead, so the plugin supplies the Redis version whose commands the
  issue's list follows (ENV_VERSION) and 64 bits where INFO has none. The version decides
  only which of the suite's version-gated tests are skipped.
- In standalone mode (ENV_MODE = "standalone") the conftest is told the server is not a
  cluster, so its fixtures talk to the node through `redis.Redis` as to a plain Redis; in
  cluster mode INFO's `cluster_enabled:1` is left to pick `RedisCluster`, as it does for a
  real cluster.
- The fixtures empty the server after every test with FLUSHDB; shardstore has FLUSHALL
  (and only database 0, where the two are the same), so FLUSHDB is sent as FLUSHALL.
- The suite's session fixture starts tracemalloc, which serves only redis-py's own leak
  hunting and makes every allocation slower; it is left off.
- Each test's outcome (passed, failed, skipped, error) and a one-line reason go as JSON
  to the file named by ENV_OUT when the session ends.
"""

from __future__ import annotations

import json
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ENV_OUT = "SHARDSTORE_REDISPY_OUT"
ENV_MODE = "SHARDSTORE_REDISPY_MODE"
ENV_VERSION = "SHARDSTORE_REDISPY_VERSION"
MODE_STANDALONE = "standalone"
DEFAULT_VERSION = "7.2.0"
ARCH_BITS = 64
REASON_CHARS = 300  # a recorded reason is cut to this many characters

_outcomes: dict[str, dict[str, str]] = {}


def _adapted_info(original: Callable[[str], dict[str, Any]]) -> Callable[[str], dict[str, Any]]:
    def info(url: str) -> dict[str, Any]:
        fields = original(url)
        fields.setdefault("redis_version", os.environ.get(ENV_VERSION, DEFAULT_VERSION))
        fields.setdefault("arch_bits", ARCH_BITS)
        if os.environ.get(ENV_MODE) == MODE_STANDALONE:
            fields["cluster_enabled"] = False
        return fields

    return info


def _flushdb_as_flushall(self: Any, asynchronous: bool = False, **kwargs: Any) -> Any:
    return self.execute_command("FLUSHALL", **kwargs)


def pytest_configure(config: pytest.Config) -> None:
    """Leave tracemalloc off for the whole session (see the module header)."""
    tracemalloc.start = lambda *args, **kwargs: None  # type: ignore[assignment]


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Before redis-py's conftest reads INFO: adapt what it reads and how it flushes."""
    from redis.commands.core import ManagementCommands

    import tests.conftest as suite_conftest  # redis-py's conftest, loaded by now

    suite_conftest._get_info = _adapted_info(suite_conftest._get_info)
    ManagementCommands.flushdb = _flushdb_as_flushall  # type: ignore[method-assign]


def _reason(report: pytest.TestReport) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])[:REASON_CHARS]
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr or "")
    return text.splitlines()[0][:REASON_CHARS] if text else ""


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Keep the worst outcome of a test's set-up, call and teardown."""
    name = report.nodeid.rsplit("::", 1)[-1]
    seen = _outcomes.get(name)
    if report.failed:
        outcome = "failed" if report.when == "call" else "error"
        if seen is None or seen["outcome"] not in ("failed", "error"):
            _outcomes[name] = {"outcome": outcome, "reason": _reason(report)}
    elif report.skipped and seen is None:
        _outcomes[name] = {"outcome": "skipped", "reason": _reason(report)}
    elif report.when == "call" and report.passed and seen is None:
        _outcomes[name] = {"outcome": "passed", "reason": ""}


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Write every outcome to the file the runner named."""
    out = os.environ.get(ENV_OUT)
    if out:
        Path(out).write_text(json.dumps(_outcomes, indent=1, sort_keys=True))
