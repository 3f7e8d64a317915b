"""What a checker returns, and the readable table of the operations that show a violation.

Strategy: every checker returns one `CheckResult`; `valid` is True, False or "unknown" (the
checker ran out of time or steps, or the evidence is not enough either way): "unknown" is
never a pass. A failure carries the smallest window of operations that shows it, and
`report()` prints that window first, as a table with times in milliseconds relative to the
first event of the history, then the explanation; `write_report` puts the reports of a
drill's checkers in a file, failures first, with the whole history after them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tests.faults.history import INFO, History, Operation

Validity = bool | Literal["unknown"]
UNKNOWN: Literal["unknown"] = "unknown"

NS_PER_MS = 1_000_000
MAX_CELL_CHARS = 40
OPEN_END = "?"
TABLE_COLUMNS = ("op", "process", "f", "key", "value", "result", "status", "invoke ms", "end ms")


@dataclass(frozen=True)
class CheckResult:
    """The verdict of one checker.

    `valid` is True, False or "unknown"; `explanation` says why in a sentence or a few;
    `window` holds, for a failure, the few operations that show the violation, in
    invocation order; `details` holds figures for reports (counts, the longest
    linearizable prefix, the states reached). `origin` is the time the window's times are
    measured from (the history's first event).
    """

    checker: str
    valid: Validity
    explanation: str
    window: tuple[Operation, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)
    origin: int = 0

    @property
    def passed(self) -> bool:
        """True only for a definite pass (never for "unknown")."""
        return self.valid is True

    def report(self) -> str:
        """The window table first (when there is one), then the verdict and explanation."""
        head = f"{self.checker}: valid={self.valid}: {self.explanation}"
        if not self.window:
            return head
        return format_table(self.window, self.origin) + "\n" + head


def origin_of(ops: Iterable[Operation]) -> int:
    """The earliest invocation time among `ops` (0 when there are none)."""
    return min((op.invoke_time for op in ops), default=0)


def as_operations(source: History | Iterable[Operation]) -> list[Operation]:
    """Accept a History or operations; return the operations in invocation order."""
    if isinstance(source, History):
        return source.operations()
    return sorted(source, key=lambda op: (op.invoke_time, op.id))


def format_table(ops: Sequence[Operation], origin: int = 0) -> str:
    """The operations as an aligned text table, one row each, in invocation order."""
    rows = [TABLE_COLUMNS]
    for op in sorted(ops, key=lambda o: (o.invoke_time, o.id)):
        rows.append(_row(op, origin))
    widths = [max(len(row[col]) for row in rows) for col in range(len(TABLE_COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             .rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def write_report(path: str | Path, results: Iterable[CheckResult],
                 source: History | Iterable[Operation] | None = None) -> None:
    """Write each result's report (failures first), then the whole history as one table."""
    ordered = sorted(results, key=lambda result: {False: 0, UNKNOWN: 1}.get(result.valid, 2))
    parts = [result.report() for result in ordered]
    if source is not None:
        ops = as_operations(source)
        parts.append(f"whole history, {len(ops)} operations:\n" + format_table(ops, origin_of(ops)))
    Path(path).write_text("\n\n".join(parts) + "\n", encoding="utf-8")


def _row(op: Operation, origin: int) -> tuple[str, ...]:
    end = op.complete_time
    end_cell = OPEN_END if end is None else _ms(end, origin)
    if op.status == INFO and end is not None:
        end_cell += " (info)"
    result = op.error if op.status != "ok" and op.error else op.result
    return (
        str(op.id),
        _cell(op.process),
        op.f,
        _cell(op.key),
        _cell(op.value),
        _cell(result),
        op.status,
        _ms(op.invoke_time, origin),
        end_cell,
    )


def _ms(at: int, origin: int) -> str:
    return f"{(at - origin) / NS_PER_MS:.3f}"


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    if len(text) > MAX_CELL_CHARS:
        return text[: MAX_CELL_CHARS - 3] + "..."
    return text
