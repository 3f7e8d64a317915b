"""Every fault drill by name: `make drills` (tests/faults/run_drills.py) runs rounds of each.

A drill is `drill(seed, duration_s, workdir) -> DrillReport` (tests/faults/drill.py). Add
one with a one-line entry: `"name": lazy("tests.faults.<module>")` (the module's function
`drill`, imported on first call, so listing the drills imports no daemon and one broken
drill module does not stop the others), or any callable of the same signature.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from tests.faults.drill import DrillReport

Drill = Callable[[int, float, Path], DrillReport]


def lazy(module: str, function: str = "drill") -> Drill:
    """A drill that imports `module` when first run and calls its `function`."""

    def run(seed: int, duration_s: float, workdir: Path) -> DrillReport:
        drill: Drill = getattr(importlib.import_module(module), function)
        return drill(seed, duration_s, workdir)

    run.__qualname__ = run.__name__ = f"{module}.{function}"
    return run


DRILLS: dict[str, Drill] = {
    "raft": lazy("tests.faults.raft_register"),
    "idgen": lazy("tests.faults.idgen_drill"),
    "kvcache": lazy("tests.faults.kvcache_drill"),
    "scheduler": lazy("tests.faults.scheduler_drill"),
    "shardstore": lazy("tests.faults.shardstore_drill"),
    "shardstore-nemesis": lazy("tests.faults.shardstore_nemesis"),
    "dfs": lazy("tests.faults.dfs_drill"),
}
