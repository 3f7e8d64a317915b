"""The FIRED runs in the order claims hand them out, sans I/O: `FiredIndex`.

A claim takes the oldest FIRED runs first, in an order every replica agrees on (fired time,
then run id). Sorting every FIRED run on each claim cost the leader a share of its CPU that
grew with the backlog, just when it could least afford it; here the keys are kept sorted as
runs fire (a sorted list: O(log n) an insert), and a claim reads them from the front until
it has what it asked for.

The index is a superset: a key stays after its run is claimed, finished or fired again (a
retry: a new key), and is dropped when a walk finds it stale. It is rebuilt from the run
records when a snapshot is restored, in the same order, so replicas agree whatever their
history.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from sortedcontainers import SortedList

from scheduler.runs import FIRED, RunRecord

__all__ = ["FiredIndex"]

Key = tuple[int, str, str]  # fired_ms, run id, job


def _key(record: RunRecord) -> Key:
    return record.fired_ms, record.run_id, record.job


class FiredIndex:
    """Keys of the runs that may be FIRED, sorted by (fired_ms, run id)."""

    def __init__(self, records: Iterable[RunRecord] = ()) -> None:
        self._keys = SortedList(_key(r) for r in records if r.state == FIRED)

    def add(self, record: RunRecord) -> None:
        """`record` is FIRED now (a new run, or the next attempt of a retried one)."""
        key = _key(record)
        if key not in self._keys:
            self._keys.add(key)

    def records(self, runs: Mapping[str, Mapping[str, RunRecord]]) -> Iterator[RunRecord]:
        """The FIRED runs in claim order, looked up in `runs` (job -> run id -> record) as
        the walk reaches them; stale keys met on the way are dropped when it ends (also when
        the caller stops early). The caller may change records, not the index, meanwhile."""
        stale: list[Key] = []
        try:
            for key in self._keys:
                record = runs.get(key[2], {}).get(key[1])
                if record is None or record.state != FIRED or record.fired_ms != key[0]:
                    stale.append(key)
                else:
                    yield record
        finally:
            for key in stale:
                self._keys.discard(key)

    def __len__(self) -> int:
        return len(self._keys)
