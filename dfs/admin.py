"""`dfs admin`: what an operator asks the master leader about the cluster (FS.REPORT),
formatted for a terminal, and the decommissioning of a chunk server. `report_lines` and
`drain_line` are pure: a report map in, lines out.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DRAINED", "drain_line", "drain_state", "human", "report_lines"]

DRAINED = "{} is drained: it may be stopped"
DRAINING = "{} is decommissioning: {} chunk(s) left"
ABSENT = "{} is marked decommissioning but does not report (not a live chunk server)"


def human(size: float) -> str:
    """Bytes as `12.3 MiB`."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def report_lines(report: dict[str, Any]) -> list[str]:
    """`dfs admin report`: safe mode, replication, chunks, under-replicated chunks, then a
    table of the live chunk servers (id, address, rack, chunks, used, free, last seen)."""
    servers = report["servers"]
    lines = [f"safe mode: {'on' if report['safe_mode'] else 'off'}",
             f"replication: {report['replication']}",
             f"chunks: {report['chunks']}",
             f"under-replicated chunks: {len(report['under_replicated'])}",
             f"chunk servers: {len(servers)} live, racks: {len({s[2] for s in servers})}",
             f"{'id':<13} {'address':<22} {'rack':<10} {'chunks':>7} {'used':>11} "
             f"{'free':>11} {'last seen':>9}"]
    for sid, address, rack, chunks, used, free, seen in servers:
        lines.append(f"{sid:<13} {address:<22} {rack:<10} {chunks:>7} {human(used):>11} "
                     f"{human(free):>11} {float(seen):>8.1f}s")
    lines += [drain_line(row) for row in report.get("decommissioning", ())]
    return lines


def drain_state(report: dict[str, Any], node: str) -> list[Any] | None:
    """The report's decommissioning row of `node` ([mark, server id, chunks left]), or None
    when it is not marked."""
    for row in report.get("decommissioning", ()):
        if node in (row[0], row[1]):
            return list(row)
    return None


def drain_line(row: list[Any]) -> str:
    """One decommissioning row as a sentence: chunks left, or that it may be stopped."""
    mark, server_id, left = row
    if not server_id:
        return ABSENT.format(mark)
    return DRAINED.format(mark) if int(left) == 0 else DRAINING.format(mark, left)
