"""The scheduler state's snapshot and restore: the whole replicated state as one blob.

`SnapshotSide` is a base class of `scheduler.state.SchedulerState`; its `snapshot` and
`restore` are the Raft driver's snapshot hooks, and `capture_snapshot` is the hook that
lets the driver encode off the event loop: it only copies the containers (on the loop; Job
and RunRecord are frozen, so the records themselves are shared) and returns the encoder,
which reads that view alone and may run in any thread while entries keep applying. The
encoder packs piece by piece (one small msgpack call per job or record list) so that the
loop gets the GIL back between pieces; the bytes equal one `msgpack.packb` of the map.

The workers' adverts (scheduler/routing.py) travel too; a snapshot written before them
restores with none (each worker's next claim brings its own); so do the `@in` jobs waiting
for the leader to stamp their anchor. Run histories travel as rows
in RUN_FIELDS order (a snapshot holds every job's history); a snapshot written before rows
(maps) still restores. Restore rebuilds the AFTER children and
the active/fired run indexes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import msgpack

from scheduler.fired_index import FiredIndex
from scheduler.jobs import Job
from scheduler.routing import Advert, handler_union
from scheduler.runs import ACTIVE, RUN_FIELDS, RunRecord


@dataclass(frozen=True, slots=True)
class _View:
    """The state's containers as of one applied index, copied; the values are immutable."""

    jobs: list[Job]
    handled: dict[str, int]
    missed: dict[str, int]
    runs: dict[str, list[RunRecord]]
    workers: dict[str, int]
    clients: dict[int, str]
    adverts: dict[str, Advert]
    unanchored: list[str]


class SnapshotSide:
    """Snapshot behaviour; the state it writes is initialised by SchedulerState.__init__."""

    jobs: dict[str, Job]
    handled: dict[str, int]
    runs: dict[str, dict[str, RunRecord]]
    missed: dict[str, int]
    workers: dict[str, int]
    clients: dict[int, str]
    adverts: dict[str, Advert]
    handler_names: frozenset[str]
    unanchored: set[str]
    jobs_changes: int
    _active: set[tuple[str, str]]
    _fired: FiredIndex
    _children: dict[str, list[str]]

    def snapshot(self) -> bytes:
        """The whole state as bytes (the driver's snapshot hook, encoding on the loop)."""
        return self.capture_snapshot()()

    def capture_snapshot(self) -> Callable[[], bytes]:
        """The driver's off-loop snapshot hook: a view of the state now, and its encoder
        (which returns what `snapshot()` would have returned now)."""
        view = _View(list(self.jobs.values()), dict(self.handled), dict(self.missed),
                     {name: list(runs.values()) for name, runs in self.runs.items()},
                     dict(self.workers), dict(self.clients), dict(self.adverts),
                     sorted(self.unanchored))
        return partial(_encode, view)

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
        self.adverts = {w: Advert.from_wire(raw) for w, raw in data.get("adverts", {}).items()}
        self.handler_names = handler_union(self.adverts.values())
        self.unanchored = set(data.get("unanchored", ()))
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
        self._fired = FiredIndex(self.runs[job][run_id] for job, run_id in self._active)


def _encode(view: _View) -> bytes:
    """msgpack of the snapshot map, built from pieces. Each piece's objects (a job's dict,
    its rows) die as soon as it is packed: had they piled up, the cyclic GC would scan them,
    holding the GIL for tens of milliseconds."""
    packer = msgpack.Packer()
    pack = packer.pack
    parts = [packer.pack_map_header(9), pack("jobs"), packer.pack_array_header(len(view.jobs))]
    parts += [pack(job.to_dict()) for job in view.jobs]
    parts += [pack("handled"), pack(view.handled), pack("missed"), pack(view.missed)]
    # rows, not maps: a snapshot holds every job's history
    parts += [pack("run_fields"), pack(RUN_FIELDS)]
    parts += [pack("run_rows"), packer.pack_map_header(len(view.runs))]
    for name, runs in view.runs.items():
        parts += [pack(name), pack([r.to_row() for r in runs])]
    parts += [pack("workers"), pack(view.workers)]
    clients = {str(k): v for k, v in view.clients.items()}  # msgpack: str keys
    parts += [pack("clients"), pack(clients)]
    parts += [pack("adverts"), pack({w: a.to_wire() for w, a in view.adverts.items()})]
    parts += [pack("unanchored"), pack(view.unanchored)]
    return b"".join(parts)
