"""The dfs drill's checks, pure functions of a history and of what the namespace holds.

Strategy: each client operation is one history Operation (tests/faults/history.py) whose
status is ok (acknowledged) or info (its reply was lost: a timeout, a dropped connection,
a master that lost its lead; the drill never counts an error as a definite refusal, so
nothing here relies on one). Files carry random bytes, so a file's sha256 names it.

- `check_namespace`: creates (key the path, value the digest) and renames (key the pair
  (src, dst), value the digest of the file renamed). Every file may be renamed only while
  each earlier operation on it was acknowledged, so the places a file may end in are: where
  its last acknowledged operation put it, or, if its last operation is of unknown outcome,
  either side of it (an unknown create: absent too). A file found twice (a half-applied
  rename left a copy), in a place it may not be, missing, or bytes that no create wrote,
  are violations.
- `check_register`: writes (the whole file replaced; value the digest) and reads of one
  path (a read's result is the digest it read). A read may return a write invoked before
  the read completed that is not superseded: no acknowledged write began after it
  completed and completed before the read began. Stale bytes (an older version) and
  bytes never written are violations.
- `check_no_failures`: every operation was acknowledged (a membership change must not
  fail a read or a write).
- `check_hashes`: every acknowledged file read back with its digest (a read per file per
  lost server, key (server, path), result the digest read).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tests.faults.history import INFO, OK, Operation
from tests.faults.report import CheckResult

CREATE_F = "create"
RENAME_F = "rename"
WRITE_F = "write"
READ_F = "read"
ABSENT = None  # a place meaning "not in the namespace"
TEMP_SUFFIX = "._COPYING_"
MAX_LISTED = 10


def _listed(items: Sequence[Any]) -> str:
    shown = ", ".join(repr(i) for i in items[:MAX_LISTED])
    return shown + (f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def allowed_places(ops: Sequence[Operation]) -> set[str | None]:
    """Where one file (its create then its renames, in order) may be found afterwards."""
    places: set[str | None] = set()
    for op in ops:
        target = op.key if op.f == CREATE_F else op.key[1]
        before = ABSENT if op.f == CREATE_F else op.key[0]
        if op.status == OK:
            places = {target}
        elif op.status == INFO:
            places = ({before} if op.f == RENAME_F else {ABSENT}) | {target}
    return places


def check_namespace(ops: Sequence[Operation], found: Mapping[str, str],
                    name: str = "namespace") -> CheckResult:
    """`found` maps each path read back (temporary `._COPYING_` files left out) to its
    digest; see the module header for what passes."""
    by_file: dict[str, list[Operation]] = {}
    for op in sorted(ops, key=lambda o: o.invoke_time):
        if op.f in (CREATE_F, RENAME_F):
            by_file.setdefault(op.value, []).append(op)
    where: dict[str, list[str]] = {}
    for path, digest in found.items():
        where.setdefault(digest, []).append(path)
    problems: list[str] = []
    window: list[Operation] = []
    for digest, file_ops in by_file.items():
        places = allowed_places(file_ops)
        seen = sorted(where.pop(digest, []))
        got: set[str | None] = set(seen) if seen else {ABSENT}
        if len(seen) > 1 or not got <= places:
            problems.append(f"{file_ops[0].key}: found at {seen or 'nowhere'}, may be at "
                            f"{sorted(places, key=str)}")
            window.extend(file_ops)
    problems += [f"{paths}: bytes no create wrote" for paths in where.values()]
    details = {"files": len(by_file), "found": len(found),
               "unknown": sum(op.status == INFO for op in ops)}
    if problems:
        return CheckResult(name, False, "; ".join(problems[:MAX_LISTED]),
                           tuple(window[:40]), details)
    return CheckResult(name, True, f"{len(by_file)} files each where its operations put "
                       f"it ({details['unknown']} of unknown outcome)", (), details)


def _precedes(a: Operation, b: Operation) -> bool:
    return a.complete_time is not None and a.complete_time < b.invoke_time


def check_register(ops: Sequence[Operation], name: str = "no-stale-read") -> CheckResult:
    """Reads of one file against its whole-file writes (see the module header)."""
    writes = [op for op in ops if op.f == WRITE_F and op.status in (OK, INFO)]
    reads = [op for op in ops if op.f == READ_F and op.status == OK]
    bad: list[Operation] = []
    for read in reads:
        acked = [w for w in writes if w.status == OK and _precedes(w, read)]
        allowed = {w.value for w in writes
                   if read.complete_time is None or w.invoke_time < read.complete_time
                   if not any(_precedes(w, later) for later in acked)}
        if read.result not in allowed:
            bad.append(read)
    details = {"reads": len(reads), "writes": len(writes)}
    if bad:
        return CheckResult(name, False, f"{len(bad)} reads returned bytes that were stale or "
                           "never written", tuple(bad[:MAX_LISTED]), details)
    return CheckResult(name, True, f"{len(reads)} reads each returned a current write",
                       (), details)


def check_no_failures(ops: Sequence[Operation], name: str) -> CheckResult:
    """Every operation was acknowledged."""
    failed = [op for op in ops if op.status != OK]
    if failed:
        return CheckResult(name, False, f"{len(failed)} of {len(ops)} operations failed",
                           tuple(failed[:MAX_LISTED]), {"failed": len(failed)})
    return CheckResult(name, True, f"all {len(ops)} operations succeeded", (),
                       {"operations": len(ops)})


def check_hashes(ops: Sequence[Operation], want: Mapping[str, str],
                 name: str = "hash-after-loss") -> CheckResult:
    """Each read (key (server, path), value the digest read) returned `want[path]`."""
    wrong = [op for op in ops if op.status != OK or op.result != want[op.key[1]]]
    if wrong:
        return CheckResult(name, False, f"{len(wrong)} reads failed or returned wrong bytes: "
                           f"{_listed([op.key for op in wrong])}", tuple(wrong[:MAX_LISTED]))
    servers = sorted({op.key[0] for op in ops})
    return CheckResult(name, True, f"{len(ops)} reads right through the loss of each of "
                       f"{_listed(servers)}", (), {"reads": len(ops)})
