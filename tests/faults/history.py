"""Client histories for fault drills: a recorder of invocations and completions, and its file.

Strategy, after Jepsen's histories: every client operation is logged twice, once when it is
invoked (with its argument) and once when it completes, as exactly one of
- ``ok``: it took effect, with its result (a read's value, an id, a new counter value);
- ``fail``: it definitely did not take effect (a reply the protocol guarantees is a no-op);
- ``info``: the outcome is unknown (timeout, connection lost): it may have taken effect at
  any time after its invocation, or never.
Times come from one injected monotonic clock (``time.monotonic_ns`` by default) read under
the recorder's lock, so event order and time order agree. One process (client id) has at
most one operation open at a time; after an ``info`` the process may invoke again (the
unknown operation stays open-ended for the checkers, exactly as Knossos treats it).

The recorder is thread-safe and never awaits, so asyncio tasks and threads may share one.
A history round-trips through a JSON-lines file, one event per line; JSON has no tuples, so
lists read back as tuples (values stay hashable, and a value written and read back compares
equal to the same value recorded in memory the same way).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INVOKE = "invoke"
OK = "ok"
FAIL = "fail"
INFO = "info"
COMPLETIONS = (OK, FAIL, INFO)
EVENT_TYPES = (INVOKE, *COMPLETIONS)

ERR_OPEN_OP = "process {process!r} already has an open operation (event {index})"
ERR_NOT_OPEN = "event {index} is not an open invocation"
ERR_BAD_TYPE = "unknown event type {type!r}"
ERR_UNMATCHED = "completion at event {index} matches no open invocation of {process!r}"

Clock = Callable[[], int]


@dataclass(frozen=True, slots=True)
class Event:
    """One line of a history: an invocation (value = argument) or a completion (value = result).

    `index` is the position in the history; `time` is the injected clock's reading in
    nanoseconds; `error` explains a fail or info completion.
    """

    index: int
    type: str
    process: Any
    f: str
    key: Any
    value: Any
    time: int
    error: str | None = None

    def to_json(self) -> str:
        """This event as one JSON object (no newline)."""
        row = {
            "index": self.index,
            "type": self.type,
            "process": self.process,
            "f": self.f,
            "key": self.key,
            "value": self.value,
            "time": self.time,
        }
        if self.error is not None:
            row["error"] = self.error
        return json.dumps(row, separators=(",", ":"), default=_json_default)

    @staticmethod
    def from_json(line: str) -> Event:
        """Parse one line written by `to_json`; lists come back as tuples."""
        row = json.loads(line)
        if row["type"] not in EVENT_TYPES:
            raise ValueError(ERR_BAD_TYPE.format(type=row["type"]))
        return Event(
            index=row["index"],
            type=row["type"],
            process=_tuples(row["process"]),
            f=row["f"],
            key=_tuples(row["key"]),
            value=_tuples(row["value"]),
            time=row["time"],
            error=row.get("error"),
        )


@dataclass(frozen=True, slots=True)
class Operation:
    """An invocation paired with its completion: what the checkers work on.

    `id` is the index of the invoke event. `status` is ok, fail or info; `complete_time` is
    None when the history ended with the operation still open (then status is info). For
    an info operation the checkers ignore `complete_time`: it may take effect at any time
    after `invoke_time`.
    """

    id: int
    process: Any
    f: str
    key: Any
    value: Any
    result: Any
    status: str
    invoke_time: int
    complete_time: int | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the operation completed ok."""
        return self.status == OK

    @property
    def known_end(self) -> int | None:
        """The completion time when the outcome is known (ok or fail), else None."""
        return None if self.status == INFO else self.complete_time


class History:
    """An immutable sequence of events, with its operations paired up."""

    def __init__(self, events: Iterable[Event]) -> None:
        self.events: tuple[Event, ...] = tuple(events)

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def operations(self) -> list[Operation]:
        """Every invocation with its completion, in invocation order.

        An invocation still open at the end of the history becomes an info operation with
        no completion time. Raises ValueError on a completion that matches nothing open.
        """
        open_ops: dict[Any, Event] = {}
        done: dict[int, Operation] = {}
        for event in self.events:
            key = _hashable(event.process)
            if event.type == INVOKE:
                if key in open_ops:
                    raise ValueError(ERR_OPEN_OP.format(process=event.process, index=event.index))
                open_ops[key] = event
                continue
            start = open_ops.pop(key, None)
            if start is None:
                raise ValueError(ERR_UNMATCHED.format(index=event.index, process=event.process))
            done[start.index] = _pair(start, event)
        for start in open_ops.values():
            done[start.index] = _pair(start, None)
        return [done[index] for index in sorted(done)]

    def write_jsonl(self, path: str | Path) -> None:
        """Write one JSON object per event, one per line."""
        with open(path, "w", encoding="utf-8") as out:
            for event in self.events:
                out.write(event.to_json() + "\n")

    @staticmethod
    def read_jsonl(path: str | Path) -> History:
        """Read a file written by `write_jsonl` (blank lines are skipped)."""
        with open(path, encoding="utf-8") as src:
            return History(Event.from_json(line) for line in src if line.strip())

    @staticmethod
    def from_operations(ops: Iterable[Operation]) -> History:
        """Rebuild the events of whole operations (handy for hand-written test histories).

        Invocations and completions are merged by time; at one instant, completions of
        operations that took time come first, then invocations in the given order (an
        instant operation's completion right after its invocation). An info operation
        without a completion time stays open.
        """
        rows: list[tuple[int, int, int, int, Operation, str]] = []
        for order, op in enumerate(ops):
            rows.append((op.invoke_time, 1, order, 0, op, INVOKE))
            if op.complete_time is not None:
                instant = op.complete_time == op.invoke_time
                rank, seq = (1, order) if instant else (0, 0)
                rows.append((op.complete_time, rank, seq, 1, op, op.status))
        rows.sort(key=lambda row: row[:4])
        events = []
        for index, (at, _, _, _, op, kind) in enumerate(rows):
            value = op.value if kind == INVOKE else op.result
            error = None if kind in (INVOKE, OK) else op.error
            events.append(Event(index, kind, op.process, op.f, op.key, value, at, error))
        return History(events)


class Invocation:
    """The handle of an open operation: complete it exactly once with ok, fail or info."""

    def __init__(self, recorder: Recorder, event: Event) -> None:
        self._recorder = recorder
        self.event = event
        self.completion: Event | None = None

    def ok(self, result: Any = None) -> None:
        """The operation took effect and returned `result`."""
        self._recorder.complete(self, OK, result)

    def fail(self, error: str | None = None) -> None:
        """The operation definitely did not take effect."""
        self._recorder.complete(self, FAIL, None, error)

    def info(self, error: str | None = None) -> None:
        """The outcome is unknown (timeout, lost connection)."""
        self._recorder.complete(self, INFO, None, error)


class Recorder:
    """Thread-safe history recorder; `clock` returns monotonic nanoseconds."""

    def __init__(self, clock: Clock = time.monotonic_ns) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._events: list[Event] = []
        self._open: dict[Any, Invocation] = {}

    def invoke(self, process: Any, f: str, key: Any = None, value: Any = None) -> Invocation:
        """Log an invocation; raises ValueError if `process` already has one open."""
        with self._lock:
            pkey = _hashable(process)
            if pkey in self._open:
                index = self._open[pkey].event.index
                raise ValueError(ERR_OPEN_OP.format(process=process, index=index))
            event = Event(len(self._events), INVOKE, process, f, key, value, self._clock())
            self._events.append(event)
            handle = Invocation(self, event)
            self._open[pkey] = handle
            return handle

    def complete(
        self, handle: Invocation, status: str, result: Any = None, error: str | None = None
    ) -> None:
        """Log the completion of `handle` (ok, fail or info); exactly once per invocation."""
        if status not in COMPLETIONS:
            raise ValueError(ERR_BAD_TYPE.format(type=status))
        with self._lock:
            start = handle.event
            pkey = _hashable(start.process)
            if self._open.get(pkey) is not handle:
                raise ValueError(ERR_NOT_OPEN.format(index=start.index))
            del self._open[pkey]
            event = Event(
                len(self._events), status, start.process, start.f, start.key, result,
                self._clock(), error,
            )
            self._events.append(event)
            handle.completion = event

    @contextmanager
    def op(
        self,
        process: Any,
        f: str,
        key: Any = None,
        value: Any = None,
        fail_on: tuple[type[BaseException], ...] = (),
    ) -> Iterator[Invocation]:
        """Invoke, yield the handle, and complete it if the body did not.

        An exception of a type in `fail_on` (errors the protocol guarantees are not applied)
        completes the operation as fail, any other exception (timeouts, lost connections,
        cancellation) as info; the exception propagates. A body that returns without
        completing leaves an info operation.
        """
        handle = self.invoke(process, f, key, value)
        try:
            yield handle
        except fail_on as exc:
            if handle.completion is None:
                handle.fail(repr(exc))
            raise
        except BaseException as exc:
            if handle.completion is None:
                handle.info(repr(exc))
            raise
        else:
            if handle.completion is None:
                handle.info("completion never recorded")

    def history(self) -> History:
        """A snapshot of everything recorded so far."""
        with self._lock:
            return History(self._events)


def _pair(start: Event, end: Event | None) -> Operation:
    return Operation(
        id=start.index,
        process=start.process,
        f=start.f,
        key=start.key,
        value=start.value,
        result=end.value if end is not None else None,
        status=end.type if end is not None else INFO,
        invoke_time=start.time,
        complete_time=end.time if end is not None else None,
        error=end.error if end is not None else None,
    )


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    return value


def _hashable(value: Any) -> Any:
    return _tuples(value) if isinstance(value, list) else value


def _json_default(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    raise TypeError(f"cannot write {type(value).__name__} to a history file")
