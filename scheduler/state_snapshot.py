"""The scheduler state's snapshot and restore: the whole replicated state as one blob.

`SnapshotSide` is a base class of `scheduler.state.SchedulerState`; its `snapshot` and
`restore` are the Raft driver's snapshot hooks. Run histories travel as rows in RUN_FIELDS
order (a snapshot holds every job's history); a snapshot written before rows (maps) still
restores. Restore rebuilds the AFTER children and the active/fired run indexes.
"""

from __future__ import annotations

import msgpack

from scheduler.jobs import Job
from scheduler.runs import ACTIVE, FIRED, RUN_FIELDS, RunRecord


class SnapshotSide:
    """Snapshot behaviour; the state it writes is initialised by SchedulerState.__init__."""

    jobs: dict[str, Job]
    handled: dict[str, int]
    runs: dict[str, dict[str, RunRecord]]
    missed: dict[str, int]
    workers: dict[str, int]
    clients: dict[int, str]
    jobs_changes: int
    _active: set[tuple[str, str]]
    _fired: set[tuple[str, str]]
    _children: dict[str, list[str]]

    def snapshot(self) -> bytes:
        """The whole state as bytes (the driver's snapshot hook)."""
        return msgpack.packb({
            "jobs": [job.to_dict() for job in self.jobs.values()],
            "handled": self.handled,
            "missed": self.missed,
            # rows, not maps: a snapshot holds every job's history (the driver waits on it)
            "run_fields": RUN_FIELDS,
            "run_rows": {n: [r.to_row() for r in runs.values()] for n, runs in self.runs.items()},
            "workers": self.workers,
            "clients": {str(k): v for k, v in self.clients.items()},  # msgpack: str keys
        })

    def restore(self, blob: bytes) -> None:
        """Replace the state with a `snapshot()` blob."""
        data = msgpack.unpackb(blob)
        self.jobs = {}
        self._children = {}
        self.jobs_changes += 1
        for raw in data["jobs"]:
            job = Job.from_dict(raw)
            self.jobs[job.name] = job
            if job.after:
                self._children.setdefault(job.after, []).append(job.name)
        self.handled = dict(data["handled"])
        self.missed = dict(data["missed"])
        self.workers = dict(data.get("workers", {}))
        self.clients = {int(k): v for k, v in data.get("clients", {}).items()}
        self.runs = {}
        if "run_rows" in data:
            names = data["run_fields"]
            records = {n: [dict(zip(names, row, strict=True)) for row in rows]
                       for n, rows in data["run_rows"].items()}
        else:  # a snapshot written before rows
            records = data["runs"]
        for name, raws in records.items():
            runs = (RunRecord.from_dict(raw) for raw in raws)
            self.runs[name] = {r.run_id: r for r in runs}
        self._active = {(r.job, r.run_id) for runs in self.runs.values()
                        for r in runs.values() if r.state in ACTIVE}
        self._fired = {key for key in self._active if self.runs[key[0]][key[1]].state == FIRED}
