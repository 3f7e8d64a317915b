"""The benchmarks' record of a run, and idgen's load children.

`Recorder` collects figures, figures not measured, raw runs and the command behind each:
a run that fails is kept as a failure and the benchmark goes on. `run_load` runs one
bench.idgen_loads load in a fresh process and meters CPU between its BEGIN and END marks.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from bench.common import ROOT, CpuMeter, Figure, ServerProcess, Skipped, progress
from bench.idgen_loads import MARK_BEGIN, MARK_END


class Recorder:
    """Collects figures, skipped sections, raw runs and the commands that produced them."""

    def __init__(self) -> None:
        self.figures: list[Figure] = []
        self.skipped: list[Skipped] = []
        self.sections: dict[str, dict[str, Any]] = {}
        self.profiles: dict[str, Any] = {}

    def section(self, name: str) -> dict[str, Any]:
        return self.sections.setdefault(name, {"runs": [], "commands": [], "failures": []})

    def attempt(self, section: str, label: str, run: Callable[[], dict[str, Any]]
                ) -> dict[str, Any] | None:
        """One measured run: its result (kept with its command), or None if it failed (the
        failure is kept and reported; the benchmark goes on)."""
        sec = self.section(section)
        try:
            result = run()
        except (RuntimeError, ValueError, OSError) as exc:
            sec["failures"].append({"label": label, "error": str(exc)[-4000:]})
            progress(f"{label}: FAILED: {str(exc).strip().splitlines()[-1][:300]}")
            return None
        sec["runs"].append(result)
        sec["commands"].append(result["command"])
        return result

    def add(self, figure: Figure | None, section: str, label: str) -> None:
        """A figure, or a skipped row when every run behind it failed."""
        if figure is None:
            failures = self.section(section)["failures"]
            reason = failures[-1]["error"].strip().splitlines()[-1][:80] if failures else "?"
            self.skipped.append(Skipped(section, label, f"all runs failed: {reason}"))
        else:
            self.figures.append(figure)


def _child_env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)}


def load_command(kind: str, **kwargs: Any) -> list[str]:
    return [sys.executable, "-m", "bench.idgen_loads", kind, json.dumps(kwargs)]


def run_load(kind: str, metered: list[ServerProcess], **kwargs: Any) -> dict[str, Any]:
    """Run one load in a fresh process; its JSON result, the command, and the CPU used by
    the load, the `metered` servers and the rest of the machine between the load's BEGIN
    and END marks (its timed window, without interpreter start-up or checks after it)."""
    argv = load_command(kind, **kwargs)
    meter = CpuMeter([s.pid for s in metered])
    lines = []
    # stderr to a file, not a pipe: a chatty child must not block while we read stdout.
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, text=True,
                                cwd=ROOT, env=_child_env())
        assert proc.stdout is not None
        for line in proc.stdout:
            tag = line.strip()
            if tag == MARK_BEGIN:
                meter.begin()
            elif tag == MARK_END:
                meter.end()
            else:
                lines.append(tag)
        code = proc.wait()
        errors.seek(0)
        err = errors.read()
    if code != 0 or not lines or not hasattr(meter, "result"):
        raise RuntimeError(f"{shlex.join(argv)} failed:\n{err[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    meter.add_client(result["cpu_seconds"])  # the load's own CPU over its window
    result["cpu"] = meter.result
    result["command"] = shlex.join(argv)
    return result


def _cpu_note(cpu: dict[str, Any]) -> str:
    servers = "+".join(f"{c:.2f}" for c in cpu["server_cores"])
    note = f"client {cpu['client_cores']:.2f} cores"
    if servers:
        note = f"server {servers} cores, " + note
    return note + f", others {cpu['others_cores']:.2f} cores"


