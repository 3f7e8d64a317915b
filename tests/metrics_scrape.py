"""Helpers of the metrics tests: scrape a daemon's endpoint, lint it with promtool, read
one sample, and poll until a figure settles (tests/test_metrics*.py)."""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
HANG_S = 60.0
SCRAPE_TIMEOUT_S = 10.0


def scrape(port: int, password: str | None = None, host: str = "127.0.0.1",
           path: str = "/metrics") -> str:
    """The text of one scrape; urllib.error.HTTPError for a status other than 200."""
    request = urllib.request.Request(f"http://{host}:{port}{path}")
    if password is not None:
        token = base64.b64encode(f"prometheus:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=SCRAPE_TIMEOUT_S) as reply:
        return reply.read().decode()


def status_of(port: int, password: str | None = None, path: str = "/metrics") -> int:
    """The HTTP status of one request."""
    try:
        scrape(port, password, path=path)
    except urllib.error.HTTPError as exc:
        return exc.code
    return 200


def promtool_problems(text: str) -> str:
    """What `promtool check metrics` says about `text` (empty: no error, no lint warning)."""
    done = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(),
                          capture_output=True, timeout=60, check=False)
    said = (done.stdout + done.stderr).decode().strip()
    return said or ("" if done.returncode == 0 else f"exit {done.returncode}")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, parsed by prometheus_client: (name, sorted labels) ->
    value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    """One sample's value; KeyError naming it when the scrape lacks it."""
    key = (name, tuple(sorted(labels.items())))
    found = samples(text)
    if key not in found:
        raise KeyError(f"{name}{labels} not in the scrape")
    return found[key]


def names(text: str) -> set[str]:
    """The sample names of a scrape."""
    return {name for name, _ in samples(text)}


def unprefixed(text: str, prefix: str) -> set[str]:
    """The sample names of a scrape that start neither with `prefix_` nor with `process_`
    (the README promises none)."""
    return {n for n in names(text) if not n.startswith((f"{prefix}_", "process_"))}


def eventually(probe: Callable[[], Any], what: str, hang_s: float = HANG_S) -> Any:
    """Poll `probe` until it returns something true; AssertionError after `hang_s`."""
    deadline = time.monotonic() + hang_s
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"hang: still waiting for {what}")
        time.sleep(0.1)


def cmdstat_calls(info: dict[str, Any], command: str) -> int:
    """`calls` of INFO commandstats' line for `command` (0 when absent), from INFO as
    redis-py's `info()` parses it (the line a dict) or as raw text fields (a str)."""
    line = info.get(f"cmdstat_{command.lower()}", "")
    if isinstance(line, dict):
        return int(line.get("calls", 0))
    for part in str(line).split(","):
        key, _, number = part.partition("=")
        if key == "calls":
            return int(number)
    return 0
